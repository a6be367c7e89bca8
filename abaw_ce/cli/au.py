"""Command line of stage 2, AU fine-tuning (``finetune/au.py``)."""
from __future__ import annotations

import logging

from abaw_ce.cli.common import guarded, stage_config, stage_parser
from abaw_ce.finetune import train_au


def main_au(argv: list[str] | None = None) -> int:
    args = stage_parser("finetune/au.py", "au").parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return guarded(lambda: train_au(stage_config("au", args), resume=args.resume, overrides=args.overrides))

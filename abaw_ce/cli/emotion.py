"""Command line of stage 3, the 5-fold basic-emotion runs (``finetune/emotion.py``), or the Table-2 ablation."""
from __future__ import annotations

import logging
from pathlib import Path

from abaw_ce.cli.arguments import comma_ints
from abaw_ce.cli.common import guarded, stage_config, stage_parser
from abaw_ce.experiments.emotion_ablation import run_ablation
from abaw_ce.finetune import train_emotion


def main_emotion(argv: list[str] | None = None) -> int:
    parser = stage_parser("finetune/emotion.py", "emotion")
    parser.add_argument("--folds", type=comma_ints, help="comma-separated folds to train (default: all)")
    parser.add_argument("--ablation", metavar="OUT_DIR", type=Path,
                        help="run the Table-2 ablation (6 settings, the last with train.curriculum) into OUT_DIR "
                             "and write ablation.md")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.ablation:
        return guarded(lambda: run_ablation(stage_config("emotion", args), args.ablation, folds=args.folds))
    return guarded(lambda: train_emotion(stage_config("emotion", args), resume=args.resume,
                                          overrides=args.overrides, folds=args.folds))

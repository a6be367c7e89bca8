"""Command line of the C-EXPR-NET track (``finetune/cexprnet.py``): training, or the Table-4 ablation."""
from __future__ import annotations

import logging
from pathlib import Path

from abaw_ce.cexprnet.train import train_cexprnet
from abaw_ce.cli.common import guarded, scoring_video_options, stage_config, stage_parser
from abaw_ce.experiments.cexprnet_ablation import run_ablation


def main_cexprnet(argv: list[str] | None = None) -> int:
    parser = stage_parser("finetune/cexprnet.py", "cexprnet")
    group = parser.add_argument_group("Table-4 ablation (--ablation OUT_DIR --videos DIR --ground-truth FILE)")
    group.add_argument("--ablation", metavar="OUT_DIR", type=Path,
                       help="train the 7 ablation rows into OUT_DIR (data.datasets must hold compound, basic, AU "
                            "and video-frame rows), score them and late fusion on --videos, write ablation.md")
    scoring_video_options(group)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.ablation:
        if args.videos is None or args.ground_truth is None:
            parser.error("--ablation needs --videos and --ground-truth")
        def ablation() -> None:
            md = run_ablation(stage_config("cexprnet", args), args.ablation, args.videos, args.ground_truth,
                              template=args.template, detector=args.detector, crop_size=args.crop_size)
            print(md.read_text(encoding="utf-8"))

        return guarded(ablation)
    return guarded(lambda: train_cexprnet(stage_config("cexprnet", args), resume=args.resume,
                                          overrides=args.overrides))

"""Command line of the multi-task track (``finetune/multitask.py``): one method, or the comparison of all."""
from __future__ import annotations

import logging
from pathlib import Path
from omegaconf import OmegaConf

from abaw_ce.cli.common import guarded, scoring_video_options, stage_parser, stage_config
from abaw_ce.experiments.multitask_comparison import run_comparison
from abaw_ce.multitask.train import train_multitask
from abaw_ce.train import runs


def main_multitask(argv: list[str] | None = None) -> int:
    parser = stage_parser("finetune/multitask.py", "multitask")
    parser.add_argument("--method", help="the method to train (model.method): sjmt | fbn | mml")
    group = parser.add_argument_group("comparison of every method (--compare OUT_DIR --videos DIR --ground-truth FILE)")
    group.add_argument("--compare", metavar="OUT_DIR", type=Path,
                       help="train SJMT, FaceBehaviorNet, MML, C-EXPR-NET and the basic-emotion ViT (fold 1) on "
                            "data.datasets into OUT_DIR, score them on --videos, write comparison.md")
    scoring_video_options(group)
    group.add_argument("--epochs", type=int, help="epochs of every method (default: each stage's own)")
    args = parser.parse_intermixed_args(argv)
    if args.method:
        args.overrides = [*args.overrides, f"model.method={args.method}"]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.compare:
        if args.videos is None or args.ground_truth is None:
            parser.error("--compare needs --videos and --ground-truth")
        def compare() -> None:
            data = [o for o in args.overrides if o.startswith("data.datasets=")]
            files = ([runs.packaged_config("multitask_demo")] if args.demo else []) + (
                [args.config] if args.config else [])
            config = runs.load_config("multitask", files, data)
            md = run_comparison(OmegaConf.to_container(config.data.datasets, resolve=True), args.compare,
                                args.videos, args.ground_truth, template=args.template, detector=args.detector,
                                crop_size=args.crop_size, demo=args.demo, epochs=args.epochs,
                                overrides=[o for o in args.overrides if o not in data])
            print(md.read_text(encoding="utf-8"))

        return guarded(compare)
    return guarded(lambda: train_multitask(stage_config("multitask", args), resume=args.resume,
                                           overrides=args.overrides))

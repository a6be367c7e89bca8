"""Command lines of stages 2 and 3, of the C-EXPR-NET track and of the multi-task track (``finetune/au.py``,
``finetune/emotion.py``, ``finetune/cexprnet.py``, ``finetune/multitask.py``)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from omegaconf import OmegaConf

from abaw_ce.errors import run_command
from abaw_ce.train import runs


def _parser(prog: str, stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Settings come from abaw_ce/configs/{stage}.yaml, then --config, then "
                               f"key=value overrides (e.g. model.encoder=runs/mae-.../export).")
    parser.add_argument("--config", help="YAML file layered over the defaults")
    parser.add_argument("--demo", action="store_true", help=f"small CPU settings (configs/{stage}_demo.yaml)")
    parser.add_argument("--resume", metavar="RUN", help="continue a run folder (unfinished folds/epochs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output.dir run")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def _config(stage: str, args: argparse.Namespace):
    files = ([runs.packaged_config(f"{stage}_demo")] if args.demo else []) + ([args.config] if args.config else [])
    overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else [])
    return runs.load_config(stage, files, overrides)


def guarded(call, hint=None) -> int:
    """Run a stage through ``run_command`` (user errors: one line, exit 2; a loss that stopped being finite:
    exit 3; any other exception shows its traceback), then leave the process group."""
    from abaw_ce.train.loop import NonFiniteLoss

    def stage() -> None:  # a stage returns its run folder, not an exit status
        call()

    try:
        return run_command(stage, hint, other_failures={NonFiniteLoss: 3})
    finally:
        runs.end_process_group()


def main_au(argv: list[str] | None = None) -> int:
    args = _parser("finetune/au.py", "au").parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from abaw_ce.train.finetune import train_au

    return guarded(lambda: train_au(_config("au", args), resume=args.resume, overrides=args.overrides))


def _scoring_videos(group: argparse._ArgumentGroup) -> None:
    """The labelled videos that an ablation or a comparison scores its runs on."""
    group.add_argument("--videos", type=Path, help="labelled test videos the runs are scored on")
    group.add_argument("--ground-truth", type=Path, help="their per-frame labels (the challenge file format)")
    group.add_argument("--template", type=Path, help="the frames to label (default: every decoded frame)")
    group.add_argument("--detector", default="auto", choices=["auto", "insightface", "opencv", "none"])
    group.add_argument("--crop-size", type=int, default=224)


def main_cexprnet(argv: list[str] | None = None) -> int:
    parser = _parser("finetune/cexprnet.py", "cexprnet")
    group = parser.add_argument_group("Table-4 ablation (--ablation OUT_DIR --videos DIR --ground-truth FILE)")
    group.add_argument("--ablation", metavar="OUT_DIR", type=Path,
                       help="train the 7 ablation rows into OUT_DIR (data.datasets must hold compound, basic, AU "
                            "and video-frame rows), score them and late fusion on --videos, write ablation.md")
    _scoring_videos(group)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.ablation:
        if args.videos is None or args.ground_truth is None:
            parser.error("--ablation needs --videos and --ground-truth")
        from abaw_ce.cexprnet.ablation import run_ablation

        def ablation() -> None:
            md = run_ablation(_config("cexprnet", args), args.ablation, args.videos, args.ground_truth,
                              template=args.template, detector=args.detector, crop_size=args.crop_size)
            print(md.read_text(encoding="utf-8"))

        return guarded(ablation)
    from abaw_ce.cexprnet.train import train_cexprnet

    return guarded(lambda: train_cexprnet(_config("cexprnet", args), resume=args.resume,
                                          overrides=args.overrides))


def main_multitask(argv: list[str] | None = None) -> int:
    parser = _parser("finetune/multitask.py", "multitask")
    parser.add_argument("--method", help="the method to train (model.method): sjmt | fbn | mml")
    group = parser.add_argument_group("comparison of every method (--compare OUT_DIR --videos DIR --ground-truth FILE)")
    group.add_argument("--compare", metavar="OUT_DIR", type=Path,
                       help="train SJMT, FaceBehaviorNet, MML, C-EXPR-NET and the basic-emotion ViT (fold 1) on "
                            "data.datasets into OUT_DIR, score them on --videos, write comparison.md")
    _scoring_videos(group)
    group.add_argument("--epochs", type=int, help="epochs of every method (default: each stage's own)")
    args = parser.parse_intermixed_args(argv)
    if args.method:
        args.overrides = [*args.overrides, f"model.method={args.method}"]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.compare:
        if args.videos is None or args.ground_truth is None:
            parser.error("--compare needs --videos and --ground-truth")
        from abaw_ce.multitask.compare import run_comparison

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
    from abaw_ce.multitask.train import train_multitask

    return guarded(lambda: train_multitask(_config("multitask", args), resume=args.resume,
                                           overrides=args.overrides))


def _fold_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--folds takes comma-separated fold numbers like 0,2; got {text!r}")


def main_emotion(argv: list[str] | None = None) -> int:
    parser = _parser("finetune/emotion.py", "emotion")
    parser.add_argument("--folds", type=_fold_list, help="comma-separated folds to train (default: all)")
    parser.add_argument("--ablation", metavar="OUT_DIR", type=Path,
                        help="run the Table-2 ablation (5 settings) into OUT_DIR and write ablation.md")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from abaw_ce.train.finetune import run_ablation, train_emotion

    if args.ablation:
        return guarded(lambda: run_ablation(_config("emotion", args), args.ablation, folds=args.folds))
    return guarded(lambda: train_emotion(_config("emotion", args), resume=args.resume,
                                          overrides=args.overrides, folds=args.folds))

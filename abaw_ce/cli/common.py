"""What every training command shares: the parser of a stage's settings (packaged defaults, --demo, --config,
key=value), and ``guarded``, which maps a stage's failures to exit statuses."""
from __future__ import annotations

import argparse
from pathlib import Path

from abaw_ce.errors import run_command
from abaw_ce.train import runs
from abaw_ce.train.loop import NonFiniteLoss


def stage_parser(prog: str, stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Settings come from abaw_ce/configs/{stage}.yaml, then --config, then "
                               f"key=value overrides (e.g. model.encoder=runs/mae-.../export).")
    parser.add_argument("--config", help="YAML file layered over the defaults")
    parser.add_argument("--demo", action="store_true", help=f"small CPU settings (configs/{stage}_demo.yaml)")
    parser.add_argument("--resume", metavar="RUN", help="continue a run folder (unfinished folds/epochs)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output.dir run")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def stage_config(stage: str, args: argparse.Namespace):
    files = ([runs.packaged_config(f"{stage}_demo")] if args.demo else []) + ([args.config] if args.config else [])
    overrides = list(args.overrides) + (["output.overwrite=true"] if args.overwrite else [])
    return runs.load_config(stage, files, overrides)


def guarded(call, hint=None) -> int:
    """Run a stage through ``run_command`` (user errors: one line, exit 2; a loss that stopped being finite:
    exit 3; any other exception shows its traceback), then leave the process group."""
    def stage() -> None:  # a stage returns its run folder, not an exit status
        call()

    try:
        return run_command(stage, hint, other_failures={NonFiniteLoss: 3})
    finally:
        runs.end_process_group()


def scoring_video_options(group: argparse._ArgumentGroup) -> None:
    """The labelled videos that an ablation or a comparison scores its runs on."""
    group.add_argument("--videos", type=Path, help="labelled test videos the runs are scored on")
    group.add_argument("--ground-truth", type=Path, help="their per-frame labels (the challenge file format)")
    group.add_argument("--template", type=Path, help="the frames to label (default: every decoded frame)")
    group.add_argument("--detector", default="auto", choices=["auto", "insightface", "opencv", "none"])
    group.add_argument("--crop-size", type=int, default=224)

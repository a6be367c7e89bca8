"""Command line of ``submit/tune_fusion.py``: choose fusion and smoothing on labelled videos."""
from __future__ import annotations

import argparse
from pathlib import Path

from abaw_ce.errors import run_command
from abaw_ce.experiments import tune_fusion as tune_fusion_module
from abaw_ce.experiments.tune_fusion import DEFAULT_WINDOWS, tune_fusion


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="submit/tune_fusion.py", description=tune_fusion_module.__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, type=Path,
                        help="labelled videos in C-EXPR-DB layout (videos/ + annotation/)")
    parser.add_argument("--models", nargs="+", required=True, type=Path, help="runs or exports of any track (emotion, C-EXPR-NET visual or audio)")
    parser.add_argument("--out", required=True, type=Path, help="folder for grid.csv/png, choice.json, weights")
    parser.add_argument("--detector", default="auto", choices=["auto", "insightface", "opencv", "none"])
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--windows", type=int, nargs="+", default=list(DEFAULT_WINDOWS))
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    def tune() -> None:
        result = tune_fusion(args.videos, args.models, args.out, detector=args.detector, crop_size=args.crop_size,
                             windows=args.windows, flip=args.flip, overwrite=args.overwrite)
        grid, choice = result["grid"], result["choice"]
        print(grid.sort_values("macro_f1", ascending=False, kind="stable").head(10).to_string(index=False))
        print(f"{choice['labelled_frames']} labelled frames of {len(choice['videos'])} videos; best macro F1 "
              f"{choice['macro_f1']:.4f} (sum + gaussian 9: {choice['default_macro_f1']:.4f})")
        if len(args.models) > 1:
            print(f"run weights (fitted on these videos): {choice['run_weights']}")
        print(f"make_submission flags: {' '.join(choice['make_submission_flags'])}")
        print(f"wrote {args.out / 'grid.csv'}, {args.out / 'grid.png'}, {args.out / 'choice.json'}")

    return run_command(tune)

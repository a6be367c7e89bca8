"""Command line of ``submit/make_submission.py``: write the challenge file for a folder of test videos.

Under ``accelerate launch`` or ``python -m torch.distributed.run --nproc_per_node N`` the videos' faces and the
inference batches are split over the processes; the main process writes the file."""
from __future__ import annotations

import argparse
from pathlib import Path

from abaw_ce import fusion
from abaw_ce.cli.faces import face_search_options
from abaw_ce.errors import run_command
from abaw_ce.submission.pipeline import TRACKS, make_submission, newest_finished_run, read_fusion_weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="submit/make_submission.py",
                                     description="Write the challenge file for a folder of test videos.")
    parser.add_argument("--videos", required=True, type=Path, help="folder of test videos")
    parser.add_argument("--models", nargs="+", type=Path, help="emotion runs or exports (default: the newest "
                                                               "finished run under runs/)")
    parser.add_argument("--out", type=Path, default=Path("submission.txt"))
    parser.add_argument("--template", type=Path, help="the organisers' example file: its rows are the output's")
    parser.add_argument("--work-dir", type=Path, help="faces and per-video probabilities (default: beside --out)")
    parser.add_argument("--detector", default="auto", choices=["auto", "insightface", "opencv", "none"])
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--fusion", default="sum", choices=[m for m in fusion.FUSION_METHODS if m != "weighted"])
    parser.add_argument("--fusion-weights", type=Path, help="JSON of a fitted weighted fusion (weights, biases)")
    parser.add_argument("--smoothing", default="gaussian", choices=list(fusion.SMOOTHING_METHODS))
    parser.add_argument("--window", type=int, default=9, help="smoothing window in frames")
    parser.add_argument("--flip", action="store_true", help="average with mirrored crops (test-time augmentation)")
    parser.add_argument("--run-weights", type=float, nargs="+",
                        help="one weight per --models run (default equal): each run's models are averaged "
                             "first, then the runs with these weights (e.g. an emotion run and a C-EXPR-NET run)")
    parser.add_argument("--track", default="auto", choices=list(TRACKS),
                        help="require every --models run to be of this track (default: any; each export says "
                             "which it is, and tracks are ensembled)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="go on when a run fails its checks (a fold missing or unfinished): its finished folds "
                             "are used and the summary names the rest")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="inference precision (auto: bf16 on a GPU that supports it, else fp32)")
    face_search_options(parser, "faces step")
    parser.add_argument("--workers", type=int, help="crop loader processes (default: up to 4 on a GPU, 0 on a CPU)")
    parser.add_argument("--compile", action="store_true", help="run the models through torch.compile (pays off on "
                                                               "long jobs: the first batches compile)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    return run_command(lambda: _submit(args))


def _submit(args: argparse.Namespace) -> None:
    """make_submission for the parsed command line, and what it did, printed."""
    runs = args.models or [newest_finished_run()]
    fusion_weights = None
    method = args.fusion
    if args.fusion_weights is not None:
        fusion_weights = read_fusion_weights(args.fusion_weights)
        method = "weighted"
    summary = make_submission(args.videos, runs, args.out, template=args.template, work_dir=args.work_dir,
                              detector=args.detector, crop_size=args.crop_size, method=method,
                              fusion_weights=fusion_weights, smoothing=args.smoothing, window=args.window,
                              flip=args.flip, batch_size=args.batch_size, overwrite=args.overwrite,
                              run_weights=args.run_weights, track=args.track,
                              allow_partial=args.allow_partial, precision=args.precision, distributed=True,
                              redetect_every=args.redetect_every, workers=args.workers,
                              compile_models=args.compile, search_side=args.search_side)
    if summary is None:  # another process of a launch: the main one reports
        return
    for report in summary["per_video"]:
        for note in report["notes"]:
            print(f"{report['video']}: {note}")
    for line in summary["left_out"]:
        print(line)
    for problem in summary["run_problems"]:
        print(f"--allow-partial: {problem}")
    print(f"models: {', '.join(summary['models'])}")
    print(f"wrote {summary['frames']} frames of {summary['videos']} videos ({summary['faces_found']} with a face) "
          f"to {summary['submission']}")

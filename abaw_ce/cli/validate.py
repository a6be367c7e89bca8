"""Command line of ``submit/validate.py`` (also ``abaw-ce validate``): check runs before they go into a
submission, and a challenge file before upload."""
from __future__ import annotations

import argparse
from pathlib import Path

from abaw_ce import challenge_file
from abaw_ce.errors import InputError, run_command
from abaw_ce.submission.run_checks import check_runs
from abaw_ce.video import VIDEO_SUFFIXES, video_info


def _frame_counts(video_dir: Path) -> dict[str, int]:
    videos = sorted(p for p in video_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise InputError(video_dir, f"no videos ({', '.join(VIDEO_SUFFIXES)}) in this folder")
    return {p.stem: video_info(p).frames for p in videos}


def validate_main(argv: list[str] | None = None) -> int:
    """Validate fold runs (every fold finished, one label order and preprocessing, no fold far below the
    others) and/or a challenge file (format, coverage), scoring it against ground truth when given."""
    parser = argparse.ArgumentParser(prog="validate", description=validate_main.__doc__)
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN",
                        help="runs or exports to check (emotion fold runs, C-EXPR-NET or multi-task runs)")
    parser.add_argument("--f1-band", type=float, default=0.15,
                        help="a fold whose validation F1 is this far below its run's median fails")
    parser.add_argument("--submission", type=Path, help="the challenge file to check")
    parser.add_argument("--template", type=Path, help="the organisers' frame list: rows must equal it")
    parser.add_argument("--videos", type=Path, help="folder of the test videos: rows must cover their frames")
    parser.add_argument("--frame-tolerance", type=int, default=0,
                        help="with --videos, a per-video frame-count difference up to this is a warning")
    parser.add_argument("--ground-truth", type=Path, help="a challenge-format file of true labels to score against")
    parser.add_argument("--confusion-png", type=Path, help="where to draw the confusion matrix (with --ground-truth)")
    args = parser.parse_args(argv)
    if not args.runs and args.submission is None:
        parser.error("give run folders to check, --submission FILE, or both")
    return run_command(lambda: _validate(args))


def _validate(args: argparse.Namespace) -> int:
    """0 when every check passes, 1 when one fails (the reports say which)."""
    runs_ok = True
    if args.runs:
        checked = check_runs(args.runs, f1_band=args.f1_band)
        print(checked.format())
        runs_ok = checked.ok
    if args.submission is None:
        return 0 if runs_ok else 1
    counts = _frame_counts(args.videos) if args.videos else None
    report = challenge_file.validate_submission(args.submission, template=args.template, frame_counts=counts,
                                            frame_tolerance=args.frame_tolerance)
    print(report.format())
    if args.ground_truth and report.ok:
        scored = challenge_file.score(challenge_file.read_submission(args.submission),
                                  challenge_file.read_submission(args.ground_truth))
        print(scored.format())
        png = args.confusion_png or args.submission.with_name(args.submission.stem + "_confusion.png")
        print(f"confusion matrix: {challenge_file.plot_confusion(scored.confusion, png)}")
    return 0 if report.ok and runs_ok else 1

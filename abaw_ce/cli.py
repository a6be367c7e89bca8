"""The `abaw-ce` command: demo, synth, faces, validate, labels (more subcommands join as stages land)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from abaw_ce.errors import InputError, run_command


def _frame_counts(video_dir: Path) -> dict[str, int]:
    from abaw_ce.video import VIDEO_SUFFIXES, video_info

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
    from abaw_ce import submission
    from abaw_ce.run_checks import check_runs

    runs_ok = True
    if args.runs:
        checked = check_runs(args.runs, f1_band=args.f1_band)
        print(checked.format())
        runs_ok = checked.ok
    if args.submission is None:
        return 0 if runs_ok else 1
    counts = _frame_counts(args.videos) if args.videos else None
    report = submission.validate_submission(args.submission, template=args.template, frame_counts=counts,
                                            frame_tolerance=args.frame_tolerance)
    print(report.format())
    if args.ground_truth and report.ok:
        scored = submission.score(submission.read_submission(args.submission),
                                  submission.read_submission(args.ground_truth))
        print(scored.format())
        png = args.confusion_png or args.submission.with_name(args.submission.stem + "_confusion.png")
        print(f"confusion matrix: {submission.plot_confusion(scored.confusion, png)}")
    return 0 if report.ok and runs_ok else 1


def _demo(args: argparse.Namespace) -> int:
    from abaw_ce.demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite, quick=args.quick)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from abaw_ce.synth.world import generate_world

    info = generate_world(args.out, seed=args.seed, scale=args.scale, overwrite=args.overwrite)
    print(f"synthetic world ({info['scale']}, seed {info['seed']}) written to {args.out} in {info['seconds']} s")
    for name, count in info["counts"].items():
        print(f"  {name:<16} {count}")
    return 0


def _labels(args: argparse.Namespace) -> int:
    from abaw_ce import labels

    info = {
        "basic_emotions": labels.BASIC_EMOTIONS,
        "challenge_compounds": dict(zip(labels.CHALLENGE_COMPOUNDS, labels.CHALLENGE_PAIRS)),
        "cexpr_classes": labels.CEXPR_CLASSES,
        "affwild2_aus": labels.AFFWILD2_AUS,
        "cexpr_aus": labels.CEXPR_AUS,
        "emotion_au_prior": {e: {f"AU{a}": w for a, w in p.items()} for e, p in labels.EMOTION_AU_PRIOR.items()},
    }
    print(json.dumps(info, indent=2))
    return 0


def _import_encoder(args: argparse.Namespace) -> int:
    from abaw_ce.models.export import import_checkpoint, save_encoder

    state, arch, meta = import_checkpoint(args.checkpoint, num_heads=args.num_heads)
    out = save_encoder(args.out, state, arch, meta["mean"], meta["std"], source=meta["source"],
                       overwrite=args.overwrite)
    print(f"imported ViT (width {arch.embed_dim}, depth {arch.depth}, heads {arch.num_heads}, patch "
          f"{arch.patch_size}, {arch.img_size}px) from {args.checkpoint} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abaw-ce", description="ABAW compound expression recognition kit")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the pipeline on embedded data (CPU, no downloads)")
    demo.add_argument("--out", type=Path, default=Path("demo_out"))
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true",
                      help="replace --out even when it holds something other than an earlier demo")
    demo.add_argument("--quick", action="store_true", help="a few training epochs only (a smoke run)")
    demo.set_defaults(func=_demo)
    synth = sub.add_parser("synth", help="write the synthetic world of rendered faces in the real formats")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--scale", choices=["tiny", "small", "medium"], default="tiny")
    synth.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    synth.set_defaults(func=_synth)
    imp = sub.add_parser("import-encoder", help="convert an MAE / MAE-Face / FMAE .pth checkpoint into an "
                                                "encoder export the next stages read")
    imp.add_argument("checkpoint", type=Path)
    imp.add_argument("--out", type=Path, required=True)
    imp.add_argument("--num-heads", type=int, default=None, help="only for non-standard widths")
    imp.add_argument("--overwrite", action="store_true")
    imp.set_defaults(func=_import_encoder)
    sub.add_parser("labels", help="print the label orders and the emotion→AU prior").set_defaults(func=_labels)
    sub.add_parser("validate", help="validate a challenge file (same as submit/validate.py)", add_help=False)
    sub.add_parser("faces", help="detect, align and pack faces of an image or video folder", add_help=False)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # not a line per checkpoint written
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["validate"]:
        return validate_main(argv[1:])
    if argv[:1] == ["faces"]:
        from abaw_ce.faces.cli import main as faces_main
        return faces_main(argv[1:], prog="abaw-ce faces")
    args = parser.parse_args(argv)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""The `abaw-ce` command: demo, synth, recipe, faces, validate, analyze, labels, import-encoder.

Each subcommand imports its library modules when chosen: they pull in torch, and `abaw-ce labels` or `--help`
should not wait for it."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from abaw_ce.cli.arguments import comma_ints
from abaw_ce.errors import run_command


def _demo(args: argparse.Namespace) -> int:
    from abaw_ce.experiments.demo import run_demo

    run_demo(args.out, seed=args.seed, overwrite=args.overwrite, quick=args.quick)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from abaw_ce.synth.world import generate_world

    info = generate_world(args.out, seed=args.seed, scale=args.scale, overwrite=args.overwrite)
    print(f"synthetic world ({info['scale']}, seed {info['seed']}) written to {args.out} in {info['seconds']} s")
    for name, count in info["counts"].items():
        print(f"  {name:<16} {count}")
    return 0


def _recipe(args: argparse.Namespace) -> int:
    from abaw_ce.experiments.recipe_comparison import run_recipe_seeds

    run_recipe_seeds(args.out, seeds=args.seeds, scale=args.scale, folds=args.folds, cnn=args.cnn,
                     epochs=args.epochs, shares=args.shares, only=args.only)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from abaw_ce.submission.analysis import analyze_submission

    result = analyze_submission(args.submission, args.ground_truth, args.out, faces=args.faces, title=args.title,
                                overwrite=args.overwrite)
    print(f"report: {args.out / 'report.md'}")
    print(f"macro F1: {result['macro_f1']:.4f} over {result['frames']} frames of {result['videos']} videos")
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
    recipe = sub.add_parser("recipe", help="compare the fold-stage recipes (ViT / CNN, curriculum, distillation) "
                                           "on a synthetic world; a stopped comparison continues")
    recipe.add_argument("--out", type=Path, required=True)
    recipe.add_argument("--seeds", type=comma_ints, default=[0],
                        help="world seeds, e.g. 0,1,2 (each also the training and fold seed); one folder each")
    recipe.add_argument("--scale", choices=["tiny", "small", "medium"], default="small")
    recipe.add_argument("--folds", type=comma_ints, default=[0], help="folds trained per recipe (default 0)")
    recipe.add_argument("--cnn", default="timm:resnet18d", help="the CNN backbone (timm:<name>)")
    recipe.add_argument("--epochs", type=comma_ints, default=[5, 5, 3, 3],
                        help="curriculum stage epochs; runs without it train their sum")
    recipe.add_argument("--shares", type=lambda t: [float(x) for x in t.split(",")], default=[0.0, 0.2, 0.4, 1.0],
                        help="compound share of each curriculum stage")
    recipe.add_argument("--only", nargs="+", metavar="RECIPE", help="run these recipes only")
    recipe.set_defaults(func=_recipe)
    imp = sub.add_parser("import-encoder", help="convert an MAE / MAE-Face / FMAE .pth checkpoint into an "
                                                "encoder export the next stages read")
    imp.add_argument("checkpoint", type=Path)
    imp.add_argument("--out", type=Path, required=True)
    imp.add_argument("--num-heads", type=int, default=None, help="only for non-standard widths")
    imp.add_argument("--overwrite", action="store_true")
    imp.set_defaults(func=_import_encoder)
    analyze = sub.add_parser("analyze", help="error analysis of a challenge file against the ground truth: "
                                             "per-class figures, confusions, F1 by segment position and by face "
                                             "found, per-video timelines, in a report")
    analyze.add_argument("submission", type=Path, help="the challenge file to analyse")
    analyze.add_argument("--ground-truth", type=Path, required=True, help="a challenge file of the true classes")
    analyze.add_argument("--faces", type=Path, default=None,
                         help="the faces step's frames.csv (video, frame, face_found): F1 with and without a "
                              "face, shaded timelines")
    analyze.add_argument("--out", type=Path, required=True)
    analyze.add_argument("--title", default="", help="the report's title")
    analyze.add_argument("--overwrite", action="store_true",
                         help="replace --out even when it holds something other than an earlier analysis")
    analyze.set_defaults(func=_analyze)
    sub.add_parser("labels", help="print the label orders and the emotion→AU prior").set_defaults(func=_labels)
    sub.add_parser("validate", help="validate a challenge file (same as submit/validate.py)", add_help=False)
    sub.add_parser("faces", help="detect, align and pack faces of an image or video folder", add_help=False)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # not a line per checkpoint written
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["validate"]:
        from abaw_ce.cli.validate import validate_main
        return validate_main(argv[1:])
    if argv[:1] == ["faces"]:
        from abaw_ce.cli.faces import main as faces_main
        return faces_main(argv[1:], prog="abaw-ce faces")
    args = parser.parse_args(argv)
    return run_command(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())

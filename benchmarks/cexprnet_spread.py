"""How much of the demo's visual score is luck: its C-EXPR-NET run trained again with other training seeds.

Not a speed benchmark. On the world, labelled split and cached frame crops of one demo folder, the demo's
C-EXPR-NET configuration (``abaw_ce.experiments.demo.cexprnet_config``) is trained once per training seed, and
each run is scored alone on the world's test videos with a fixed smoothing window. The last line gives the mean,
the standard deviation and the range over the seeds. Compare two configurations by their spreads, not by one
run each: a change smaller than the spread says nothing.

    abaw-ce demo --out demo_out                   # once: the world, the labelled split, the frame crops
    python benchmarks/cexprnet_spread.py --demo-out demo_out --train-seeds 0 100 200
    python benchmarks/cexprnet_spread.py --demo-out demo_out --train-seeds 0 100 200 \\
        --set 'train.curriculum.epochs=[15, 15, 5, 10]' --tag curriculum_15_15_5_10

The demo's configuration includes its precision: bf16 autocast where the CPU computes in bf16, else fp32
(``--set train.precision=fp32`` compares the two).

A finished run of a seed (``<demo-out>/spread/<tag>/seed_<s>``) is scored again, not retrained.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_ce import challenge_file  # noqa: E402
from abaw_ce.cexprnet.train import train_cexprnet  # noqa: E402
from abaw_ce.experiments.demo import cexprnet_config  # noqa: E402
from abaw_ce.submission.pipeline import make_submission  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-out", type=Path, required=True, help="a folder written by `abaw-ce demo`")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0, 100, 200])
    parser.add_argument("--window", type=int, default=5, help="Gaussian smoothing window (frames) when scoring")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override on top of the demo's (repeatable)")
    parser.add_argument("--tag", default="demo_config", help="name of this configuration's folder of runs")
    args = parser.parse_args(argv)
    demo = args.demo_out
    world = demo / "world"
    for needed in (world / "world.json", demo / "labelled" / "train", demo / "runs" / "frame_crops"):
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: --demo-out must be a finished `abaw-ce demo` folder")
    seed = int(json.loads((world / "world.json").read_text())["seed"])
    overrides = list(args.sets)
    runs_dir = demo / "spread" / args.tag
    gt = world / "test_ground_truth"
    truth = challenge_file.read_submission(gt / "ground_truth.txt")
    print(f"world seed {seed}, configuration {args.tag} {overrides or '(the demo)'}, window {args.window}")
    scores = {}
    for train_seed in args.train_seeds:
        started = time.perf_counter()
        run = train_cexprnet(cexprnet_config(demo, runs_dir / f"seed_{train_seed}", seed, train_seed,
                                             overrides=overrides))
        seconds = time.perf_counter() - started
        path = runs_dir / f"seed_{train_seed}.txt"
        make_submission(world / "test", [run], path, template=gt / "template.txt", work_dir=demo / "submission_work",
                        detector="opencv", crop_size=112, progress=False, overwrite=True, window=args.window)
        scores[train_seed] = challenge_file.score(challenge_file.read_submission(path), truth).macro_f1
        print(f"training seed {train_seed}: test compound macro F1 {scores[train_seed]:.4f} "
              f"({seconds:.0f} s of training)", flush=True)
    values = list(scores.values())
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    summary = {"world_seed": seed, "tag": args.tag, "overrides": overrides, "window": args.window,
               "scores": scores, "mean": statistics.mean(values), "sd": spread}
    (runs_dir / "spread.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"C-EXPR-NET test F1 over {len(values)} training seeds: mean {statistics.mean(values):.4f}, "
          f"sd {spread:.4f}, range {min(values):.4f}-{max(values):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

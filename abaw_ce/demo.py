"""`abaw-ce demo`: the pipeline on embedded data, on a CPU, with no downloads.

Stages join as they land. Today: example sets in every real format are written, read back by the
adapters, split into the seed paper's 5 folds, and a chance-level submission over the example test videos
is written, validated against the organisers'-style template and scored against the ground truth.
"""
from __future__ import annotations

import json
import shutil
import time
import zlib
from pathlib import Path

import numpy as np

from abaw_ce import labels, submission
from abaw_ce.data import adapters, folds, writers
from abaw_ce.data.table import concat_tables


def _swatch(rng: np.random.Generator, expression: str, size: int = 32) -> np.ndarray:
    """A placeholder image whose colour depends on the expression (until the face renderer lands)."""
    base = (np.array([zlib.crc32(expression.encode()) % 200, 90, 160]) + rng.integers(0, 40, 3)).clip(0, 255)
    return (np.ones((size, size, 3)) * base + rng.normal(0, 8, (size, size, 3))).clip(0, 255).astype(np.uint8)


def write_example_world(root: Path, seed: int = 0) -> dict:
    """Small example sets in every format under root; returns the dataset specs that read them back."""
    rng = np.random.default_rng(seed)
    basics = [e for e in labels.BASIC_EMOTIONS] + ["neutral"]
    compounds = list(labels.RAFDB_COMPOUND.values())
    writers.write_rafdb(root / "rafdb_basic", [(f"train_{i:05d}", _swatch(rng, e), e)
                                               for i, e in enumerate(rng.choice(basics, 60), 1)], "basic")
    writers.write_rafdb(root / "rafdb_compound", [(f"train_{i:04d}", _swatch(rng, c), c)
                                                  for i, c in enumerate(rng.choice(compounds, 55), 1)], "compound")
    affectnet_names = list(labels.AFFECTNET.values())
    writers.write_affectnet(root / "affectnet" / "training.csv", root / "affectnet" / "images",
                            [(f"{i % 3}/{i:04d}.jpg", _swatch(rng, e), e)
                             for i, e in enumerate(rng.choice(affectnet_names, 50))])
    for v in range(6):
        n = int(rng.integers(8, 15))
        exprs = [str(rng.choice(list(labels.AFFWILD2_EXPR.values()))) if rng.random() > 0.1 else None
                 for _ in range(n)]
        frames = [None if rng.random() < 0.05 else _swatch(rng, e or "none") for e in exprs]
        aus = rng.integers(0, 2, (n, len(labels.AFFWILD2_AUS))).astype(np.float32)
        aus[rng.random(n) < 0.1] = np.nan
        writers.write_affwild2_video(root / "affwild2", f"video{v}", frames, exprs, aus)
    return {
        "rafdb_basic": {"format": "rafdb_basic", "root": root / "rafdb_basic"},
        "rafdb_compound": {"format": "rafdb_compound", "root": root / "rafdb_compound"},
        "affectnet": {"format": "affectnet", "csv_path": root / "affectnet" / "training.csv",
                      "images": root / "affectnet" / "images"},
        "affwild2_expr": {"format": "affwild2_expr", "images": root / "affwild2" / writers.AFFWILD2_IMAGES,
                          "annotations": root / "affwild2" / writers.AFFWILD2_EXPR_DIR},
        "affwild2_au": {"format": "affwild2_au", "images": root / "affwild2" / writers.AFFWILD2_IMAGES,
                        "annotations": root / "affwild2" / writers.AFFWILD2_AU_DIR},
    }


DEMO_MARKER = ".abaw-ce-demo"


def run_demo(out: str | Path, seed: int = 0, overwrite: bool = False) -> dict:
    """Run the demo into ``out``; an earlier demo there is replaced, any other non-empty folder is refused."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).exists() and not overwrite:
            raise FileExistsError(f"{out} is not empty and was not written by the demo; choose another --out "
                                  "or pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by `abaw-ce demo`; the next demo run replaces this folder\n")
    started = time.perf_counter()
    summary: dict = {}

    print(f"[1/3] writing example data in every real format under {out / 'data'}")
    specs = write_example_world(out / "data", seed)
    table = concat_tables([adapters.load_dataset(spec) for spec in specs.values()])
    summary["datasets"] = table.attrs["reports"]
    for source, report in table.attrs["reports"].items():
        print(f"      {source:<15} " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.items()))

    print("[2/3] 5-fold split (per source, grouped by identity/video, stratified by label)")
    labelled = table[table["has_target"] | table["expression"].ne("")].reset_index(drop=True)
    fold_of = folds.assign_folds(labelled, 5, seed)
    folds.save_folds(labelled, fold_of, out / "folds", 5, seed)
    summary["fold_sizes"] = np.bincount(fold_of, minlength=5).tolist()
    print(f"      validation rows per fold: {summary['fold_sizes']} -> {out / 'folds' / 'folds.csv'}")

    print("[3/3] challenge file: chance-level predictions for 3 example test videos, validated and scored")
    rng = np.random.default_rng(seed)
    lengths = {f"test{v:02d}": int(rng.integers(20, 40)) for v in range(3)}
    truth = {v: rng.integers(0, 7, n) for v, n in lengths.items()}
    gt_dir = out / "test_ground_truth"
    submission.write_submission(gt_dir / "ground_truth.txt", truth)
    template = "\n".join([submission.SUBMISSION_HEADER] + [
        submission.frame_location(v, k) for v in sorted(lengths) for k in range(1, lengths[v] + 1)]) + "\n"
    submission.atomic_write_text(gt_dir / "template.txt", template)
    sub_path = submission.write_submission(out / "submission.txt",
                                           {v: rng.integers(0, 7, n) for v, n in lengths.items()})
    report = submission.validate_submission(sub_path, template=gt_dir / "template.txt")
    print("      " + report.format().replace("\n", "\n      "))
    scored = submission.score(submission.read_submission(sub_path),
                              submission.read_submission(gt_dir / "ground_truth.txt"))
    submission.plot_confusion(scored.confusion, out / "confusion.png", "chance-level demo predictions")
    print(f"      macro F1 {scored.macro_f1:.3f} (chance level; the trained stages replace this predictor)")
    summary.update(submission=str(sub_path), valid=report.ok, macro_f1=scored.macro_f1,
                   seconds=round(time.perf_counter() - started, 1))
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"demo finished in {summary['seconds']} s; summary in {out / 'demo_summary.json'}")
    return summary

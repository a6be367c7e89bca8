"""`abaw-ce demo`: the pipeline on embedded data, on a CPU, with no downloads.

Stages join as they land. Today: the synthetic world (tiny) is rendered in every real format, read back by
the adapters and split into the seed paper's 5 folds; the test videos go through the face pipeline; a
chance-level submission over them is written, validated against the organisers'-style template and scored.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from abaw_ce import submission
from abaw_ce.data import adapters, folds
from abaw_ce.synth.world import generate_world
from abaw_ce.data.table import concat_tables


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

    print(f"[1/4] rendering the synthetic world (tiny) in every real format under {out / 'world'}")
    world = generate_world(out / "world", seed=seed, scale="tiny")
    # The labelled C-EXPR-DB-style videos are held out for fusion tuning, as in the seed paper's folds.
    specs = {k: v for k, v in world["datasets"].items() if k not in ("unlabeled", "cexpr")}
    table = concat_tables([adapters.load_dataset(spec) for spec in specs.values()])
    summary["datasets"] = table.attrs["reports"]
    for source, report in table.attrs["reports"].items():
        print(f"      {source:<15} " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.items()))
    print(f"      contact sheet of rendered expressions: {out / 'world' / 'contact_sheet.png'}")

    print("[2/4] 5-fold split (per source, grouped by identity/video, stratified by label)")
    fold_of = folds.assign_folds(table, 5, seed)
    folds.save_folds(table, fold_of, out / "folds", 5, seed)
    summary["fold_sizes"] = np.bincount(fold_of, minlength=5).tolist()
    print(f"      validation rows per fold: {summary['fold_sizes']} -> {out / 'folds' / 'folds.csv'}")

    print("[3/4] face pipeline on the test videos (offline OpenCV detector, 5-point alignment, packed crops)")
    from abaw_ce.faces.pipeline import run_faces
    run_faces(out / "world" / "test", out / "faces", detector="opencv", size=112, progress=False)
    visible = pd.read_csv(out / "world" / "test_ground_truth" / "face_visible.csv")
    found = visible.merge(pd.read_csv(out / "faces" / "frames.csv"), on=["video", "frame"])
    shown, empty = found[found["face_visible"] == 1], found[found["face_visible"] == 0]
    summary["detection_rate"] = float(shown["face_found"].mean())
    summary["false_detection_rate"] = float(empty["face_found"].mean()) if len(empty) else 0.0
    print(f"      face found in {summary['detection_rate']:.1%} of {len(shown)} frames that show one, "
          f"in {summary['false_detection_rate']:.1%} of {len(empty)} frames without -> {out / 'faces'}")

    print("[4/4] challenge file: chance-level predictions for the test videos, validated and scored")
    gt_dir = out / "world" / "test_ground_truth"
    frames = submission.read_template(gt_dir / "template.txt")
    lengths = frames.groupby("video")["frame"].max().to_dict()
    rng = np.random.default_rng(seed)
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

"""Table-4-style ablation of C-EXPR-NET on given data, scored on labelled test videos.

Each row is a C-EXPR-NET run under ``<out>/<row>`` (re-running continues unfinished rows and leaves finished
ones alone); every row is scored the same way: compound macro F1 over the 7 challenge classes on the given
videos and their ground truth (the challenge file format), through make_submission's path (faces found once,
the crop cache shared by the rows; the same smoothing). The rows:

1. multi-class: softmax cross-entropy over the 12 compounds + Other, compound rows only;
2. multi-label, sigmoid cross-entropy over the 6 basic emotions, compound rows only;
3. multi-label, softmax + KL (eq. 1), compound rows only;
4. + data augmentation: basic-emotion rows join with one-hot targets;
5. + AU branch: the AU rows join, AU loss on;
6. + distribution matching: C-EXPR-NET (visual);
7. audio: the same network on log-mel windows of the labelled videos (C-EXPR-NET-A);
8. late fusion of rows 6 and 7 (C-EXPR-NET-LF; equal weights).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from abaw_ce import challenge_file, fusion, labels
from abaw_ce.cexprnet.train import train_cexprnet
from abaw_ce.faces.pipeline import STORE_DIR, run_faces
from abaw_ce.models.cexprnet import load_cexprnet
from abaw_ce.submission.inference import LoadedModel, predict_crops, read_video_probs, save_video_probs
from abaw_ce.submission.pipeline import align_to_template, make_submission
from abaw_ce.train import runs
from abaw_ce.train.loop import read_status
from abaw_ce.train.reports import table_cell

ABLATION_FILE = "ablation.md"


@dataclass(frozen=True)
class Row:
    name: str
    head: str
    rows: str           # data.rows
    au: bool            # loss.au on
    dm: bool            # loss.dist on
    modality: str = "visual"


ROWS = (
    Row("multi-class", "multiclass", "compound", False, False),
    Row("multi-label sigmoid", "sigmoid", "compound", False, False),
    Row("multi-label softmax KL", "kl", "compound", False, False),
    Row("+ data augmentation", "kl", "expression", False, False),
    Row("+ AU branch", "kl", "all", True, False),
    Row("+ distribution matching", "kl", "all", True, True),
    Row("audio", "kl", "all", False, True, modality="audio"),
)
FUSED = ("late fusion", "+ distribution matching", "audio")


def row_dir(out_dir: Path, name: str) -> Path:
    return out_dir / name.replace("+ ", "plus_").replace(" ", "_").replace("-", "_")


def row_config(config: DictConfig, row: Row, run_dir: Path) -> DictConfig:
    crops = config.data.frame_crops.dir or str(run_dir.parent / "frame_crops")  # the rows share the crops
    return OmegaConf.merge(config, OmegaConf.create({
        "model": {"expr_head": row.head, "modality": row.modality},
        "data": {"rows": row.rows, "frame_crops": {"dir": crops}},
        "loss": {"au": float(config.loss.au) if row.au else 0.0,
                 "dist": float(config.loss.dist) if row.dm else 0.0,
                 "au_teacher": config.loss.au_teacher if row.au else None},
        "output": {"dir": str(run_dir), "overwrite": False}}))


def _multiclass_submission(videos: Path, run: Path, out: Path, work: Path, template: Path | None, detector: str,
                           crop_size: int, smoothing: str, window: int) -> Path:
    """The multi-class row's file: its 13 class probabilities per crop, filled and smoothed along each video
    like the 6-way rows' probabilities, then the best of the 7 challenge classes."""
    class ClassProbabilities(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)["expr_logits"].float().softmax(dim=1)

    net, meta = load_cexprnet(run / "export")
    model = LoadedModel(run / "export", ClassProbabilities(net).eval(), int(meta["img_size"]), list(meta["mean"]),
                        list(meta["std"]), track="cexprnet")
    faces_dir = work / "faces"
    run_faces(videos, faces_dir, detector=detector, size=crop_size, overwrite=True, progress=False,
              cache_dir=work / "faces_cache")
    probs = predict_crops(faces_dir / STORE_DIR, [model], progress=False, n_outputs=len(labels.CEXPR_CLASSES))
    per_video = save_video_probs(faces_dir, probs, work / "probs_multiclass")
    fallback = probs.mean(axis=0)
    template_rows = challenge_file.read_template(template) if template is not None else None
    parts = []
    for video, path in per_video.items():
        frames, found, values = read_video_probs(path)
        filled = fusion.fill_missing(values, found) if found.any() else np.repeat(fallback[None], len(values), 0)
        classes = fusion.smooth(filled, smoothing, window)[:, :len(labels.CHALLENGE_COMPOUNDS)].argmax(axis=1)
        if template_rows is not None:
            wanted = template_rows.loc[template_rows["video"] == video, "frame"].to_numpy(np.int64)
            classes, _ = align_to_template(frames, classes, wanted)
            frames = wanted
        parts.append(pd.DataFrame({"video": video, "frame": frames, "label": classes}))
    return challenge_file.write_submission(out, pd.concat(parts, ignore_index=True), overwrite=True)


def run_ablation(config: DictConfig, out_dir: Path, videos: Path, ground_truth: Path,
                 template: Path | None = None, detector: str = "auto", crop_size: int = 224,
                 smoothing: str = "gaussian", window: int = 9) -> Path:
    """Train (or continue) every row under ``out_dir``, score each on the labelled videos, write
    ``ablation.csv``/``ablation.md`` and a bar chart; returns the Markdown table's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = challenge_file.read_submission(ground_truth)
    work = out_dir / "eval_work"
    timings_path = out_dir / "timings.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    results = []
    finished: dict[str, Path] = {}
    for row in ROWS:
        run_dir = row_dir(out_dir, row.name)
        print(f"ablation row {row.name!r}: head {row.head}, rows {row.rows}, AU {row.au}, DM {row.dm}, "
              f"{row.modality}")
        resume = str(run_dir) if (run_dir / runs.CONFIG_FILE).is_file() else None
        before = read_status(run_dir)
        started = time.perf_counter()
        train_cexprnet(row_config(config, row, run_dir), resume=resume)
        seconds = time.perf_counter() - started
        after = read_status(run_dir)
        if after.get("state") != "finished":
            raise RuntimeError(f"ablation row {row.name!r} did not finish ({run_dir}); run the command again")
        epochs_now = int(after.get("epoch", 0)) - int(before.get("epoch", 0) or 0)
        if before.get("state") != "finished" and epochs_now > 0:  # trained now: keep its time per epoch
            timings[row.name] = {"seconds": seconds, "epochs": epochs_now}
            runs.atomic_write_json(timings_path, timings)
        finished[row.name] = run_dir
        results.append(_score_row(row.name, [run_dir], row, out_dir, videos, truth, work, template, detector,
                                  crop_size, smoothing, window, timings, make_submission))
    fused = [finished[name] for name in FUSED[1:]]
    results.append(_score_row(FUSED[0], fused, None, out_dir, videos, truth, work, template, detector, crop_size,
                              smoothing, window, timings, make_submission))
    return write_table(results, out_dir)


def _score_row(name: str, run_dirs: list[Path], row: Row | None, out_dir: Path, videos: Path, truth: pd.DataFrame,
               work: Path, template: Path | None, detector: str, crop_size: int, smoothing: str, window: int,
               timings: dict, make_submission) -> dict[str, Any]:
    out = row_dir(out_dir, name) / "submission.txt" if row is not None else out_dir / "late_fusion.txt"
    if row is not None and row.head == "multiclass":
        _multiclass_submission(videos, run_dirs[0], out, work, template, detector, crop_size, smoothing, window)
    else:
        make_submission(videos, run_dirs, out, template=template, work_dir=work, detector=detector,
                        crop_size=crop_size, smoothing=smoothing, window=window, overwrite=True, progress=False)
    scored = challenge_file.score(challenge_file.read_submission(out), truth)
    validation = {}
    if row is not None:
        validation = json.loads((run_dirs[0] / "validation.json").read_text(encoding="utf-8"))
    timing = timings.get(name, {})
    per_epoch = timing["seconds"] / timing["epochs"] if timing.get("epochs") else None
    print(f"  {name}: compound macro F1 {scored.macro_f1:.4f} on the labelled videos")
    return {"name": name, "head": row.head if row else "kl", "rows": row.rows if row else "all",
            "au": bool(row.au) if row else True, "dm": bool(row.dm) if row else True,
            "modality": row.modality if row else "audio+visual", "video_f1": scored.macro_f1,
            "val_compound_f1": validation.get("compound_f1"), "epochs": timing.get("epochs"),
            "seconds_per_epoch": per_epoch}


def write_table(results: list[dict[str, Any]], out_dir: Path) -> Path:
    """``ablation.csv``, ``ablation.md`` (Markdown table) and ``ablation.png`` (bar chart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(results)
    frame.to_csv(out_dir / "ablation.csv", index=False)

    lines = ["Compound macro F1 (7 challenge classes) on the labelled videos; validation F1 over the 12 C-EXPR-DB "
             "compounds on each run's own validation part (not comparable across rows whose data differ)", "",
             "| Row | Head | Rows | AU | DM | Input | Video F1 | Val. compound F1 | s / epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['head']} | {r['rows']} | {'✓' if r['au'] else '×'} | "
                     f"{'✓' if r['dm'] else '×'} | {r['modality']} | {table_cell(r['video_f1'])} | "
                     f"{table_cell(r['val_compound_f1'])} | {table_cell(r['seconds_per_epoch'], 1)} |")
    md = out_dir / ABLATION_FILE
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(frame) + 1))
    ax.barh(frame["name"][::-1], frame["video_f1"][::-1], color="tab:blue")
    ax.set_xlim(0, 1)
    ax.set_xlabel("compound macro F1 on the labelled videos")
    fig.tight_layout()
    fig.savefig(out_dir / "ablation.png", dpi=100)
    plt.close(fig)
    return md

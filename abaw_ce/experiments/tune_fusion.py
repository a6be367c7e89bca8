"""Choose the run weights, the fusion rule and the temporal smoothing on labelled videos; fit weighted fusion.

``submit/tune_fusion.py --videos ROOT --models RUN [RUN ...] --out DIR``: ROOT is C-EXPR-DB-style
(``videos/`` + ``annotation/<id>.csv``), labelled videos that no run trained on. The videos go through
make_submission's own path once (faces, every model of every run, audio runs on the sound). With several runs,
each run's weight and the smoothing window are fitted first (``submission.run_weights``: a grid over the
simplex of weights, so a weak run gets little or nothing); then every fusion rule x smoothing filter x window is
scored by macro F1 over the 7 challenge classes on the labelled frames, with the runs mixed by those weights.
Weighted fusion is fitted on the runs' out-of-fold probabilities of compound images (RAF-DB compound rows of
``oof.csv``), which the videos never saw, so its video score is a fair one. Written to DIR: ``grid.csv``,
``grid.png``, ``choice.json`` (the best setting and the make_submission flags that select it, run weights
included), ``run_weights.json`` and ``run_weights_grid.csv`` (several runs) and ``fusion_weights.json`` (for
``--fusion-weights``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abaw_ce import challenge_file, fusion, labels
from abaw_ce.data.adapters import cexpr_segments, segments_to_frames
from abaw_ce.errors import InputError
from abaw_ce.files import atomic_write_text
from abaw_ce.submission.pipeline import video_labels
from abaw_ce.submission.run_weights import fit_run_weights, run_frame_probs
from abaw_ce.train.reports import OOF_NAME
from abaw_ce.video import video_info

DEFAULT_WINDOWS = (1, 3, 5, 9, 15, 25, 41)
GRID_METHODS = ("sum", "mean", "product", "min", "weighted")


def labelled_video_frames(root: str | Path) -> pd.DataFrame:
    """(video, frame, label) for every frame of ROOT's videos whose segment is one of the 7 challenge classes."""
    root = Path(root)
    files = sorted((root / "annotation").glob("*.csv"))
    if not files:
        raise InputError(root / "annotation", "no annotation .csv files (expected C-EXPR-DB layout: "
                                              "videos/<id>.mp4 + annotation/<id>.csv)")
    rows = []
    for csv_path in files:
        candidates = sorted((root / "videos").glob(f"{csv_path.stem}.*"))
        if not candidates:
            raise InputError(csv_path, f"no video {csv_path.stem}.* in {root / 'videos'} for this annotation")
        info = video_info(candidates[0])
        for frame, name in segments_to_frames(csv_path, cexpr_segments(csv_path), info.fps, info.frames).items():
            if name in labels.CHALLENGE_COMPOUNDS:
                rows.append((csv_path.stem, frame, labels.CHALLENGE_COMPOUNDS.index(name)))
    table = pd.DataFrame(rows, columns=["video", "frame", "label"])
    if table.empty:
        raise InputError(root / "annotation", "no frame is labelled with one of the 7 challenge compounds")
    return table.sort_values(["video", "frame"], ignore_index=True)


def oof_compound_probs(runs: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold probabilities (on the common scale make_submission ensembles on) and challenge classes of
    the runs' two-emotion (compound) rows.

    Rows whose emotion pair is not a challenge compound are left out; runs without ``oof.csv`` add nothing.
    """
    probs, classes = [], []
    p_cols = [f"p_{e}" for e in labels.BASIC_EMOTIONS]
    y_cols = [f"y_{e}" for e in labels.BASIC_EMOTIONS]
    for run in runs:
        path = Path(run) / OOF_NAME
        if not path.is_file():
            continue
        table = pd.read_csv(path)
        found = labels.challenge_classes(table[y_cols].to_numpy(np.float64))
        probs.append(fusion.common_scale(table[p_cols].to_numpy(np.float64)[found >= 0]))  # make_submission's scale
        classes.append(found[found >= 0])
    if not probs:
        return np.zeros((0, len(labels.BASIC_EMOTIONS))), np.zeros(0, np.int64)
    return np.concatenate(probs), np.concatenate(classes)


def score_grid(per_video: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], truth: pd.DataFrame,
               fallback: np.ndarray, methods: Sequence[str] = GRID_METHODS,
               smoothings: Sequence[str] = fusion.SMOOTHING_METHODS, windows: Sequence[int] = DEFAULT_WINDOWS,
               weights: fusion.WeightedFusion | None = None) -> pd.DataFrame:
    """Macro F1 on the labelled frames for every (method, smoothing, window).

    ``per_video`` maps a video to (frames, face_found, probs) as make_submission saved them.
    """
    missing = sorted(set(truth["video"]) - set(per_video))
    if missing:
        raise InputError(Path(str(missing[0])), f"labelled video(s) without predictions: {missing[:5]}")
    results = []
    for method in methods:
        if method == "weighted" and weights is None:
            continue
        for smoothing in smoothings:
            # a window of 1 leaves the probabilities as they are: scored once, as "none"
            for window in ((1,) if smoothing == "none" else [w for w in windows if w > 1]):
                parts = []
                for video, (frames, found, probs) in per_video.items():
                    classes, _ = video_labels(found, probs, fallback, method, weights, smoothing, window)
                    parts.append(pd.DataFrame({"video": video, "frame": frames, "label": classes}))
                scored = challenge_file.score(pd.concat(parts, ignore_index=True), truth)
                results.append({"method": method, "smoothing": smoothing, "window": int(window),
                                "macro_f1": scored.macro_f1})
    return pd.DataFrame(results)


def plot_grid(grid: pd.DataFrame, path: Path) -> Path:
    """One panel per fusion rule: macro F1 against the window, a line per smoothing filter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(grid["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        part = grid[grid["method"] == method]
        for smoothing, rows in part.groupby("smoothing", sort=False):
            if smoothing == "none":
                ax.axhline(rows["macro_f1"].iloc[0], color="0.5", ls="--", lw=1, label="none")
            else:
                ax.plot(rows["window"], rows["macro_f1"], marker="o", ms=3, label=smoothing)
        ax.set_xscale("log")
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("window (frames)")
    axes[0, 0].set_ylabel("compound macro F1")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def tune_fusion(videos_root: str | Path, runs: Sequence[str | Path], out_dir: str | Path,
                detector: str = "auto", crop_size: int = 224, windows: Sequence[int] = DEFAULT_WINDOWS,
                flip: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} is not empty; refusing to overwrite it (pass --overwrite)")
    truth = labelled_video_frames(videos_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_run = run_frame_probs(Path(videos_root) / "videos", runs, out_dir / "work", detector=detector,
                              crop_size=crop_size, flip=flip, progress=progress)
    run_weights = [1.0]
    if len(runs) > 1:
        fit = fit_run_weights(per_run, truth, windows=windows)
        fit.grid.to_csv(out_dir / "run_weights_grid.csv", index=False)
        atomic_write_text(out_dir / "run_weights.json", json.dumps(
            {**fit.to_dict(), "runs": [str(r) for r in runs],
             "fitted_on": f"{len(truth)} labelled frames of {truth['video'].nunique()} videos in {videos_root}"},
            indent=2) + "\n", overwrite=True)
        run_weights = fit.weights
    # the runs mixed with their weights; every frame is already filled, so nothing is filled again below
    per_video = {video: (frames, np.ones(len(frames), bool), sum(w * run[video][2] for w, run in
                                                                zip(run_weights, per_run) if w > 0))
                 for video, (frames, _, _) in per_run[0].items()}
    fallback = np.full(len(labels.BASIC_EMOTIONS), 1.0 / len(labels.BASIC_EMOTIONS))

    oof_probs, oof_classes = oof_compound_probs(runs)
    weights = fusion.fit_weighted_fusion(oof_probs, oof_classes) if len(oof_classes) else None
    if weights is not None:
        atomic_write_text(out_dir / "fusion_weights.json", json.dumps(
            {**weights.to_dict(), "fitted_on": f"{len(oof_classes)} out-of-fold compound images of "
                                               f"{[str(r) for r in runs]}"}, indent=2) + "\n", overwrite=True)
    grid = score_grid(per_video, truth, fallback, windows=windows, weights=weights)
    grid.to_csv(out_dir / "grid.csv", index=False)
    plot_grid(grid, out_dir / "grid.png")
    best = grid.sort_values("macro_f1", ascending=False, kind="stable").iloc[0]
    default = grid[(grid["method"] == "sum") & (grid["smoothing"] == "gaussian") & (grid["window"] == 9)]
    flags = (["--fusion-weights", str(out_dir / "fusion_weights.json")] if best["method"] == "weighted"
             else ["--fusion", str(best["method"])])
    flags += ["--smoothing", str(best["smoothing"]), "--window", str(int(best["window"]))]
    if len(runs) > 1:
        flags += ["--run-weights", *(f"{w:g}" for w in run_weights)]
    choice = {"method": str(best["method"]), "smoothing": str(best["smoothing"]), "window": int(best["window"]),
              "macro_f1": float(best["macro_f1"]),
              "default_macro_f1": float(default["macro_f1"].iloc[0]) if len(default) else None,
              "labelled_frames": int(len(truth)), "videos": sorted(per_video),
              "weighted_fit_images": int(len(oof_classes)), "run_weights": run_weights,
              "make_submission_flags": flags}
    atomic_write_text(out_dir / "choice.json", json.dumps(choice, indent=2) + "\n", overwrite=True)
    return {"choice": choice, "grid": grid}


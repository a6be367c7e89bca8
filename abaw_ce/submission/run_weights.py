"""Each run's weight in the ensemble, fitted on labelled validation videos (never on the test videos).

make_submission mixes runs linearly: every frame's probabilities are the share-weighted sum of each run's own
(visual runs filled over faceless frames, audio runs heard at the frame's time). So each run's per-frame
probabilities are computed once (``run_frame_probs``, on make_submission's own faces and inference path) and
any weighting can then be scored without running a model again (``fit_run_weights``): a grid over the simplex
of run weights x smoothing windows, each scored on the labelled frames. A weak run gets a small weight or none, so
it cannot drag the ensemble down.

The default criterion is the log loss of the true class under the fused compound scores (normalised to sum to 1),
not macro F1: validation videos are few, and macro F1 on a hundred frames of three classes moves in steps and
rewards a weighting that flips a handful of frames by luck, while the log loss is smooth in the weights and
counts how much probability every frame gives its true class.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from abaw_ce import challenge_file, fusion, labels
from abaw_ce.errors import OptionError
from abaw_ce.submission.inference import RunShares, load_models, read_video_probs, save_video_probs
from abaw_ce.submission.pipeline import audio_probs_of_videos, faces_of_videos, video_names, visual_probs

# One run's per-frame probabilities: video -> (decoded frames, face found, filled (frames, 6) probabilities).
FrameProbs = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def run_frame_probs(videos: str | Path, runs: Sequence[str | Path], work: str | Path, detector: str = "auto",
                    crop_size: int = 224, batch_size: int = 256, device: str = "cpu", flip: bool = False,
                    progress: bool = False) -> list[FrameProbs]:
    """Per run, every decoded frame's basic-emotion probabilities on the common scale, as make_submission
    would mix them: a visual run's faceless frames filled from their neighbours, an audio run's read from the
    sound (a video without sound, or without any face, takes the run's mean over the other videos)."""
    videos, work = Path(videos), Path(work)
    name_of, names = video_names(videos, work, None, None)
    faces_dir, _, _ = faces_of_videos(videos, work, name_of, names, None, detector, crop_size, progress)
    out = []
    for i, run in enumerate(runs):
        models = load_models([run], device)
        shares = RunShares.of(models, None, n_runs=1)
        audio = shares.modality_share("audio") >= 1.0
        crops = visual_probs(faces_dir, models, shares, 1.0 if audio else 0.0, batch_size, flip, device, progress)[1]
        saved = save_video_probs(faces_dir, crops, work / f"run_probs_{i}")
        per_video = {v: read_video_probs(p) for v, p in saved.items()}
        heard = audio_probs_of_videos(videos, name_of, saved, models, shares, device, batch_size) if audio else {}
        filled: dict[str, np.ndarray | None] = {}
        for video, (frames, found, probs) in per_video.items():
            if audio:
                filled[video] = heard.get(video)
            else:
                filled[video] = fusion.fill_missing(probs, found) if found.any() else None
        known = [p for p in filled.values() if p is not None]
        mean = (np.concatenate(known).mean(axis=0) if known
                else np.full(len(labels.BASIC_EMOTIONS), 1.0 / len(labels.BASIC_EMOTIONS)))
        out.append({video: (frames, found, filled[video] if filled[video] is not None
                            else np.repeat(mean[None], len(frames), axis=0))
                    for video, (frames, found, _) in per_video.items()})
    return out


def simplex_grid(n_runs: int, step: float) -> np.ndarray:
    """Every weight vector of ``n_runs`` non-negative multiples of ``step`` summing to 1."""
    units = int(round(1.0 / step))
    rows = [c for c in itertools.product(range(units + 1), repeat=n_runs) if sum(c) == units]
    return np.array(rows, dtype=np.float64) / units


CRITERIA = ("log_loss", "macro_f1")
SCORE_FLOOR = 1e-6  # no frame's normalised class score is taken below this in the log loss


def mixed_scores(per_run: Sequence[FrameProbs], weights: Sequence[float], smoothing: str, window: int,
                 method: str = "sum") -> tuple[pd.DataFrame, np.ndarray]:
    """(video, frame) of every decoded frame and its (N, 7) fused compound scores for one run weighting:
    weighted sum, smoothing, pair fusion."""
    keys, scores = [], []
    for video, (frames, _, _) in per_run[0].items():
        mixed = sum(w * run[video][2] for w, run in zip(weights, per_run) if w > 0)
        scores.append(fusion.pair_scores(fusion.smooth(mixed, smoothing, window), method))
        keys.append(pd.DataFrame({"video": video, "frame": frames}))
    return pd.concat(keys, ignore_index=True), np.concatenate(scores)


def mixed_labels(per_run: Sequence[FrameProbs], weights: Sequence[float], smoothing: str, window: int,
                 method: str = "sum") -> pd.DataFrame:
    """(video, frame, label) of every decoded frame for one run weighting: weighted sum, smoothing, fusion."""
    keys, scores = mixed_scores(per_run, weights, smoothing, window, method)
    return keys.assign(label=scores.argmax(axis=1))


def log_loss(keys: pd.DataFrame, scores: np.ndarray, truth: pd.DataFrame) -> float:
    """Mean -log of the true class's share of its frame's (non-negative) compound scores, over ``truth``'s
    frames; a labelled frame that was not decoded counts as the floor."""
    rows = keys.reset_index(drop=True).assign(row=np.arange(len(keys)))
    merged = truth[["video", "frame", "label"]].merge(rows, on=["video", "frame"], how="left")
    clipped = np.clip(scores, 0.0, None)
    shares = clipped / clipped.sum(axis=1, keepdims=True).clip(min=1e-12)
    found = merged["row"].notna().to_numpy()
    picked = np.full(len(merged), SCORE_FLOOR)
    picked[found] = shares[merged.loc[found, "row"].to_numpy(np.int64), merged.loc[found, "label"].to_numpy(np.int64)]
    return float(-np.log(np.clip(picked, SCORE_FLOOR, None)).mean())


@dataclass
class RunWeightFit:
    weights: list[float]        # one per run, summing to 1
    window: int
    criterion: str              # what chose them: log_loss (lowest) or macro_f1 (highest)
    macro_f1: float             # of the chosen weights and window on the labelled frames
    log_loss: float             # of the chosen weights and window on the labelled frames
    equal_macro_f1: float       # equal weights, the window best by the criterion
    alone_macro_f1: list[float]  # each run alone, the window best by the criterion
    grid: pd.DataFrame          # every (weights, window) scored

    def to_dict(self) -> dict:
        return {"weights": self.weights, "window": self.window, "criterion": self.criterion,
                "macro_f1": self.macro_f1, "log_loss": self.log_loss, "equal_macro_f1": self.equal_macro_f1,
                "alone_macro_f1": self.alone_macro_f1}


def fit_run_weights(per_run: Sequence[FrameProbs], truth: pd.DataFrame, windows: Sequence[int] = (1, 5, 9, 15, 25),
                    step: float = 0.1, smoothing: str = "gaussian", method: str = "sum",
                    criterion: str = "log_loss") -> RunWeightFit:
    """The run weights and smoothing window best by ``criterion`` on ``truth``'s labelled frames (video, frame,
    label): the lowest log loss (default) or the highest macro F1; among equal scores, the weights nearest to
    equal ones (the least fitted), then the narrowest window."""
    if criterion not in CRITERIA:
        raise OptionError(f"the run-weight criterion must be one of {CRITERIA}, got {criterion!r}")
    missing = sorted(set(truth["video"]) - set(per_run[0]))
    if missing:
        raise ValueError(f"labelled video(s) without predictions: {missing[:5]}")
    n = len(per_run)
    rows = []
    equal = np.full(n, 1.0 / n)
    for weights in [equal, *(w for w in simplex_grid(n, step) if not np.allclose(w, equal))]:
        for window in windows:
            keys, scores = mixed_scores(per_run, weights, smoothing, window, method)
            f1 = challenge_file.score(keys.assign(label=scores.argmax(axis=1)), truth).macro_f1
            rows.append({**{f"w{i}": float(w) for i, w in enumerate(weights)}, "window": int(window),
                         "macro_f1": float(f1), "log_loss": log_loss(keys, scores, truth),
                         "distance_to_equal": float(np.abs(weights - 1.0 / n).sum())})
    grid = pd.DataFrame(rows)
    # rounded so that float noise does not break a tie that the tie rule should settle
    grid["rank_score"] = (grid["log_loss"] if criterion == "log_loss" else -grid["macro_f1"]).round(9)

    def best_of(rows: pd.DataFrame) -> pd.Series:
        return rows.sort_values(["rank_score", "distance_to_equal", "window"], kind="stable").iloc[0]

    best = best_of(grid)
    weight_cols = [f"w{i}" for i in range(n)]
    equal_f1 = float(best_of(grid[grid["distance_to_equal"] < 1e-9])["macro_f1"])
    alone = [float(best_of(grid[grid[c] == 1.0])["macro_f1"]) for c in weight_cols]
    return RunWeightFit([float(best[c]) for c in weight_cols], int(best["window"]), criterion,
                        float(best["macro_f1"]), float(best["log_loss"]), equal_f1, alone,
                        grid.drop(columns="rank_score"))

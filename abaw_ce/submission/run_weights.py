"""Each run's weight in the ensemble, fitted on labelled validation videos (never on the test videos).

make_submission mixes runs linearly: every frame's probabilities are the share-weighted sum of each run's own
(visual runs filled over faceless frames, audio runs heard at the frame's time). So each run's per-frame
probabilities are computed once (``run_frame_probs``, on make_submission's own faces and inference path) and
any weighting can then be scored without running a model again (``fit_run_weights``): a grid over the simplex
of run weights x smoothing windows, macro F1 over the 7 challenge classes on the labelled frames. A weak run gets
a small weight or none, so it cannot drag the ensemble down.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from abaw_ce import challenge_file, fusion, labels
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
        crops = visual_probs(faces_dir, models, shares, 1.0 if audio else 0.0, batch_size, flip, device, progress)
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


def mixed_labels(per_run: Sequence[FrameProbs], weights: Sequence[float], smoothing: str, window: int,
                 method: str = "sum") -> pd.DataFrame:
    """(video, frame, label) of every decoded frame for one run weighting: weighted sum, smoothing, fusion."""
    parts = []
    for video, (frames, _, _) in per_run[0].items():
        mixed = sum(w * run[video][2] for w, run in zip(weights, per_run) if w > 0)
        classes = fusion.fuse(fusion.smooth(mixed, smoothing, window), method)
        parts.append(pd.DataFrame({"video": video, "frame": frames, "label": classes}))
    return pd.concat(parts, ignore_index=True)


@dataclass
class RunWeightFit:
    weights: list[float]        # one per run, summing to 1
    window: int
    macro_f1: float             # of the chosen weights and window on the labelled frames
    equal_macro_f1: float       # equal weights, best window
    alone_macro_f1: list[float]  # each run alone, best window
    grid: pd.DataFrame          # every (weights, window) scored

    def to_dict(self) -> dict:
        return {"weights": self.weights, "window": self.window, "macro_f1": self.macro_f1,
                "equal_macro_f1": self.equal_macro_f1, "alone_macro_f1": self.alone_macro_f1}


def fit_run_weights(per_run: Sequence[FrameProbs], truth: pd.DataFrame, windows: Sequence[int] = (1, 5, 9, 15, 25),
                    step: float = 0.1, smoothing: str = "gaussian", method: str = "sum") -> RunWeightFit:
    """The run weights and smoothing window of best macro F1 on ``truth``'s labelled frames (video, frame,
    label); among equal scores, the weights nearest to equal ones (the least fitted)."""
    missing = sorted(set(truth["video"]) - set(per_run[0]))
    if missing:
        raise ValueError(f"labelled video(s) without predictions: {missing[:5]}")
    n = len(per_run)
    rows = []
    equal = np.full(n, 1.0 / n)
    for weights in [equal, *(w for w in simplex_grid(n, step) if not np.allclose(w, equal))]:
        for window in windows:
            predicted = mixed_labels(per_run, weights, smoothing, window, method)
            f1 = challenge_file.score(predicted, truth).macro_f1
            rows.append({**{f"w{i}": float(w) for i, w in enumerate(weights)}, "window": int(window),
                         "macro_f1": float(f1), "distance_to_equal": float(np.abs(weights - 1.0 / n).sum())})
    grid = pd.DataFrame(rows)
    best = grid.sort_values(["macro_f1", "distance_to_equal", "window"], ascending=[False, True, True],
                            kind="stable").iloc[0]
    weight_cols = [f"w{i}" for i in range(n)]
    equal_f1 = grid[grid["distance_to_equal"] < 1e-9]["macro_f1"].max()
    alone = [float(grid[grid[c] == 1.0]["macro_f1"].max()) for c in weight_cols]
    return RunWeightFit([float(best[c]) for c in weight_cols], int(best["window"]),
                        float(best["macro_f1"]), float(equal_f1), alone, grid)

"""From basic-emotion probabilities to the 7 challenge classes: the common scale runs are averaged on, pairwise
fusion, temporal smoothing and gap filling along a video.

A compound's score comes from the probabilities of its two constituent basic emotions (``labels.
CHALLENGE_PAIRS``); the predicted class is the best-scoring compound. ``sum`` is what the winning team used.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage, optimize, special

from abaw_ce import labels
from abaw_ce.errors import OptionError

FUSION_METHODS = ("sum", "mean", "product", "min", "weighted")
SCALE_FLOOR = 1e-6  # a row of all-zero probabilities stays zero instead of dividing by zero
SMOOTHING_METHODS = ("none", "box", "gaussian", "median")


def pair_indices(pairs: Sequence[tuple[str, str]] = labels.CHALLENGE_PAIRS) -> np.ndarray:
    """(C, 2) column indices of each compound's two basic emotions in the model's output order."""
    return np.array([[labels.BASIC_INDEX[a], labels.BASIC_INDEX[b]] for a, b in pairs], dtype=np.int64)


@dataclass(frozen=True)
class WeightedFusion:
    """score_c = weight_c * (p_a + p_b) + bias_c, fitted on labelled compound data."""
    weights: np.ndarray
    biases: np.ndarray

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "biases": self.biases.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> WeightedFusion:
        fitted = cls(np.asarray(data["weights"], np.float64), np.asarray(data["biases"], np.float64))
        n = len(labels.CHALLENGE_PAIRS)
        if fitted.weights.shape != (n,) or fitted.biases.shape != (n,):
            raise ValueError(f"weights and biases must hold {n} numbers each (one per challenge class)")
        return fitted


def common_scale(probs):
    """Basic-emotion probabilities (numpy or torch, emotions on the last axis) divided by their sum per row.

    Every model's output is put on this scale before runs are averaged: six sigmoids (two of them near 1 on a
    compound face) and a softmax (two near 0.5) then both give a distribution over the six emotions, so each run
    brings the same mass to every frame and a run weight w is a share w of what the pair fusion sees. For one
    run alone the fused class of a frame does not change (a positive factor per row).
    """
    return probs / probs.sum(axis=-1, keepdims=True).clip(min=SCALE_FLOOR)


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels.BASIC_EMOTIONS):
        raise ValueError(f"expected (N, {len(labels.BASIC_EMOTIONS)}) basic-emotion probabilities in the order "
                         f"{labels.BASIC_EMOTIONS}, got shape {probs.shape}")
    return probs


def pair_scores(probs: np.ndarray, method: str = "sum", fusion: WeightedFusion | None = None,
                pairs: Sequence[tuple[str, str]] = labels.CHALLENGE_PAIRS) -> np.ndarray:
    """(N, C) compound scores from (N, 6) basic probabilities."""
    probs = _check_probs(probs)
    idx = pair_indices(pairs)
    a, b = probs[:, idx[:, 0]], probs[:, idx[:, 1]]
    if method == "sum":
        return a + b
    if method == "mean":
        return (a + b) / 2
    if method == "product":
        return a * b
    if method == "min":
        return np.minimum(a, b)
    if method == "weighted":
        if fusion is None:
            raise ValueError("weighted fusion needs fitted weights (fit_weighted_fusion)")
        return (a + b) * fusion.weights + fusion.biases
    raise OptionError(f"fusion method must be one of {FUSION_METHODS}, got {method!r}")


def fuse(probs: np.ndarray, method: str = "sum", fusion: WeightedFusion | None = None) -> np.ndarray:
    """Challenge class index 0..6 per row."""
    return pair_scores(probs, method, fusion).argmax(axis=1)


def fit_weighted_fusion(probs: np.ndarray, classes: np.ndarray, l2: float = 1e-3) -> WeightedFusion:
    """Per-class weight and bias on the pair sum, by softmax cross-entropy over the 7 classes plus
    l2/2 * (|weights - 1|^2 + |biases|^2), minimised by L-BFGS (14 parameters, so it cannot overfit much)."""
    sums = pair_scores(probs, "sum")
    classes = np.asarray(classes, dtype=np.int64)
    n_classes = sums.shape[1]
    if len(classes) != len(sums) or classes.min(initial=0) < 0 or classes.max(initial=0) >= n_classes:
        raise ValueError(f"classes must be {len(sums)} indices in 0..{n_classes - 1}")
    start = np.r_[np.ones(n_classes), np.zeros(n_classes)]
    if not len(classes):  # nothing to fit: the penalty alone, whose minimum is the plain sum
        return WeightedFusion(start[:n_classes], start[n_classes:])
    rows = np.arange(len(classes))

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        weights, biases = params[:n_classes], params[n_classes:]
        logits = sums * weights + biases
        log_soft = logits - special.logsumexp(logits, axis=1, keepdims=True)
        error = np.exp(log_soft)
        error[rows, classes] -= 1.0
        error /= len(sums)
        loss = -log_soft[rows, classes].mean() + l2 / 2 * (np.sum((weights - 1) ** 2) + np.sum(biases ** 2))
        grad = np.r_[(error * sums).sum(axis=0) + l2 * (weights - 1), error.sum(axis=0) + l2 * biases]
        return float(loss), grad

    fitted = optimize.minimize(loss_and_grad, start, jac=True, method="L-BFGS-B")
    return WeightedFusion(fitted.x[:n_classes].copy(), fitted.x[n_classes:].copy())


def fill_missing(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Rows where ``present`` is False get linear interpolation between the nearest present rows (the
    nearest present row at the edges). Raises when no row is present."""
    values = np.asarray(values, dtype=np.float64)
    present = np.asarray(present, dtype=bool)
    if not present.any():
        raise ValueError("no frame of this video has a face; there is nothing to fill from")
    if present.all():
        return values.copy()
    # linear in the row number between present rows; limit_direction="both" also fills the rows before the
    # first and after the last present one, with that row's values (as np.interp holds its end values)
    gaps = pd.DataFrame(np.where(present[:, None], values, np.nan))
    return gaps.interpolate(method="linear", limit_direction="both").to_numpy(np.float64)


def smooth(values: np.ndarray, method: str = "gaussian", window: int = 5) -> np.ndarray:
    """Filter each column along time (axis 0). ``window`` is in frames: the box/median width, and about
    the Gaussian's +-2 sigma span. Edges repeat the nearest frame; a video shorter than the window is fine."""
    values = np.asarray(values, dtype=np.float64)
    if method == "none" or window <= 1 or len(values) <= 1:
        return values.copy()
    if method == "box":
        return ndimage.uniform_filter1d(values, size=window, axis=0, mode="nearest")
    if method == "gaussian":
        return ndimage.gaussian_filter1d(values, sigma=window / 4.0, axis=0, mode="nearest")
    if method == "median":
        return ndimage.median_filter(values, size=(window, 1), mode="nearest")
    raise OptionError(f"smoothing method must be one of {SMOOTHING_METHODS}, got {method!r}")

"""Multi-label F1 at fixed and tuned thresholds, for AUs and basic emotions."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def f1_binary(scores: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    truth = truth.astype(bool)
    tp = float(np.sum(predicted & truth))
    fp = float(np.sum(predicted & ~truth))
    fn = float(np.sum(~predicted & truth))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def multilabel_f1(probs: np.ndarray, targets: np.ndarray, names: Sequence[str], mask: np.ndarray | None = None,
                  thresholds: Sequence[float] | float = 0.5) -> dict:
    """Per-class F1 (labelled entries only, targets >= 0.5 count as positive) and their mean."""
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets, np.float64)
    mask = np.ones_like(targets, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    cuts = np.broadcast_to(np.asarray(thresholds, np.float64), (probs.shape[1],))
    per_class = {}
    for j, name in enumerate(names):
        keep = mask[:, j]
        per_class[name] = f1_binary(probs[keep, j], targets[keep, j] >= 0.5, float(cuts[j]))
    return {"per_class": per_class, "mean": float(np.mean(list(per_class.values()))) if per_class else 0.0,
            "thresholds": {n: float(c) for n, c in zip(names, cuts)}}


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
                    grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Per class, the grid threshold with the best F1 (ties: closest to 0.5)."""
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets, np.float64)
    mask = np.ones_like(targets, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    order = grid[np.argsort(np.abs(grid - 0.5), kind="stable")]
    best = np.full(probs.shape[1], 0.5)
    for j in range(probs.shape[1]):
        keep = mask[:, j]
        scores = [f1_binary(probs[keep, j], targets[keep, j] >= 0.5, t) for t in order]
        best[j] = order[int(np.argmax(scores))]
    return best


def evaluate_multilabel(probs: np.ndarray, targets: np.ndarray, names: Sequence[str],
                        mask: np.ndarray | None = None) -> dict:
    """F1 at 0.5 (the score early stopping follows) and at thresholds tuned on the same data (optimistic)."""
    at_half = multilabel_f1(probs, targets, names, mask, 0.5)
    tuned = tune_thresholds(probs, targets, mask)
    at_tuned = multilabel_f1(probs, targets, names, mask, tuned)
    return {"score": at_half["mean"], "f1": at_half["per_class"], "mean_f1": at_half["mean"],
            "f1_tuned": at_tuned["per_class"], "mean_f1_tuned": at_tuned["mean"],
            "thresholds": at_tuned["thresholds"], "samples": int(len(probs))}

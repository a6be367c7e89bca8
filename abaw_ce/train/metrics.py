"""Multi-label F1 at fixed and tuned thresholds, for AUs and basic emotions.

F1 is scikit-learn's, with ``zero_division=0``: a class with no true positive scores 0, also when nothing is
predicted and nothing is true. A masked (unlabelled) entry counts as neither predicted nor true, which leaves
F1 unchanged (it does not use true negatives), so every class, and every threshold, is scored in one call.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def f1_binary(scores: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    truth = np.asarray(truth).astype(bool)
    if truth.size == 0:  # scikit-learn refuses empty input; no true positive: 0
        return 0.0
    return float(f1_score(truth, np.asarray(scores) >= threshold, zero_division=0.0))


def f1_columns(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """F1 of each column of two (N, K) boolean arrays (0 where a column has no true positive)."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    if truth.shape[0] == 0 or truth.shape[1] == 0:
        return np.zeros(truth.shape[1])
    # an empty extra column: scikit-learn would read a single column as a binary target, not a multilabel one;
    # uint8 rather than bool: scikit-learn sorts the arrays to find their labels, and sorts uint8 faster
    pad = np.zeros((len(truth), 1), bool)
    as_labels = [np.hstack([x, pad]).astype(np.uint8) for x in (truth, predicted)]
    return f1_score(*as_labels, average=None, zero_division=0.0)[:-1]


def _masked(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets, np.float64)
    mask = np.ones_like(targets, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    return probs, (targets >= 0.5) & mask, mask


def multilabel_f1(probs: np.ndarray, targets: np.ndarray, names: Sequence[str], mask: np.ndarray | None = None,
                  thresholds: Sequence[float] | float = 0.5) -> dict:
    """Per-class F1 (labelled entries only, targets >= 0.5 count as positive) and their mean."""
    probs, truth, mask = _masked(probs, targets, mask)
    cuts = np.broadcast_to(np.asarray(thresholds, np.float64), (probs.shape[1],))
    scores = f1_columns(truth, (probs >= cuts) & mask)
    per_class = {name: float(scores[j]) for j, name in enumerate(names)}
    return {"per_class": per_class, "mean": float(np.mean(list(per_class.values()))) if per_class else 0.0,
            "thresholds": {n: float(c) for n, c in zip(names, cuts)}}


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None,
                    grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Per class, the grid threshold with the best F1 (ties: closest to 0.5)."""
    probs, truth, mask = _masked(probs, targets, mask)
    order = grid[np.argsort(np.abs(grid - 0.5), kind="stable")]
    n, classes = probs.shape
    # (N, classes, thresholds) as (N, classes * thresholds) columns: every class at every threshold at once
    predicted = (probs[:, :, None] >= order) & mask[:, :, None]
    truth = np.broadcast_to(truth[:, :, None], predicted.shape)
    columns = (n, classes * len(order))
    scores = f1_columns(truth.reshape(columns), predicted.reshape(columns)).reshape(classes, len(order))
    return order[np.argmax(scores, axis=1)]


def evaluate_multilabel(probs: np.ndarray, targets: np.ndarray, names: Sequence[str],
                        mask: np.ndarray | None = None) -> dict:
    """F1 at 0.5 (the score early stopping follows) and at thresholds tuned on the same data (optimistic)."""
    at_half = multilabel_f1(probs, targets, names, mask, 0.5)
    tuned = tune_thresholds(probs, targets, mask)
    at_tuned = multilabel_f1(probs, targets, names, mask, tuned)
    return {"score": at_half["mean"], "f1": at_half["per_class"], "mean_f1": at_half["mean"],
            "f1_tuned": at_tuned["per_class"], "mean_f1_tuned": at_tuned["mean"],
            "thresholds": at_tuned["thresholds"], "samples": int(len(probs))}

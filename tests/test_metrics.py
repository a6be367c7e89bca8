"""Multi-label F1 (scikit-learn's, no true positive scoring 0) and the tuned thresholds, against hand counts."""
import numpy as np
import pytest

from abaw_ce.train.metrics import evaluate_multilabel, f1_binary, multilabel_f1, tune_thresholds

# three classes, five rows: a has a false positive and a false negative at 0.5, b is never true, and c's one
# false positive (row 1) is unlabelled
PROBS = np.array([[0.9, 0.1, 0.8], [0.6, 0.1, 0.9], [0.4, 0.3, 0.3], [0.2, 0.2, 0.1], [0.7, 0.1, 0.6]])
TRUTH = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 1]])
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]])


def counted_f1(predicted, truth):
    """2 tp / (2 tp + fp + fn), 0 without a true positive: the definition, counted by hand."""
    tp = np.sum(predicted & truth)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + np.sum(predicted & ~truth) + np.sum(~predicted & truth))


def test_f1_of_a_hand_counted_example():
    # a at 0.5: rows 0, 1 true positives, row 4 a false positive, row 2 a false negative: 4 / (4 + 1 + 1)
    assert f1_binary(PROBS[:, 0], TRUTH[:, 0], 0.5) == pytest.approx(2 / 3)
    assert f1_binary(PROBS[:, 1], TRUTH[:, 1], 0.5) == 0.0  # nothing true, nothing predicted
    assert f1_binary(PROBS[:, 1], TRUTH[:, 1], 0.25) == 0.0  # nothing true, one predicted
    assert f1_binary(np.zeros(0), np.zeros(0), 0.5) == 0.0  # no row at all
    result = multilabel_f1(PROBS, TRUTH, ["a", "b", "c"], MASK)
    # c without row 1: rows 0, 4 true positives, row 2 a false negative: 4 / (4 + 1)
    assert result["per_class"] == pytest.approx({"a": 2 / 3, "b": 0.0, "c": 0.8})
    assert result["mean"] == pytest.approx((2 / 3 + 0.8) / 3)
    # unmasked, row 1 is c's false positive: 4 / (4 + 1 + 1)
    assert multilabel_f1(PROBS, TRUTH, ["a", "b", "c"])["per_class"]["c"] == pytest.approx(2 / 3)
    assert multilabel_f1(PROBS[:, :1], TRUTH[:, :1], ["a"])["per_class"] == pytest.approx({"a": 2 / 3})
    assert multilabel_f1(np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"])["mean"] == 0.0


def test_tuned_thresholds_of_a_hand_counted_example():
    # a: thresholds in (0.2, 0.4] keep every positive and drop the 0.2 negative: F1 6/7, the closest to 0.5 is
    # 0.4; b: every threshold scores 0, so 0.5 stays; c (row 1 unlabelled): (0.1, 0.3] is perfect, 0.3 closest
    assert tune_thresholds(PROBS, TRUTH, MASK).tolist() == [0.4, 0.5, 0.3]
    full = evaluate_multilabel(PROBS, TRUTH, ["a", "b", "c"], MASK)
    assert full["f1_tuned"] == pytest.approx({"a": 6 / 7, "b": 0.0, "c": 1.0})
    assert full["thresholds"] == {"a": 0.4, "b": 0.5, "c": 0.3} and full["samples"] == 5
    assert tune_thresholds(np.zeros((0, 2)), np.zeros((0, 2))).tolist() == [0.5, 0.5]


def test_f1_matches_the_hand_count_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 5))
        probs = np.round(rng.random((n, k)), 1)
        truth = rng.random((n, k)) < rng.choice([0.0, 0.2, 0.6])
        mask = rng.random((n, k)) < 0.8
        names = [str(j) for j in range(k)]
        got = multilabel_f1(probs, truth, names, mask, 0.45)["per_class"]
        for j in range(k):
            keep = mask[:, j]
            assert got[str(j)] == counted_f1(probs[keep, j] >= 0.45, truth[keep, j])

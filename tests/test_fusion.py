"""Pairwise fusion, the common scale of probabilities, gap filling and temporal smoothing."""
import numpy as np
import pytest

from abaw_ce import labels
from abaw_ce.fusion import (WeightedFusion, common_scale, fill_missing, fit_weighted_fusion, fuse, pair_scores,
                            smooth)


def probs_for(*emotions, high=0.9, low=0.1):
    row = np.full(6, low)
    for e in emotions:
        row[labels.BASIC_INDEX[e]] = high
    return row


def test_each_compound_is_found_from_its_two_basic_emotions():
    rows = np.stack([probs_for(a, b) for a, b in labels.CHALLENGE_PAIRS])
    for method in ("sum", "mean", "product", "min"):
        assert fuse(rows, method).tolist() == list(range(7)), method


def test_fusion_rules_differ_as_defined():
    p = np.array([[0.2, 0.0, 0.0, 0.0, 0.0, 0.0]])
    p[0, labels.BASIC_INDEX["fear"]] = 0.6  # Fearfully_Surprised pair = (fear 0.6, surprise 0.2)
    s = {m: pair_scores(p, m)[0, 0] for m in ("sum", "mean", "product", "min")}
    assert s == pytest.approx({"sum": 0.8, "mean": 0.4, "product": 0.12, "min": 0.2})
    # sum and product can disagree: one very confident emotion vs two moderate ones
    q = probs_for("happiness", high=0.0, low=0.0)
    q[labels.BASIC_INDEX["happiness"]], q[labels.BASIC_INDEX["surprise"]] = 0.95, 0.3
    q[labels.BASIC_INDEX["sadness"]], q[labels.BASIC_INDEX["fear"]] = 0.6, 0.6
    assert fuse(q[None], "sum")[0] == 1 and fuse(q[None], "product")[0] == 5
    with pytest.raises(ValueError, match="fusion method"):
        fuse(q[None], "max")
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        fuse(np.zeros((2, 7)))


def test_weighted_fusion_learns_a_class_bias():
    rng = np.random.default_rng(0)
    rows, classes = [], []
    for _ in range(400):
        c = int(rng.integers(7))
        a, b = labels.CHALLENGE_PAIRS[c]
        # class 6 (sadness, anger) is systematically under-confident, so plain sums miss it
        high = 0.42 if c == 6 else 0.8
        row = rng.uniform(0.25, 0.5, 6)
        row[labels.BASIC_INDEX[a]] = high + rng.normal(0, 0.05)
        row[labels.BASIC_INDEX[b]] = high + rng.normal(0, 0.05)
        rows.append(row)
        classes.append(c)
    rows, classes = np.array(rows), np.array(classes)
    plain = (fuse(rows, "sum") == classes).mean()
    fitted = fit_weighted_fusion(rows, classes)
    weighted = (fuse(rows, "weighted", fitted) == classes).mean()
    assert weighted > plain + 0.02
    assert WeightedFusion.from_dict(fitted.to_dict()).weights.tolist() == fitted.weights.tolist()
    with pytest.raises(ValueError, match="7 numbers each"):
        WeightedFusion.from_dict({"weights": [1.0] * 6, "biases": [0.0] * 7})
    with pytest.raises(ValueError, match="weighted fusion needs"):
        fuse(rows, "weighted")


def fusion_loss(fitted, probs, classes, l2=1e-3):
    """The objective fit_weighted_fusion minimises: mean cross-entropy + l2/2 * (|w - 1|^2 + |b|^2)."""
    logits = pair_scores(probs, "weighted", fitted)
    top = logits.max(axis=1)
    log_norm = np.log(np.exp(logits - top[:, None]).sum(axis=1)) + top
    penalty = l2 / 2 * (np.sum((fitted.weights - 1) ** 2) + np.sum(fitted.biases ** 2))
    return float(np.mean(log_norm - logits[np.arange(len(classes)), classes]) + penalty)


def gradient_steps(probs, classes, steps=500, lr=0.05, l2=1e-3):
    """The fit before L-BFGS: 500 full-batch gradient steps on the same objective."""
    sums = pair_scores(probs, "sum")
    onehot = np.eye(7)[classes]
    weights, biases = np.ones(7), np.zeros(7)
    for _ in range(steps):
        logits = sums * weights + biases
        soft = np.exp(logits - logits.max(axis=1, keepdims=True))
        soft /= soft.sum(axis=1, keepdims=True)
        error = (soft - onehot) / len(sums)
        weights = weights - lr * ((error * sums).sum(axis=0) + l2 * (weights - 1))
        biases = biases - lr * (error.sum(axis=0) + l2 * biases)
    return WeightedFusion(weights, biases)


def test_weighted_fusion_reaches_the_optimum_and_separates_a_toy_problem():
    rng = np.random.default_rng(1)
    probs, classes = rng.uniform(0.0, 1.0, (60, 6)), rng.integers(7, size=60)
    fitted = fit_weighted_fusion(probs, classes)
    assert fusion_loss(fitted, probs, classes) <= fusion_loss(gradient_steps(probs, classes), probs, classes)
    # each class's pair well above the other emotions: separable, and the fit labels every row right
    toy_classes = np.repeat(np.arange(7), 5)
    toy = np.stack([probs_for(*labels.CHALLENGE_PAIRS[c], high=rng.uniform(0.6, 0.9), low=rng.uniform(0.0, 0.2))
                    for c in toy_classes])
    assert (fuse(toy, "weighted", fit_weighted_fusion(toy, toy_classes)) == toy_classes).all()
    empty = fit_weighted_fusion(np.zeros((0, 6)), np.zeros(0, np.int64))  # nothing to fit: the plain sum
    assert empty.weights.tolist() == [1.0] * 7 and empty.biases.tolist() == [0.0] * 7
    with pytest.raises(ValueError, match="classes must be"):
        fit_weighted_fusion(probs, np.full(60, 7))


def test_the_common_scale_keeps_each_row_s_fused_class():
    sigmoids = np.stack([probs_for("fear", "surprise", high=0.99, low=0.01), probs_for("happiness"),
                         np.full(6, 0.02), np.zeros(6)])
    scaled = common_scale(sigmoids)
    np.testing.assert_allclose(scaled[:3].sum(axis=1), 1.0)
    np.testing.assert_allclose(scaled[0], sigmoids[0] / 2.02)
    assert (scaled[3] == 0).all()  # nothing to share: stays zero instead of dividing by zero
    for method in ("sum", "mean", "product", "min"):
        assert (fuse(scaled[:3], method) == fuse(sigmoids[:3], method)).all()
    import torch

    torch.testing.assert_close(common_scale(torch.as_tensor(sigmoids)), torch.as_tensor(scaled))


def test_missing_frames_are_interpolated_and_edges_take_the_nearest():
    values = np.array([[0.0], [0.0], [2.0], [0.0], [4.0], [0.0]])
    present = np.array([False, True, True, False, True, False])
    values[1] = 1.0
    filled = fill_missing(values, present)
    assert filled[:, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="no frame"):
        fill_missing(values, np.zeros(6, bool))


def test_filled_gaps_are_np_interp_s_answer_edges_included():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        present = rng.random(n) < rng.choice([0.15, 0.5, 0.9])
        present[rng.integers(n)] = True
        values = np.where(present[:, None], rng.random((n, 6)), np.nan)  # no face: no probabilities
        t, known = np.arange(n), np.flatnonzero(present)
        expected = np.stack([np.interp(t, known, values[known, j]) for j in range(6)], axis=1)
        np.testing.assert_array_equal(fill_missing(values, present), expected)


def test_smoothing_filters():
    step = np.r_[np.zeros(10), np.ones(10)][:, None]
    box = smooth(step, "box", 5)
    assert box[9, 0] == pytest.approx(0.4) and box[0, 0] == 0 and box[-1, 0] == 1
    spike = np.zeros((11, 1))
    spike[5] = 1
    assert smooth(spike, "median", 3).max() == 0
    assert smooth(spike, "gaussian", 8)[5, 0] < 0.5
    assert np.allclose(smooth(np.full((7, 2), 0.3), "gaussian", 9), 0.3)
    short = np.array([[0.2, 0.8], [0.4, 0.6]])
    for method in ("box", "gaussian", "median"):
        assert smooth(short, method, 15).shape == (2, 2)  # shorter than the window
    assert np.array_equal(smooth(short, "none", 5), short)
    with pytest.raises(ValueError, match="smoothing method"):
        smooth(short, "mean", 3)

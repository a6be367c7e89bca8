"""Multi-task track parts on hand examples: CCC, co-annotation, soft co-annotation, distribution matching,
zero-shot compound scores, SJMT's selective loss."""
import numpy as np
import pytest
import torch

from abaw_ce import labels
from abaw_ce.multitask.coupling import (au_mixture, ccc, ccc_loss, co_annotated_aus, co_annotated_expression,
                                        distribution_matching, expression_au_prior, selective_bce,
                                        soft_co_annotation, soft_target_cross_entropy, zero_shot_compound_scores)

AUS = list(labels.CEXPR_AUS)
E = {name: i for i, name in enumerate(labels.SEVEN_EXPRESSIONS)}


def au_row(on, labelled=None):
    values = np.zeros(len(AUS), np.float32)
    mask = np.zeros(len(AUS), bool) if labelled is not None else np.ones(len(AUS), bool)
    for au in on:
        values[AUS.index(au)] = 1
    for au in labelled or ():
        mask[AUS.index(au)] = True
    return values, mask


def test_ccc_against_a_hand_computation():
    # prediction 2, 4, 6 vs target 1, 2, 3: means 4 and 2, variances 8/3 and 2/3, covariance 4/3
    value = ccc(torch.tensor([[2.0], [4.0], [6.0]]), torch.tensor([[1.0], [2.0], [3.0]]))
    assert value.item() == pytest.approx((8 / 3) / (8 / 3 + 2 / 3 + 4), rel=1e-5)
    both = torch.tensor([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    target = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    assert ccc_loss(both, target).item() == pytest.approx(1 - (1 + (2 * 4 / 3) / (8 / 3 + 2 / 3 + 4)) / 2, rel=1e-5)
    assert ccc_loss(both, target, torch.tensor([1, 0, 0])).item() == 0.0  # one labelled row: no spread


def test_co_annotation_of_expression_images():
    targets, weights = co_annotated_aus(np.array([E["happiness"], E["neutral"], -1]))
    assert {AUS[j] for j in np.flatnonzero(targets[0])} == {6, 12, 25}
    assert weights[0, AUS.index(6)] == pytest.approx(0.51) and weights[0, AUS.index(12)] == 1
    assert targets[1:].sum() == 0 and weights[1:].sum() == 0  # neutral and unlabelled: no AU is claimed
    _, ones = co_annotated_aus(np.array([E["happiness"]]), observational="ones")
    assert ones[0, AUS.index(6)] == 1


def test_co_annotation_of_au_images_takes_the_emotion_with_most_required_aus():
    happy = au_row([6, 12, 25])
    happy_and_surprised = au_row([1, 2, 5, 6, 12, 25, 26])
    unsure = au_row([12, 25], labelled=[4, 12, 25])  # AU6 not annotated: happiness cannot be confirmed
    nothing = au_row([])
    values, masks = zip(happy, happy_and_surprised, unsure, nothing)
    found = co_annotated_expression(np.stack(values), np.stack(masks))
    assert found.tolist() == [E["happiness"], E["surprise"], -1, -1]  # surprise needs 5 AUs, happiness 3


def test_soft_co_annotation_matches_the_hand_scores():
    values, mask = au_row([12, 25])
    soft = soft_co_annotation(values[None], mask[None])[0]
    scores = np.zeros(7)
    scores[E["happiness"]] = 2 / 2.51
    scores[E["surprise"]] = 1 / 4.66  # AU25 of 1, 2, 25, 26 and 0.66 AU5
    scores[E["fear"]] = 1 / 5.53  # AU25 of 1, 4, 20, 25, 0.57 AU2, 0.63 AU5, 0.33 AU26
    expected = np.exp(scores) / np.exp(scores).sum()
    np.testing.assert_allclose(soft, expected, rtol=1e-5)
    logits = torch.log(torch.as_tensor(expected))[None]
    entropy = -(expected * np.log(expected)).sum()
    assert soft_target_cross_entropy(logits, torch.as_tensor(soft)[None]).item() == pytest.approx(entropy, rel=1e-4)


def test_distribution_matching_mixture_and_loss():
    prior = expression_au_prior(observational="ones")
    assert prior[E["neutral"]].sum() == 0
    p_expr = torch.zeros(1, 7)
    p_expr[0, E["surprise"]] = p_expr[0, E["fear"]] = 0.5
    q = au_mixture(p_expr, prior)[0]
    assert q[AUS.index(2)].item() == 1.0 and q[AUS.index(20)].item() == 0.5 and q[AUS.index(12)].item() == 0
    p_au = torch.zeros(1, len(AUS))
    p_au[0, AUS.index(20)] = 0.8
    assert distribution_matching(p_au, q[None]).item() == pytest.approx(-0.8 * np.log(0.5), rel=1e-5)


def test_zero_shot_scores_on_a_hand_example():
    p_expr = np.zeros((1, 7))
    p_expr[0, E["happiness"]], p_expr[0, E["surprise"]], p_expr[0, E["fear"]] = 0.5, 0.3, 0.2
    p_au = np.full((1, len(AUS)), 0.5)
    scores = zero_shot_compound_scores(p_expr, p_au, valence=np.array([0.4]))
    hs = labels.CEXPR_COMPOUNDS.index("Happily_Surprised")
    fs = labels.CEXPR_COMPOUNDS.index("Fearfully_Surprised")
    assert scores[0, hs] == pytest.approx(0.5 + 0.8 + 1.0)  # AU term (all AUs at 0.5) + pair + positive valence
    assert scores[0, fs] == pytest.approx(0.5 + 0.5)
    assert scores[0].argmax() == hs
    negative = zero_shot_compound_scores(p_expr, p_au, valence=np.array([-0.4]))
    assert negative[0, hs] == pytest.approx(0.5 + 0.8)
    p_au[0, AUS.index(20)] = 1.0  # a fear-only AU lifts the fear compounds, not Happily_Surprised
    lifted = zero_shot_compound_scores(p_expr, p_au)
    assert lifted[0, fs] == pytest.approx(4 / 7 + 0.5) and lifted[0, hs] == pytest.approx(0.5 + 0.8)


def test_selective_bce_ignores_labels_outside_the_samples_dataset():
    logits = torch.zeros(2, 4, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    loss = selective_bce(logits, targets, mask)
    assert loss.item() == pytest.approx(2 * np.log(2), rel=1e-6)  # per sample: 2 labels of log 2 each
    loss.backward()
    assert (logits.grad[mask == 0] == 0).all() and (logits.grad[mask == 1] != 0).all()
    moved = logits.detach().clone()
    moved[0, 2:] = 9.0  # labels outside sample 0's dataset: the loss does not change
    assert selective_bce(moved, targets, mask).item() == pytest.approx(loss.item())


def test_mml_statistics_and_alignment_loss_on_a_hand_example():
    from abaw_ce.multitask.alignment import alignment_loss, au_statistics

    # two expressions, two AUs; AU 1 unannotated on the third image
    expressions = np.array([0, 0, 0, 1, -1])
    values = np.array([[1, 0], [1, 1], [0, np.nan], [0, 1], [1, 1]], dtype=np.float32)
    mask = ~np.isnan(values)
    stats = au_statistics(expressions, values, mask, 2)
    np.testing.assert_allclose(stats, [[2 / 3, 1 / 2], [0, 1]])
    p_expr = torch.tensor([[1.0, 0.0]])
    p_au = torch.tensor([[0.5, 0.5]])
    total, parts = alignment_loss(p_expr, p_au, stats)
    sig = 1 / (1 + np.exp(-np.array([2 / 3, 1 / 2])))
    dm1 = -(0.5 * np.log(sig[0]) + 0.5 * np.log(sig[1]))
    q_expr0 = (0.5 * 2 / 3 + 0.5 * 1 / 2) / (2 / 3 + 1 / 2)
    dm2 = -np.log(q_expr0)
    assert parts["dm1"].item() == pytest.approx(dm1, rel=1e-5) and parts["dm2"].item() == pytest.approx(dm2, rel=1e-5)
    assert total.item() == pytest.approx(dm1 + dm2, rel=1e-5)


def test_grouped_batch_order_gives_every_batch_its_shares_and_covers_every_group():
    from abaw_ce.train.sampling import GroupedBatchOrder

    va, expr, au = np.arange(0, 50), np.arange(50, 250), np.arange(250, 280)
    order = GroupedBatchOrder([va, expr, au], batch_size=16, seed=3)
    assert sum(order.shares) == 16 and order.shares == [3, 11, 2]  # 50:200:30, at least one each
    keys = list(order)
    assert len(keys) == len(order) == order.batches * 16 and {e for e, _ in keys} == {0}
    indices = np.array([i for _, i in keys]).reshape(order.batches, 16)
    for batch in indices:
        assert [np.isin(batch, g).sum() for g in (va, expr, au)] == order.shares
    for group in (va, expr, au):
        assert set(group) <= set(indices.ravel())  # one epoch covers every group
    assert [i for _, i in GroupedBatchOrder([va, expr, au], 16, seed=3)] == [i for _, i in keys]  # deterministic
    order.set_epoch(1)
    assert [i for _, i in order] != [i for _, i in keys] and {e for e, _ in order} == {1}
    with pytest.raises(ValueError, match="cannot hold"):
        GroupedBatchOrder([va, expr, au], batch_size=2, seed=0)

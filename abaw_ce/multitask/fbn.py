"""FaceBehaviorNet (Kollias et al., "Face Behavior à la carte"): one network, heads for valence-arousal
(tanh, loss 1 - CCC), the 7 expressions (softmax, cross-entropy) and the 17 AUs (sigmoid, BCE masked to the
annotated AUs), trained on batches that join VA-, expression- and AU-labelled images, with switchable
coupling: co-annotation, soft co-annotation and distribution matching.

The engine sees one (B, 2 + 7 + 17) output: valence and arousal, the expression logits, the AU logits. The
targets carry 7 more columns, the soft co-annotation label of AU images (masked where there is none). The
network (``FaceBehaviorNet``) and its output layout are ``abaw_ce.models.multitask``'s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from abaw_ce import labels
from abaw_ce.data.table import au_arrays, va_arrays
from abaw_ce.models import multitask as nets
from abaw_ce.multitask.coupling import (au_mixture, ccc, ccc_loss, co_annotated_aus, co_annotated_expression,
                                        distribution_matching, expression_au_prior, soft_co_annotation,
                                        soft_target_cross_entropy, zero_shot_compound_scores)
from abaw_ce.train.losses import masked_mean

EXPRESSIONS, AU_NAMES = nets.EXPRESSIONS, nets.AU_NAMES
OUTPUTS, VA, EXPR, AU = nets.FBN_OUTPUTS, nets.FBN_VA, nets.FBN_EXPR, nets.FBN_AU
SOFT = slice(AU.stop, AU.stop + len(EXPRESSIONS))  # targets only: the soft co-annotation label
BASIC_IN_EXPR = [EXPRESSIONS.index(e) for e in labels.BASIC_EMOTIONS]
# A softmax emotion counts as shown at >= 0.25 (half of a compound's 0.5 share), as in C-EXPR-NET.
EXPRESSION_THRESHOLD = 0.25
TASKS = ("va", "expr", "au")


def probabilities(outputs: torch.Tensor) -> torch.Tensor:
    return torch.cat([outputs[:, VA], outputs[:, EXPR].softmax(dim=1), torch.sigmoid(outputs[:, AU])], dim=1)


@dataclass(frozen=True)
class Coupling:
    co_annotation: bool = False
    soft_co_annotation: bool = False
    distribution_matching: bool = False
    observational: str = "weighted"  # the prior's observational AUs in co-annotation and soft co-annotation


def expression_index(table: pd.DataFrame) -> np.ndarray:
    """Index into ``EXPRESSIONS`` of each row's basic emotion or neutral, -1 otherwise."""
    names = [labels.normalise_name(e) for e in table["expression"].fillna("").astype(str)]
    lookup = {labels.normalise_name(e): i for i, e in enumerate(EXPRESSIONS)}
    return np.array([lookup.get(n, -1) for n in names], dtype=np.int64)


def fbn_targets(table: pd.DataFrame, coupling: Coupling = Coupling()) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2 + 7 + 17 + 7) targets and masks (a mask entry is the loss weight: 0 = unlabelled).

    Expressions: a basic emotion or neutral one-hot, a compound 0.5 on each of its pair; Other and contempt
    have none. Co-annotation adds the prior's AUs of an expression image (observational ones weighted by the
    annotators' agreement) where the image has no AU label, and the expression of an AU image whose AUs
    match one; soft co-annotation adds the soft expression label of every AU image."""
    n = len(table)
    targets = np.zeros((n, SOFT.stop), dtype=np.float32)
    masks = np.zeros_like(targets)
    targets[:, VA], has_va = va_arrays(table)
    masks[:, VA] = has_va[:, None]
    names = table["expression"].fillna("").astype(str).tolist()
    for i, name in enumerate(names):
        if not name or labels.expression_kind(name) == "non_basic" and labels.normalise_name(name) != "neutral":
            continue
        if labels.normalise_name(name) == "neutral":
            targets[i, EXPR.start + EXPRESSIONS.index("neutral")] = 1.0
        else:
            target = labels.multilabel_target(name)
            targets[i, EXPR.start + np.array(BASIC_IN_EXPR)] = target / target.sum()
        masks[i, EXPR] = 1.0
    au_values, au_mask = au_arrays(table, "cexpr")
    targets[:, AU], masks[:, AU] = au_values, au_mask
    if coupling.co_annotation:
        index = expression_index(table)
        co_targets, co_weights = co_annotated_aus(index, labels.CEXPR_AUS, coupling.observational)
        fill = (co_weights > 0) & ~au_mask
        au_targets, au_weights = targets[:, AU], masks[:, AU]  # views: writing them writes the arrays
        au_targets[fill] = co_targets[fill]
        au_weights[fill] = co_weights[fill]
        au_rows = au_mask.any(axis=1) & (masks[:, EXPR.start] == 0)
        found = co_annotated_expression(au_values, au_mask, labels.CEXPR_AUS)
        for i in np.flatnonzero(au_rows & (found >= 0)):
            targets[i, EXPR.start + found[i]] = 1.0
            masks[i, EXPR] = 1.0
    if coupling.soft_co_annotation:
        rows = au_mask.any(axis=1)
        targets[rows, SOFT] = soft_co_annotation(au_values[rows], au_mask[rows], labels.CEXPR_AUS,
                                                 coupling.observational)
        masks[rows, SOFT] = 1.0
    return targets, masks


def task_groups(masks: np.ndarray) -> dict[str, np.ndarray]:
    """Rows by the set they come from for batch composition: VA-labelled, else expression, else AU."""
    has_va, has_expr, has_au = masks[:, VA].any(1), masks[:, EXPR].any(1), masks[:, AU].any(1)
    groups = {"va": np.flatnonzero(has_va), "expr": np.flatnonzero(~has_va & has_expr),
              "au": np.flatnonzero(~has_va & ~has_expr & has_au)}
    return {k: v for k, v in groups.items() if len(v)}


@dataclass(frozen=True)
class FbnWeights:
    au: float = 1.0    # lambda1
    va: float = 1.0    # lambda2
    soft: float = 1.0  # soft co-annotation
    dm: float = 1.0    # distribution matching


def fbn_loss(outputs: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, coupling: Coupling,
             weights: FbnWeights, prior: torch.Tensor | np.ndarray) -> torch.Tensor:
    """L_Emo + lambda1 L_AU + lambda2 (1 - CCC) (eq. 1), plus the switched-on coupling terms."""
    has_expr = masks[:, EXPR.start] > 0
    total = soft_target_cross_entropy(outputs[:, EXPR], targets[:, EXPR], has_expr)
    au_weight = masks[:, AU].float()
    bce = F.binary_cross_entropy_with_logits(outputs[:, AU].float(), targets[:, AU].float(), reduction="none")
    total = total + weights.au * masked_mean(bce, au_weight, floor=1e-8)
    total = total + weights.va * ccc_loss(outputs[:, VA], targets[:, VA], masks[:, VA.start] > 0)
    if coupling.soft_co_annotation:
        total = total + weights.soft * soft_target_cross_entropy(outputs[:, EXPR], targets[:, SOFT],
                                                                 masks[:, SOFT.start] > 0)
    if coupling.distribution_matching:
        q = au_mixture(outputs[:, EXPR].float().softmax(dim=1), prior)
        total = total + weights.dm * distribution_matching(torch.sigmoid(outputs[:, AU].float()), q)
    return total


def fbn_prior() -> np.ndarray:
    """p(AU | expression) of distribution matching: 1 for prototypical and observational AUs (the paper)."""
    return expression_au_prior(labels.CEXPR_AUS, "ones")


def va_ccc(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray) -> float | None:
    """Mean CCC over valence and arousal on the rows that have them (None with fewer than two)."""
    rows = masks[:, VA.start] > 0
    if rows.sum() < 2:
        return None
    return float(ccc(torch.as_tensor(probs[rows, VA]), torch.as_tensor(targets[rows, VA])).mean())


def zero_shot(probs: np.ndarray) -> np.ndarray:
    """(N, 12) zero-shot compound scores from the three heads' outputs (valence sign for the happily ones)."""
    return zero_shot_compound_scores(probs[:, EXPR], probs[:, AU], probs[:, VA.start])

"""Losses and targets of the multi-task track that need no network: the concordance correlation coefficient
(1 - CCC over valence and arousal), FaceBehaviorNet's coupling of expressions and AUs (co-annotation, soft
co-annotation, distribution matching), its zero-shot compound scores, and SJMT's dataset-wise selective
sigmoid cross-entropy.

Expressions are the 7 of ``labels.SEVEN_EXPRESSIONS`` (neutral has no AU in the prior); AUs are the columns
of a given AU set (17 by default); the emotion→AU prior is ``labels.EMOTION_AU_PRIOR``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from abaw_ce import labels
from abaw_ce.train.losses import masked_mean


def ccc(prediction: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Concordance correlation coefficient of each column of (N, D) predictions and targets -> (D,)."""
    prediction, target = prediction.float(), target.float()
    mp, mt = prediction.mean(0), target.mean(0)
    vp, vt = prediction.var(0, unbiased=False), target.var(0, unbiased=False)
    covariance = ((prediction - mp) * (target - mt)).mean(0)
    return 2 * covariance / (vp + vt + (mp - mt) ** 2 + eps)


def ccc_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - the mean CCC over valence and arousal, on the rows with a label (``mask`` (N,)); 0 with fewer than
    two labelled rows (a CCC needs a spread)."""
    if mask is not None:
        keep = mask.bool()
        prediction, target = prediction[keep], target[keep]
    if len(prediction) < 2:
        return prediction.sum() * 0.0
    return 1.0 - ccc(prediction, target).mean()


def expression_au_prior(au_ids: Sequence[int] = labels.CEXPR_AUS, observational: str = "weighted",
                        expressions: Sequence[str] = labels.SEVEN_EXPRESSIONS) -> np.ndarray:
    """(E, A) prior p(AU | expression) over ``expressions`` (rows of neutral and other states are zero)."""
    prior = np.zeros((len(expressions), len(au_ids)), dtype=np.float32)
    for e, name in enumerate(expressions):
        for au, weight in labels.expression_aus(name, observational).items():
            if au in au_ids:
                prior[e, list(au_ids).index(au)] = weight
    return prior


def co_annotated_aus(expressions: np.ndarray, au_ids: Sequence[int] = labels.CEXPR_AUS,
                     observational: str = "weighted") -> tuple[np.ndarray, np.ndarray]:
    """Co-annotation of expression-labelled images: (N, A) AU targets (1 on the expression's prototypical and
    observational AUs) and (N, A) loss weights (1 for prototypical, the annotators' agreement for
    observational under ``weighted``; 0 elsewhere: the other AUs stay unlabelled). ``expressions`` are indices
    into ``labels.SEVEN_EXPRESSIONS``, -1 for none."""
    prior = expression_au_prior(au_ids, observational)
    expressions = np.asarray(expressions, dtype=np.int64)
    weights = np.zeros((len(expressions), len(au_ids)), dtype=np.float32)
    has = expressions >= 0
    weights[has] = prior[expressions[has]]
    return (weights > 0).astype(np.float32), weights


def co_annotated_expression(au_values: np.ndarray, au_mask: np.ndarray,
                            au_ids: Sequence[int] = labels.CEXPR_AUS) -> np.ndarray:
    """Co-annotation of AU-labelled images: the index (into ``labels.SEVEN_EXPRESSIONS``) of the emotion whose
    prototypical and observational AUs are all annotated and present, the one requiring most AUs when several
    are; -1 when none is."""
    required = expression_au_prior(au_ids, "ones") > 0  # (E, A)
    present = (np.asarray(au_values) >= 0.5) & np.asarray(au_mask).astype(bool)
    out = np.full(len(present), -1, dtype=np.int64)
    best = np.zeros(len(present), dtype=np.int64)
    for e in range(required.shape[0]):
        need = required[e]
        if not need.any():
            continue
        all_there = present[:, need].all(axis=1)
        count = int(need.sum())
        better = all_there & (count > best)
        out[better], best[better] = e, count
    return out


def soft_co_annotation(au_values: np.ndarray, au_mask: np.ndarray, au_ids: Sequence[int] = labels.CEXPR_AUS,
                       observational: str = "weighted") -> np.ndarray:
    """Soft co-annotation: (N, 7) expression distributions from AU labels. Each emotion scores the weighted
    share of its prototypical and observational AUs that are present, e.g. happiness (AU12 + AU25 + 0.51 AU6)
    / 2.51, over the AUs the image has labels for; neutral scores 0; a softmax over the scores gives the soft
    label."""
    prior = expression_au_prior(au_ids, observational)  # (E, A)
    values = np.nan_to_num(np.asarray(au_values, np.float32)) * np.asarray(au_mask, np.float32)
    labelled = np.asarray(au_mask, np.float32)
    scored = values @ prior.T
    possible = labelled @ prior.T
    scores = np.divide(scored, possible, out=np.zeros_like(scored), where=possible > 0)
    return torch.softmax(torch.as_tensor(scores), dim=1).numpy()


def soft_target_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor,
                              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows (``mask`` (N,) selects them, over every process's batch) of
    -sum_k t_k log softmax(logits)_k; 0 when no row is selected."""
    per_row = -(soft_targets.float() * F.log_softmax(logits.float(), dim=1)).sum(1)
    return per_row.mean() if mask is None else masked_mean(per_row, mask)


def au_mixture(p_expr: torch.Tensor, prior: np.ndarray | torch.Tensor) -> torch.Tensor:
    """q(AU | x) = sum_e p(e | x) p(AU | e) / sum_e p(e | x) (FaceBehaviorNet's eq. 2) for (N, E) p_expr."""
    prior = torch.as_tensor(prior, dtype=p_expr.dtype, device=p_expr.device)
    return (p_expr @ prior) / p_expr.sum(1, keepdim=True).clamp(min=1e-8)


def distribution_matching(p_au: torch.Tensor, q_au: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """FaceBehaviorNet's eq. 3: mean over images of sum_i -p(AU_i | x) log q(AU_i | x)."""
    return -(p_au.float() * q_au.float().clamp(min=eps).log()).sum(1).mean()


def zero_shot_compound_scores(p_expr: np.ndarray, p_au: np.ndarray, valence: np.ndarray | None = None,
                              compounds: Sequence[str] = labels.CEXPR_COMPOUNDS,
                              expressions: Sequence[str] = labels.SEVEN_EXPRESSIONS,
                              au_ids: Sequence[int] = labels.CEXPR_AUS,
                              observational: str = "ones") -> np.ndarray:
    """(N, C) zero-shot scores: per compound, the normalised sum of its AUs' predicted probabilities (the
    union of its pair's prior AUs), plus the two basic probabilities of its pair, plus, for the 'happily'
    classes, 0.5 (sign(valence) + 1) when a valence is given. The prediction is the argmax."""
    p_expr, p_au = np.asarray(p_expr, np.float64), np.asarray(p_au, np.float64)
    index = {name: i for i, name in enumerate(expressions)}
    scores = np.zeros((len(p_expr), len(compounds)))
    for c, name in enumerate(compounds):
        weights = np.zeros(len(au_ids))
        for au, w in labels.expression_aus(name, observational).items():
            if au in au_ids:
                weights[list(au_ids).index(au)] = w
        a, b = labels.COMPOUND_PAIRS[labels.CEXPR_CLASSES[labels.compound_index(name)]]
        scores[:, c] = (p_au @ weights) / max(weights.sum(), 1e-8) + p_expr[:, index[a]] + p_expr[:, index[b]]
        if valence is not None and "happiness" in (a, b):
            scores[:, c] += 0.5 * (np.sign(np.asarray(valence, np.float64)) + 1)
    return scores


def selective_bce(logits: torch.Tensor, targets: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """SJMT's dataset-wise selective sigmoid cross-entropy: each sample's BCE summed over the labels its
    dataset defines (``label_mask`` (N, L), 1 = in the sample's label space), averaged over samples."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return (bce * label_mask.float()).sum(1).mean()

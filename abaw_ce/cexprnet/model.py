"""C-EXPR-NET's loss: alpha1 * KL expressions + alpha2 * masked AU BCE + alpha3 * distribution matching
(eq. 6). The network (``CExprNet``: a backbone's feature map into an Expression block and an AU block with
cross-modality attention) is ``abaw_ce.models.cexprnet``'s.

The expression head can also be one of the paper's Table-4 baselines: ``sigmoid`` (6 multi-label sigmoids,
binary cross-entropy) or ``multiclass`` (softmax over the 12 C-EXPR-DB compounds + Other, cross-entropy)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from abaw_ce.cexprnet.modules import au_from_expressions, distribution_matching_loss, expression_kl_loss
from abaw_ce.models.cexprnet import EXPR_HEADS, basic_probabilities
from abaw_ce.train.losses import masked_mean


@dataclass(frozen=True)
class LossWeights:
    """alpha1..alpha3 of eq. 6; a zero weight switches its term off (the ablation rows)."""
    expr: float = 1.0
    au: float = 1.0
    dist: float = 1.0


def cexprnet_loss(outputs: dict[str, torch.Tensor], expr_target: torch.Tensor, expr_mask: torch.Tensor,
                  au_target: torch.Tensor, au_mask: torch.Tensor, prior: np.ndarray | torch.Tensor,
                  weights: LossWeights = LossWeights(), head: str = "kl"
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eq. 6 on a batch: the expression term over rows with an expression label (``expr_mask`` (B,)): KL
    (eq. 1) for the ``kl`` head, binary cross-entropy for ``sigmoid``, cross-entropy for ``multiclass``; BCE
    over the labelled AU entries (``au_mask`` (B, A)); distribution matching over every row (6-way heads
    only). Returns (total, detached per-term values; tensors, so that logging decides when to sync)."""
    logits = outputs["expr_logits"]
    zero = logits.sum() * 0.0
    # Every term is a mean over labelled rows or entries counted over all processes (losses.masked_mean), and
    # every process reaches each count's all-reduce on every step, labelled rows or not.
    has_expr = expr_mask.float()
    if head == "kl":
        l_expr = expression_kl_loss(logits, expr_target, has_expr)
    elif head == "sigmoid":
        per_row = F.binary_cross_entropy_with_logits(logits.float(), expr_target.float(), reduction="none")
        l_expr = masked_mean(per_row.mean(dim=1), has_expr)
    elif head == "multiclass":
        l_expr = masked_mean(F.cross_entropy(logits.float(), expr_target.float(), reduction="none"), has_expr)
    else:
        raise ValueError(f"unknown expression head {head!r}; expected one of {EXPR_HEADS}")
    bce = F.binary_cross_entropy_with_logits(outputs["au_logits"].float(), au_target.float(), reduction="none")
    l_au = masked_mean(bce, au_mask.float())
    if weights.dist > 0:
        q_au = au_from_expressions(basic_probabilities(logits, head), prior)
        l_dist = distribution_matching_loss(torch.sigmoid(outputs["au_logits"].float()), q_au)
    else:
        l_dist = zero
    total = weights.expr * l_expr + weights.au * l_au + weights.dist * l_dist
    return total, {"expr": l_expr.detach(), "au": l_au.detach(), "dist": l_dist.detach()}

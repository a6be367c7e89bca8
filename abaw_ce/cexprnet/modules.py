"""C-EXPR-NET's losses: the KL expression loss (eq. 1) with its targets, and distribution matching (eqs. 4-5).
The network's modules (AU semantic encoder, cross-modality attention) are ``abaw_ce.models.cexprnet``'s."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from abaw_ce import labels
from abaw_ce.train.losses import masked_mean


def kl_targets(names: Sequence[str]) -> np.ndarray:
    """The 6-way target distribution of expression names: one-hot for a basic emotion, 0.5 on each emotion
    of a compound's pair (the paper's data augmentation module). Other names raise: they have no target."""
    out = np.zeros((len(names), len(labels.BASIC_EMOTIONS)), dtype=np.float32)
    for row, name in enumerate(names):
        target = labels.multilabel_target(name)
        if target.sum() == 0:
            raise ValueError(f"{name!r} is neither a basic emotion nor a compound: no expression target")
        out[row] = target / target.sum()
    return out


def expression_kl_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Eq. 1: mean over images of KL(y || softmax(logits)), with 0 log 0 = 0; with ``mask`` (B,), over the
    images it marks, counted over every process (``losses.masked_mean``)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    per_image = F.kl_div(log_p, targets.float(), reduction="none").sum(dim=-1)
    return per_image.mean() if mask is None else masked_mean(per_image, mask)


def au_from_expressions(p_expr: torch.Tensor, prior: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Eq. 4: q_AU[i] = sum_expr p_expr * P(AU_i | expr), for (B, 6) probabilities and a (6, A) prior."""
    prior = torch.as_tensor(prior, dtype=p_expr.dtype, device=p_expr.device)
    return p_expr @ prior


def distribution_matching_loss(p_au: torch.Tensor, q_au: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 5: cross-entropy with p_AU as the soft target of q_AU, averaged over AUs and images."""
    q = q_au.float().clamp(eps, 1 - eps)
    p = p_au.float()
    return -(p * q.log() + (1 - p) * (1 - q).log()).mean()

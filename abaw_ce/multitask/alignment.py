"""MML's alignment loss (Li et al., "Compound Expression Recognition In-the-wild with AU-assisted Meta
Multi-task Learning"): in-the-wild AU statistics p(AU_j | expression_k), the first distribution matching
(q_AU from expression predictions through sigmoid-adjusted statistics, eqs. 5-6) and the second (q_expr from
AU predictions, eqs. 7-8); L_AM = L_DM1 + L_DM2 (eq. 9)."""
from __future__ import annotations

import numpy as np
import torch


def au_statistics(expressions: np.ndarray, au_values: np.ndarray, au_mask: np.ndarray, n_expressions: int
                  ) -> np.ndarray:
    """(E, A) frequency of each AU among the images of each expression, over the images where that AU is
    annotated; 0 where an expression has no such image. ``expressions`` are class indices, -1 for none."""
    expressions = np.asarray(expressions, dtype=np.int64)
    values = np.nan_to_num(np.asarray(au_values, np.float64)) >= 0.5
    mask = np.asarray(au_mask).astype(bool)
    stats = np.zeros((n_expressions, values.shape[1]), dtype=np.float32)
    for k in range(n_expressions):
        rows = expressions == k
        labelled = mask[rows].sum(axis=0)
        present = (values[rows] & mask[rows]).sum(axis=0)
        stats[k] = np.divide(present, labelled, out=np.zeros(values.shape[1]), where=labelled > 0)
    return stats


def alignment_loss(p_expr: torch.Tensor, p_au: torch.Tensor, stats: np.ndarray | torch.Tensor,
                   eps: float = 1e-6) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_AM for (B, E) expression probabilities and (B, A) AU probabilities: DM1 = -sum_j p_AU log q_AU with
    q_AU = p_expr @ sigmoid(stats); DM2 = -sum_k p_expr log q_expr with q_expr = (p_AU @ stats^T) / the
    row sums of stats. Each averaged over the batch; returns (L_DM1 + L_DM2, the two terms)."""
    stats = torch.as_tensor(stats, dtype=p_expr.dtype, device=p_expr.device)
    q_au = p_expr @ torch.sigmoid(stats)
    dm1 = -(p_au * q_au.clamp(min=eps).log()).sum(1).mean()
    q_expr = (p_au @ stats.T) / stats.sum(1).clamp(min=eps)
    dm2 = -(p_expr * q_expr.clamp(min=eps).log()).sum(1).mean()
    return dm1 + dm2, {"dm1": dm1.detach(), "dm2": dm2.detach()}

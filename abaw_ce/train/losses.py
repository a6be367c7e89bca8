"""Losses of the fine-tuning stages: the seed paper's weighted BCE (eq. 1), masked AU BCE, multi-label
mixup and the distillation term; ``masked_mean``, the one normalisation every masked loss uses."""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def inverse_frequency_weights(targets: np.ndarray, names: Sequence[str], mask: np.ndarray | None = None
                              ) -> np.ndarray:
    """W_j proportional to 1 / (share of positives of class j), normalised to mean 1 over the classes seen.

    A class without a positive example gets weight 1 (with a warning) instead of an infinite weight.
    """
    targets = np.asarray(targets, dtype=np.float64)
    valid = np.ones_like(targets) if mask is None else np.asarray(mask, dtype=np.float64)
    counts = valid.sum(axis=0)
    positives = (targets * valid).sum(axis=0)
    share = np.divide(positives, counts, out=np.zeros_like(positives), where=counts > 0)
    seen = share > 0
    weights = np.ones(targets.shape[1])
    if seen.any():
        inverse = 1.0 / share[seen]
        weights[seen] = inverse / inverse.mean()
    for name in np.asarray(names)[~seen]:
        log.warning("class %r has no positive example in the training data; its loss weight is set to 1 "
                    "(inverse frequency would be infinite)", name)
    return weights


def _processes() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def masked_mean(values: torch.Tensor, mask: torch.Tensor, floor: float = 1.0) -> torch.Tensor:
    """sum(values * mask) / sum(mask), where the count sums the masks of every process's batch.

    DDP averages the gradients over its P processes; each process's batch has its own count of labelled
    entries, so dividing by the local count would weight them unequally. Each process divides its sum by
    (global count / P) instead: the DDP average then is the gradient of the masked mean of the global batch,
    and the per-process losses average to it too. One process: the local masked mean. ``floor`` bounds the
    global count from below (a batch with no labelled entry gives 0). Every process must call this on every
    step (the count is all-reduced).
    """
    mask = mask.to(values)
    total = (values * mask).sum()
    count = mask.detach().sum()
    processes = _processes()
    if processes > 1:
        torch.distributed.all_reduce(count)
    return total / (count.clamp(min=floor) / processes)


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Equation (1) of the seed paper: -(1/C) sum_j W_j [y_j log p_j + (1 - y_j) log(1 - p_j)], batch mean.

    With ``mask`` (1 = labelled) only labelled entries count, averaged over the labelled entries.
    """
    per_entry = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if weights is not None:
        per_entry = per_entry * weights.to(per_entry)
    if mask is None:
        return per_entry.mean()
    return masked_mean(per_entry, mask)


def masked_bce_pos_weight(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                          pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """AU loss: BCE with per-AU positive weights, unlabelled (-1 / NaN) entries masked out."""
    per_entry = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none",
                                                   pos_weight=None if pos_weight is None else pos_weight.to(logits.device).float())
    return masked_mean(per_entry, mask)


def pos_weights(targets: np.ndarray, mask: np.ndarray, cap: float = 20.0) -> np.ndarray:
    """negatives / positives per class over labelled entries, capped; 1 where a class has no positive."""
    targets, mask = np.asarray(targets, np.float64), np.asarray(mask, np.float64)
    positives = (targets * mask).sum(axis=0)
    negatives = ((1 - targets) * mask).sum(axis=0)
    ratio = np.divide(negatives, positives, out=np.ones_like(positives), where=positives > 0)
    return np.clip(ratio, 1.0 / cap, cap)


def binary_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Distillation: BCE to the teacher's probabilities minus the teacher's own entropy (mean over entries).

    It has the gradient of a soft-target BCE and is exactly zero when the student predicts the teacher.
    """
    logits = student_logits.float()
    p = teacher_probs.float().clamp(1e-6, 1 - 1e-6)
    cross = F.binary_cross_entropy_with_logits(logits, p, reduction="none")
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    return (cross - entropy).mean()


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float, generator: np.random.Generator,
          mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """Multi-label mixup: x = l x_i + (1 - l) x_perm(i), same l for the target vectors, l ~ Beta(alpha, alpha).

    Masks (labelled entries) combine with AND: a mixed entry counts only when both parents are labelled.
    Returns (images, targets, mask, l).
    """
    lam = float(generator.beta(alpha, alpha))
    perm = torch.from_numpy(generator.permutation(images.shape[0])).to(images.device)
    mixed_images = images * lam + images[perm] * (1 - lam)
    mixed_targets = targets * lam + targets[perm] * (1 - lam)
    mixed_mask = None if mask is None else mask * mask[perm]
    return mixed_images, mixed_targets, mixed_mask, lam

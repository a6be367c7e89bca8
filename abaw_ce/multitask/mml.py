"""Meta multi-task learning (Li et al., "Compound Expression Recognition In-the-wild with AU-assisted Meta
Multi-task Learning"): an expression classifier and an AU classifier on a shared backbone, the alignment loss
L_AM (``alignment.py``), and a meta network that gives each sample its weights for the AU loss and for the
alignment loss, learnt through the base network's one-step update:

(i) meta-train: theta* = theta - alpha * grad_theta L_MTL(theta, omega(psi));
(ii) meta-test: psi <- psi - beta * grad_psi L_val(theta*), the expression loss on a meta-validation batch
     (a second-order gradient, through theta*, computed with ``torch.func.functional_call``);
(iii) base-learning: L_MTL with the updated meta network's weights, for the usual update of theta.

The engine sees one (B, 7 + 17) output: expression logits, then AU logits. The base network (``MMLNet``) and
its output layout are ``abaw_ce.models.multitask``'s.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import Dataset, default_collate

from abaw_ce import labels
from abaw_ce.data.table import au_arrays
from abaw_ce.models import multitask as nets
from abaw_ce.models.multitask import MMLNet
from abaw_ce.multitask.alignment import au_statistics
from abaw_ce.train.losses import masked_mean

EXPRESSIONS, AU_NAMES = nets.EXPRESSIONS, nets.AU_NAMES
OUTPUTS, EXPR, AU = nets.MML_OUTPUTS, nets.MML_EXPR, nets.MML_AU
BASIC_IN_EXPR = [EXPRESSIONS.index(e) for e in labels.BASIC_EMOTIONS]


class MetaWeightNet(nn.Module):
    """Features -> (B, 2) per-sample weights (AU loss, alignment loss), each in [0, 1] (a sigmoid). With
    ``hidden=0`` the paper's meta net: one linear layer whose parameters start at zero (every weight 0.5)."""

    def __init__(self, width: int, hidden: int = 0):
        super().__init__()
        if hidden > 0:
            self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))
        else:
            self.mlp = nn.Sequential(nn.Linear(width, 2))
            nn.init.zeros_(self.mlp[0].weight)
            nn.init.zeros_(self.mlp[0].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(features))


def mml_targets(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(N, 7 + 17) targets and masks: a basic emotion or neutral one-hot, a compound 0.5 on each of its pair
    (Other and contempt: none); the annotated AUs."""
    targets = np.zeros((len(table), AU.stop), dtype=np.float32)
    masks = np.zeros_like(targets)
    for i, name in enumerate(table["expression"].fillna("").astype(str)):
        if not name:
            continue
        if labels.normalise_name(name) == "neutral":
            targets[i, EXPRESSIONS.index("neutral")] = 1.0
        elif labels.expression_kind(name) != "non_basic":
            target = labels.multilabel_target(name)
            targets[i, BASIC_IN_EXPR] = target / target.sum()
        else:
            continue
        masks[i, EXPR] = 1.0
    targets[:, AU], masks[:, AU] = au_arrays(table, "cexpr")
    return targets, masks


def merge_same_images(table: pd.DataFrame) -> pd.DataFrame:
    """One row per image (path, frame): the labels of rows that name the same image joined (e.g. Aff-Wild2's
    EXPR and AU files of one frame), so that AU statistics per expression can be counted."""
    key = table["path"].astype(str) + "#" + table["frame"].astype(str)
    if not key.duplicated().any():
        return table
    grouped = table.groupby(key, sort=False)
    merged = grouped.first()  # the first non-null value of each column: AUs, targets, valence-arousal
    merged["expression"] = grouped["expression"].agg(lambda s: next((e for e in s if e), ""))
    merged["cexpr_class"] = grouped["cexpr_class"].max()
    merged["challenge_class"] = grouped["challenge_class"].max()
    merged["has_target"] = grouped["has_target"].any()
    return merged.reset_index(drop=True)


def statistics_from(table: pd.DataFrame, targets: np.ndarray, masks: np.ndarray) -> np.ndarray | None:
    """(7, 17) p(AU | expression) counted on the rows with a one-hot expression and AU labels; None when no
    row has both."""
    one_hot = (masks[:, EXPR.start] > 0) & (targets[:, EXPR].max(axis=1) == 1.0)
    index = np.where(one_hot, targets[:, EXPR].argmax(axis=1), -1)
    au_mask = masks[:, AU] > 0
    if not (one_hot & au_mask.any(axis=1)).any():
        return None
    return au_statistics(index, targets[:, AU], au_mask, len(EXPRESSIONS))


def per_sample_losses(outputs: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                      stats: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,) expression cross-entropy (0 without a label), AU BCE over the labelled AUs (0 without any), and
    alignment loss DM1 + DM2."""
    has_expr = masks[:, EXPR.start].float()
    log_p = F.log_softmax(outputs[:, EXPR].float(), dim=1)
    l_emo = -(targets[:, EXPR].float() * log_p).sum(1) * has_expr
    au_mask = masks[:, AU].float()
    bce = F.binary_cross_entropy_with_logits(outputs[:, AU].float(), targets[:, AU].float(), reduction="none")
    l_au = (bce * au_mask).sum(1) / au_mask.sum(1).clamp(min=1)
    p_expr, p_au = log_p.exp(), torch.sigmoid(outputs[:, AU].float())
    q_au = p_expr @ torch.sigmoid(stats)
    q_expr = (p_au @ stats.T) / stats.sum(1).clamp(min=eps)
    l_am = (-(p_au * q_au.clamp(min=eps).log()).sum(1) - (p_expr * q_expr.clamp(min=eps).log()).sum(1))
    return l_emo, l_au, l_am


def weighted_loss(outputs: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, stats: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """L_MTL (eq. 12) averaged over the batch: L_emo + omega_AU L_AU + omega_AM L_AM per sample."""
    l_emo, l_au, l_am = per_sample_losses(outputs, targets, masks, stats)
    return (l_emo + weights[:, 0] * l_au + weights[:, 1] * l_am).mean()


def meta_step(net: MMLNet, meta_net: MetaWeightNet, meta_optimizer: torch.optim.Optimizer,
              outputs: torch.Tensor, features: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
              val_images: torch.Tensor, val_targets: torch.Tensor, val_masks: torch.Tensor, stats: torch.Tensor,
              inner_lr: float) -> torch.Tensor:
    """Steps (i) and (ii): the one-step update theta* under the meta network's weights, the expression loss
    of a meta-validation batch under theta*, and one update of the meta network through it. ``outputs`` and
    ``features`` are the base network's, still in the graph of theta. Returns the meta-validation loss (with
    several processes, this process's share: their mean is the loss of the global meta-validation batch)."""
    params = {name: p for name, p in net.named_parameters() if p.requires_grad}
    weights = meta_net(features.detach())
    inner = weighted_loss(outputs, targets, masks, stats, weights)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True, retain_graph=True,
                                allow_unused=True)
    updated = {name: p - inner_lr * g if g is not None else p for (name, p), g in zip(params.items(), grads)}
    val_outputs = functional_call(net, updated, (val_images,))
    net.last_features = features  # the functional call overwrote them
    l_emo, _, _ = per_sample_losses(val_outputs, val_targets, val_masks, stats)
    val_loss = masked_mean(l_emo, val_masks[:, EXPR.start])  # averaged over processes below
    meta_optimizer.zero_grad(set_to_none=True)
    val_loss.backward(inputs=list(meta_net.parameters()), retain_graph=True)
    average_over_processes(list(meta_net.parameters()))
    meta_optimizer.step()
    return val_loss.detach()


def average_over_processes(params: list[nn.Parameter]) -> None:
    """The meta network is not wrapped for data parallelism: average its gradients over the processes
    ourselves, so that every process keeps the same meta network."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


class MetaBatches:
    """Meta-validation batches drawn as a pure function of the training batch they go with (its sample
    indices and the seed), so that a resumed run draws the same ones as an uninterrupted run."""

    def __init__(self, samples: Dataset, batch_size: int, seed: int):
        self.samples, self.batch_size, self.seed = samples, int(batch_size), int(seed)

    def __len__(self) -> int:
        return len(self.samples)  # type: ignore[arg-type]

    def draw(self, train_indices: torch.Tensor) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, *(int(i) for i in train_indices.flatten().tolist())])
        chosen = rng.choice(len(self), size=min(self.batch_size, len(self)), replace=False)
        return default_collate([self.samples[int(i)] for i in chosen])

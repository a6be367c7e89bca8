"""C-EXPR-NET building blocks: AU semantic encoder, cross-modality attention (eq. 2), the KL expression loss
(eq. 1) with its targets, and distribution matching (eqs. 4-5)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from abaw_ce import labels
from abaw_ce.train.losses import masked_mean


class AUSemanticEncoder(nn.Module):
    """Token = word + segment + position embedding; an intra-AU transformer over each description's tokens,
    masked mean pooling, then an inter-AU transformer over the descriptor embeddings -> (A, dim)."""

    def __init__(self, vocab_size: int, dim: int = 128, max_tokens: int = 80, max_segments: int = 8,
                 intra_layers: int = 2, inter_layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.word = nn.Embedding(vocab_size, dim)
        self.segment = nn.Embedding(max_segments, dim)
        self.position = nn.Embedding(max_tokens, dim)
        self.norm = nn.LayerNorm(dim)

        def encoder(layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        self.intra = encoder(intra_layers)
        self.inter = encoder(inter_layers)

    def forward(self, ids: torch.Tensor, segments: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word(ids) + self.segment(segments) + self.position(positions)[None])
        x = self.intra(x, src_key_padding_mask=mask == 0)
        weights = mask.unsqueeze(-1).to(x.dtype)
        descriptors = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.inter(descriptors[None])[0]


def cross_modality_attention(features: torch.Tensor, au_embeddings: torch.Tensor, eps: float = 1e-6
                             ) -> torch.Tensor:
    """Eq. 2: a[b, i, j] = ReLU(cos(V_j, E_i)) / sum_j ReLU(cos(V_j, E_i)).

    ``features`` (B, L, D) at L locations, ``au_embeddings`` (A, D) already projected to D. Where no location
    has a positive cosine the map is uniform, so every map is non-negative and sums to 1.
    """
    cos = F.normalize(features, dim=-1) @ F.normalize(au_embeddings, dim=-1).T  # (B, L, A)
    positive = F.relu(cos).transpose(1, 2)  # (B, A, L)
    total = positive.sum(-1, keepdim=True)
    uniform = torch.full_like(positive, 1.0 / positive.shape[-1])
    return torch.where(total > eps, positive / total.clamp(min=eps), uniform)


class CrossModalityAUHead(nn.Module):
    """AU embeddings projected to the feature width, eq. 2 attention over the AU block's locations,
    attention-weighted pooling, one sigmoid classifier per AU (logits returned)."""

    def __init__(self, feature_dim: int, text_dim: int, num_aus: int = len(labels.CEXPR_AUS)):
        super().__init__()
        self.project = nn.Linear(text_dim, feature_dim)
        self.weight = nn.Parameter(torch.empty(num_aus, feature_dim))
        self.bias = nn.Parameter(torch.zeros(num_aus))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, feature_map: torch.Tensor, au_embeddings: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, H, W) features -> (B, A) AU logits and (B, A, H*W) attention maps."""
        locations = feature_map.flatten(2).transpose(1, 2)  # (B, HW, D)
        attention = cross_modality_attention(locations, self.project(au_embeddings))
        pooled = attention @ locations  # (B, A, D)
        return (pooled * self.weight).sum(-1) + self.bias, attention


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

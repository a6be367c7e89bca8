"""C-EXPR-NET: a backbone's feature map feeds an Expression block (softmax over the 6 basic emotions) and an
AU block whose locations are weighted per AU by cross-modality attention with the AU semantic embeddings;
the loss is alpha1 * KL expressions + alpha2 * masked AU BCE + alpha3 * distribution matching (eq. 6).

The expression head can also be one of the paper's Table-4 baselines: ``sigmoid`` (6 multi-label sigmoids,
binary cross-entropy) or ``multiclass`` (softmax over the 12 C-EXPR-DB compounds + Other, cross-entropy).
The same network reads a log-mel spectrogram window (one input channel) for the audio track."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from abaw_ce import labels
from abaw_ce.cexprnet.au_text import EncodedDescriptions
from abaw_ce.cexprnet.modules import (AUSemanticEncoder, CrossModalityAUHead, au_from_expressions,
                                      distribution_matching_loss, expression_kl_loss)
from abaw_ce.errors import OptionError
from abaw_ce.train.losses import masked_mean


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut: the paper's 'resnet block'."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = (nn.Identity() if in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class VitFeatureMap(nn.Module):
    """Our ViT encoder as a (B, D, h, w) feature map: its patch tokens, class token dropped, on the grid."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.grid = vit.patch_embed.grid_size
        self.num_features = vit.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)


class TimmFeatureMap(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_features = model.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


EXPR_HEADS = ("kl", "sigmoid", "multiclass")


def expression_outputs(head: str) -> int:
    """Width of the expression head: the 6 basic emotions, or the 13 C-EXPR-DB classes for ``multiclass``."""
    if head not in EXPR_HEADS:
        raise OptionError(f"model.expr_head must be one of {EXPR_HEADS}, got {head!r}")
    return len(labels.CEXPR_CLASSES) if head == "multiclass" else len(labels.BASIC_EMOTIONS)


def basic_probabilities(expr_logits: torch.Tensor, head: str) -> torch.Tensor:
    """(B, 6) basic-emotion distribution of a 6-way head (softmax, or normalised sigmoids)."""
    if head == "kl":
        return F.softmax(expr_logits.float(), dim=-1)
    if head == "sigmoid":
        p = torch.sigmoid(expr_logits.float())
        return p / p.sum(dim=-1, keepdim=True).clamp(min=1e-6)
    raise ValueError(f"the {head!r} expression head has no basic-emotion distribution")


def build_backbone(spec: str, img_size: int, in_chans: int = 3) -> tuple[nn.Module, dict]:
    """``timm:<name>`` (randomly initialised: nothing is downloaded) or a path to our encoder export / a
    foreign MAE checkpoint (``abaw_ce.models.export.load_encoder``). Returns the module (it has
    ``num_features``) and what ``rebuild_backbone`` needs: {"kind": "timm", "name", "in_chans"} or
    {"kind": "vit", "arch", "mean", "std"}. ``in_chans`` 1 is the audio track's spectrogram input."""
    if spec.startswith("timm:"):
        import timm

        model = timm.create_model(spec[5:], pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
        return TimmFeatureMap(model), {"kind": "timm", "name": spec[5:], "in_chans": int(in_chans)}
    if in_chans != 3:
        raise OptionError(f"model.backbone={spec}: only a timm:<name> backbone takes {in_chans}-channel input "
                          f"(the audio track); use e.g. model.backbone=timm:resnet18")
    from abaw_ce.models.export import load_encoder

    vit, meta = load_encoder(Path(spec), img_size=img_size)
    return VitFeatureMap(vit), {"kind": "vit", "arch": meta["arch"].to_dict(), "mean": list(meta["mean"]),
                                "std": list(meta["std"]), "source": str(spec)}


def rebuild_backbone(info: dict) -> nn.Module:
    """The same backbone, freshly initialised, from ``build_backbone``'s description (for loading exports)."""
    if info["kind"] == "timm":
        import timm

        return TimmFeatureMap(timm.create_model(info["name"], pretrained=False, num_classes=0, global_pool="",
                                                in_chans=int(info.get("in_chans", 3))))
    from abaw_ce.models.vit import VitArch, build_vit

    return VitFeatureMap(build_vit(VitArch(**info["arch"]), pooled_norm=True))


class CExprNet(nn.Module):
    """Returns {"expr_logits": (B, E), "au_logits": (B, A), "attention": (B, A, h*w)}; E = 6, or 13 for the
    ``multiclass`` head."""

    def __init__(self, backbone: nn.Module, descriptions: EncodedDescriptions, vocab_size: int,
                 block_dim: int = 256, text_dim: int = 128, text_heads: int = 4, text_layers: int = 2,
                 expr_outputs: int = len(labels.BASIC_EMOTIONS)):
        super().__init__()
        self.backbone = backbone
        channels = backbone.num_features
        self.expr_block = ResidualBlock(channels, block_dim)
        self.expr_head = nn.Linear(block_dim, expr_outputs)
        self.au_block = ResidualBlock(channels, block_dim)
        self.text = AUSemanticEncoder(vocab_size, text_dim, max_tokens=descriptions.ids.shape[1],
                                      max_segments=int(descriptions.segments.max()) + 1,
                                      intra_layers=text_layers, inter_layers=text_layers, heads=text_heads)
        self.au_head = CrossModalityAUHead(block_dim, text_dim, num_aus=descriptions.ids.shape[0])
        for name in ("ids", "segments", "mask"):
            self.register_buffer(f"text_{name}", torch.as_tensor(getattr(descriptions, name)), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(images)
        expr = self.expr_head(self.expr_block(features).mean(dim=(2, 3)))
        au_embeddings = self.text(self.text_ids, self.text_segments, self.text_mask)
        au_logits, attention = self.au_head(self.au_block(features), au_embeddings)
        return {"expr_logits": expr, "au_logits": au_logits, "attention": attention}


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

"""The C-EXPR-NET network and its exports: a backbone's feature map feeds an Expression block (softmax over the
6 basic emotions) and an AU block whose locations are weighted per AU by cross-modality attention (eq. 2) with
the AU semantic embeddings (an intra-AU then an inter-AU transformer over the tokenized AU descriptions).

The expression head can also be one of the paper's Table-4 baselines: ``sigmoid`` (6 multi-label sigmoids) or
``multiclass`` (softmax over the 12 C-EXPR-DB compounds + Other). The same network reads a log-mel spectrogram
window (one input channel) for the audio track. Its losses and training are the track's
(``abaw_ce.cexprnet``).

An export folder holds ``model.safetensors``, ``cexprnet.json`` (kind "cexprnet") and the AU description
tokenizer; ``load_export`` reads it as the expression branch's basic-emotion probabilities.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from abaw_ce import labels
from abaw_ce.errors import InputError, OptionError
from abaw_ce.files import atomic_write_json
from abaw_ce.models.au_text import EncodedDescriptions, encode, load_tokenizer
from abaw_ce.models.backbones import rebuild_backbone
from abaw_ce.models.registry import register_kind

KIND = "cexprnet"
MODEL_FILE, META_FILE, TOKENIZER_FILE = "model.safetensors", "cexprnet.json", "tokenizer.json"
EXPR_HEADS = ("kl", "sigmoid", "multiclass")


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


class CExprNetExpressions(nn.Module):
    """A C-EXPR-NET's expression branch as (B, 6) probabilities (softmax of the KL head, sigmoids of the
    multi-label sigmoid head), for fusion with the other track."""

    def __init__(self, net: nn.Module, head: str = "kl"):
        super().__init__()
        self.net, self.head = net, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)["expr_logits"].float()
        return torch.sigmoid(logits) if self.head == "sigmoid" else logits.softmax(dim=1)


def save_export(out: Path, net: CExprNet, meta: dict[str, Any], tokenizer) -> None:
    """Weights (float32), the tokenizer and ``meta`` (with ``kind``) into the export folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / MODEL_FILE))
    tokenizer.save(str(out / TOKENIZER_FILE))
    atomic_write_json(out / META_FILE, {"kind": KIND, **meta})


def load_cexprnet(path: str | Path) -> tuple[CExprNet, dict[str, Any]]:
    """A C-EXPR-NET export folder -> (model in eval mode, its metadata)."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise InputError(path, f"not a C-EXPR-NET export (no {META_FILE})")
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(path / TOKENIZER_FILE)
    m = meta["model"]
    net = CExprNet(rebuild_backbone(meta["backbone"]), encode(tokenizer, max_tokens=m["max_tokens"]),
                   tokenizer.get_vocab_size(), m["block_dim"], m["text_dim"], m["text_heads"], m["text_layers"],
                   expression_outputs(meta.get("expr_head", "kl")))
    net.load_state_dict(load_file(str(path / MODEL_FILE)))
    return net.eval(), meta


def load_basic_emotions(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The registry's loader: the expression branch's basic-emotion probabilities. A multi-class head, or one
    whose outputs are not the basic emotions in the kit's order, is refused."""
    net, meta = load_cexprnet(path)
    head = meta.get("expr_head", "kl")
    if head == "multiclass":
        raise InputError(path, "a multi-class C-EXPR-NET (13 classes, no basic-emotion "
                               "probabilities) cannot join the pairwise fusion; it serves the "
                               "ablation only")
    if list(meta["expression_labels"]) != list(labels.BASIC_EMOTIONS):
        raise InputError(path, f"model outputs {meta['expression_labels']}; expected the basic "
                               f"emotions in the kit's order (refusing to mix label orders)")
    return CExprNetExpressions(net, head).eval(), {
        **meta, "modality": meta.get("modality", "visual"), "audio": meta.get("audio"), "scores": "probabilities"}


register_kind(KIND, load_basic_emotions, META_FILE)

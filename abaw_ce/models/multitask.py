"""The multi-task networks and their exports: SJMT's pooled head (one sigmoid output layer over the 7
expressions then the 17 C-EXPR-DB AUs), FaceBehaviorNet (valence-arousal, expression and AU heads) and MML's
network (expression and AU classifiers). Their losses and training are the track's (``abaw_ce.multitask``).

An export folder holds ``model.safetensors`` and ``multitask.json`` (kind "multitask"); ``load_export`` reads
it as the 6 basic-emotion probabilities (SJMT's sigmoids, the basic columns of the others' 7-way softmax).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from abaw_ce import labels
from abaw_ce.errors import InputError
from abaw_ce.files import atomic_write_json
from abaw_ce.models.backbones import rebuild_backbone
from abaw_ce.models.registry import register_kind

KIND = "multitask"
MODEL_FILE, META_FILE = "model.safetensors", "multitask.json"
EXPRESSIONS = labels.SEVEN_EXPRESSIONS
AU_NAMES = tuple(f"AU{n}" for n in labels.CEXPR_AUS)
# SJMT's outputs: the 7 expressions, then the AUs.
OUTPUTS = EXPRESSIONS + AU_NAMES
N_EXPR = len(EXPRESSIONS)
# Where each of the 6 basic emotions sits among the 7 expressions (make_submission's order).
BASIC_COLUMNS = [EXPRESSIONS.index(e) for e in labels.BASIC_EMOTIONS]
# FaceBehaviorNet's outputs: valence and arousal (tanh), the expression logits, the AU logits.
FBN_OUTPUTS = ("valence", "arousal") + EXPRESSIONS + AU_NAMES
FBN_VA, FBN_EXPR = slice(0, 2), slice(2, 2 + len(EXPRESSIONS))
FBN_AU = slice(FBN_EXPR.stop, FBN_EXPR.stop + len(AU_NAMES))
# MML's outputs: the expression logits, then the AU logits.
MML_OUTPUTS = EXPRESSIONS + AU_NAMES
MML_EXPR, MML_AU = slice(0, len(EXPRESSIONS)), slice(len(EXPRESSIONS), len(EXPRESSIONS) + len(AU_NAMES))


class PooledHead(nn.Module):
    """A backbone's feature map, averaged over locations, into one linear layer over every output."""

    def __init__(self, backbone: nn.Module, outputs: int = len(OUTPUTS)):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images).mean(dim=(2, 3)))


class FaceBehaviorNet(nn.Module):
    """A backbone's pooled features into three heads: tanh valence-arousal, expression and AU logits."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        width = backbone.num_features
        self.va = nn.Linear(width, 2)
        self.expr = nn.Linear(width, len(EXPRESSIONS))
        self.au = nn.Linear(width, len(AU_NAMES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images).mean(dim=(2, 3))
        return torch.cat([torch.tanh(self.va(features)), self.expr(features), self.au(features)], dim=1)


class MMLNet(nn.Module):
    """Backbone -> pooled features -> expression and AU classifiers; keeps the last features for the meta
    network (so that the engine's forward pass is not repeated)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.expr = nn.Linear(backbone.num_features, len(EXPRESSIONS))
        self.au = nn.Linear(backbone.num_features, len(AU_NAMES))
        self.last_features: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images).mean(dim=(2, 3))
        self.last_features = features
        return torch.cat([self.expr(features), self.au(features)], dim=1)


class BasicEmotionProbabilities(nn.Module):
    """A multi-task network as (B, 6) basic-emotion probabilities for make_submission: SJMT's sigmoids, or
    the basic columns of FaceBehaviorNet's 7-way softmax."""

    def __init__(self, net: nn.Module, method: str = "sjmt"):
        super().__init__()
        self.net, self.method = net, method
        self.expr = {"fbn": FBN_EXPR, "mml": MML_EXPR}.get(method)
        columns = BASIC_COLUMNS if method == "sjmt" else [EXPRESSIONS.index(e) for e in labels.BASIC_EMOTIONS]
        self.register_buffer("columns", torch.tensor(columns), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(images).float()
        if self.method == "sjmt":
            return torch.sigmoid(out[:, self.columns])
        return out[:, self.expr].softmax(dim=1)[:, self.columns]


def save_export(out: Path, net: nn.Module, meta: dict[str, Any]) -> None:
    """Weights (float32) and ``meta`` (with ``kind``) into the export folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / MODEL_FILE))
    atomic_write_json(out / META_FILE, {"kind": KIND, **meta})


def load_multitask(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A multi-task export folder -> (network in eval mode returning its raw outputs, metadata)."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise InputError(path, f"not a multi-task export (no {META_FILE})")
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    backbone = rebuild_backbone(meta["backbone"])
    builders = {"fbn": FaceBehaviorNet, "mml": MMLNet}
    net = (builders[meta["method"]](backbone) if meta["method"] in builders
           else PooledHead(backbone, len(meta["outputs"])))
    net.load_state_dict(load_file(str(path / MODEL_FILE)))
    return net.eval(), meta


def load_basic_emotions(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The registry's loader: the network's 6 basic-emotion probabilities (images only)."""
    net, meta = load_multitask(path)
    return BasicEmotionProbabilities(net, meta["method"]).eval(), {
        **meta, "modality": "visual", "audio": None, "scores": "probabilities"}


register_kind(KIND, load_basic_emotions, META_FILE)

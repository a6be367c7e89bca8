"""Backbones as (B, D, h, w) feature maps for the C-EXPR-NET and multi-task networks: a timm model, or our ViT
encoder (an encoder export or a foreign MAE checkpoint) whose patch tokens are laid out on their grid."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn

from abaw_ce.errors import OptionError
from abaw_ce.models.export import load_encoder
from abaw_ce.models.vit import VitArch, build_vit


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


def build_backbone(spec: str, img_size: int, in_chans: int = 3) -> tuple[nn.Module, dict]:
    """``timm:<name>`` (randomly initialised: nothing is downloaded) or a path to our encoder export / a
    foreign MAE checkpoint (``abaw_ce.models.export.load_encoder``). Returns the module (it has
    ``num_features``) and what ``rebuild_backbone`` needs: {"kind": "timm", "name", "in_chans"} or
    {"kind": "vit", "arch", "mean", "std"}. ``in_chans`` 1 is the audio track's spectrogram input."""
    if spec.startswith("timm:"):
        model = timm.create_model(spec[5:], pretrained=False, num_classes=0, global_pool="", in_chans=in_chans)
        return TimmFeatureMap(model), {"kind": "timm", "name": spec[5:], "in_chans": int(in_chans)}
    if in_chans != 3:
        raise OptionError(f"model.backbone={spec}: only a timm:<name> backbone takes {in_chans}-channel input "
                          f"(the audio track); use e.g. model.backbone=timm:resnet18")
    vit, meta = load_encoder(Path(spec), img_size=img_size)
    return VitFeatureMap(vit), {"kind": "vit", "arch": meta["arch"].to_dict(), "mean": list(meta["mean"]),
                                "std": list(meta["std"]), "source": str(spec)}


def rebuild_backbone(info: dict) -> nn.Module:
    """The same backbone, freshly initialised, from ``build_backbone``'s description (for loading exports)."""
    if info["kind"] == "timm":
        return TimmFeatureMap(timm.create_model(info["name"], pretrained=False, num_classes=0, global_pool="",
                                                in_chans=int(info.get("in_chans", 3))))
    return VitFeatureMap(build_vit(VitArch(**info["arch"]), pooled_norm=True))

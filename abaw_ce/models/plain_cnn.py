"""A small plain CNN registered in timm as ``abaw_plain_cnn``: ``model.backbone=timm:abaw_plain_cnn``.

Stages of two 3x3 conv-BN-ReLU at full resolution, each followed by a 2x2 max-pool, then global average pooling
and a linear head. Unlike timm's ImageNet designs it does not downsample 4x in a stem: on small, low-resolution
faces the expression lives in a few pixels around the brows and mouth, and with little labelled data a net of
half a million weights generalises better than a ResNet of five to eleven million (``benchmarks/
demo_learnability.py``). It is meant for the CPU demo and small-data trials; on real data use a pretrained
backbone. Being a timm model, every path of the kit (fold runs, C-EXPR-NET feature maps, exports, inference)
builds it by name.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import register_model
from torch import nn

NAME = "abaw_plain_cnn"
PRETRAINED_CFG = {"architecture": NAME, "input_size": (3, 64, 64), "mean": (0.5, 0.5, 0.5),
                  "std": (0.25, 0.25, 0.25), "interpolation": "bilinear", "crop_pct": 1.0, "classifier": "fc",
                  "num_classes": 0}


def _stage(in_chans: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for chans in (in_chans, width):
        layers += [nn.Conv2d(chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class PlainCnn(nn.Module):
    """timm's classifier interface: ``forward_features`` (a feature map), ``forward_head``, ``num_features``,
    ``get_classifier``/``reset_classifier``; ``num_classes=0`` gives pooled features, ``global_pool=""`` maps."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 128), num_classes: int = 1000, in_chans: int = 3,
                 global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        chans = [in_chans, *widths]
        self.features = nn.Sequential(*(_stage(a, b) for a, b in zip(chans, chans[1:])))
        self.num_features = self.head_hidden_size = int(widths[-1])
        self.global_pool = global_pool
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = int(num_classes)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = self.default_cfg = dict(PRETRAINED_CFG, num_classes=int(num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.global_pool = global_pool
        self.num_classes = int(num_classes)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


@register_model
def abaw_plain_cnn(pretrained: bool = False, **kwargs) -> PlainCnn:
    """Four stages of 32, 64, 128, 128 channels (about 0.5 M weights); no pretrained weights exist."""
    if pretrained:
        raise ValueError(f"{NAME} has no pretrained weights; pass model.weights=<file> to start from your own")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory passes these
        kwargs.pop(key, None)
    return PlainCnn(**kwargs)

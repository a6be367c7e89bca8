"""The ViT encoder every stage shares: timm's ``VisionTransformer`` with a fixed 2D sin-cos position table.

Sizes follow the ViT/MAE naming. The pretraining encoder keeps timm's per-token final ``norm``; exports are
loaded with average pooling and ``fc_norm`` (see ``abaw_ce.models.export``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from abaw_ce.errors import OptionError

VIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}
# Heads per width for checkpoints that do not say (the standard ViT widths).
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class VitArch:
    """Everything needed to rebuild the encoder; stored in every export's JSON."""
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise OptionError(f"ViT {name} must be a positive integer, got {value!r}")
        if self.img_size % self.patch_size:
            raise OptionError(f"image size {self.img_size} is not a multiple of the patch size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise OptionError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % 4:
            raise OptionError(f"embed_dim {self.embed_dim} must be a multiple of 4 for the 2D sin-cos table")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VitArch:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ViT architecture fields {unknown}; expected {sorted(known)}")
        return cls(**dict(data))


def vit_arch(size: str = "base", img_size: int = 224, patch_size: int = 16, **overrides: Any) -> VitArch:
    """A named size with optional overrides (``None`` values keep the size's default)."""
    if size not in VIT_SIZES:
        raise OptionError(f"ViT size must be one of {sorted(VIT_SIZES)}, got {size!r}")
    params: dict[str, Any] = {**VIT_SIZES[size], "img_size": img_size, "patch_size": patch_size}
    params.update({k: v for k, v in overrides.items() if v is not None})
    return VitArch(**params)


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(len(positions), dim): sines of position x frequency in the first half, cosines in the second."""
    if dim % 2:
        raise ValueError(f"1D sin-cos dimension must be even, got {dim}")
    freqs = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed table, (1, [1 +] grid_h*grid_w, dim), tokens in row-major order.

    The first half of each vector encodes the column, the second half the row (MAE's layout, so imported
    checkpoints line up); the class token's row is zeros.
    """
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    table = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table], dim=0)
    return table.float().unsqueeze(0)


def build_vit(arch: VitArch, pooled_norm: bool = True, num_classes: int = 0, **kwargs: Any) -> VisionTransformer:
    """timm ViT with a class token and average pooling.

    ``pooled_norm=True`` is the downstream layout (LayerNorm after pooling, ``fc_norm``);
    ``pooled_norm=False`` keeps the per-token final ``norm`` that MAE pretraining reconstructs from.
    """
    model = VisionTransformer(
        img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio, qkv_bias=True, class_token=True,
        global_pool="avg", fc_norm=pooled_norm, num_classes=num_classes,
        norm_layer=partial(nn.LayerNorm, eps=LAYER_NORM_EPS), **kwargs)
    with torch.no_grad():
        model.pos_embed.copy_(sincos_2d(arch.embed_dim, arch.grid, arch.grid))
    model.pos_embed.requires_grad_(False)
    return model


def set_fused_attention(model: nn.Module, fused: bool) -> int:
    """Switch every timm attention layer between SDPA (fused) and the explicit softmax path; returns the count."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "qkv"):
            module.fused_attn = bool(fused)
            count += 1
    return count


def vit_flops_per_image(arch: VitArch, tokens: int | None = None) -> float:
    """Forward multiply-adds x 2 of the transformer blocks for ``tokens`` tokens (default: all patches + cls)."""
    n = arch.num_patches + 1 if tokens is None else tokens
    d = arch.embed_dim
    hidden = int(d * arch.mlp_ratio)
    per_block = 2 * n * d * (3 * d) + 2 * n * n * d * 2 + 2 * n * d * d + 2 * n * d * hidden * 2
    return float(per_block * arch.depth)


def grid_size(num_tokens: int, prefix: int = 1) -> int:
    side = math.isqrt(num_tokens - prefix)
    if side * side != num_tokens - prefix:
        raise ValueError(f"{num_tokens - prefix} position tokens do not form a square grid")
    return side

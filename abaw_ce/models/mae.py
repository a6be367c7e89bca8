"""Masked autoencoder (He et al., 2022) around the shared timm ViT encoder.

The encoder sees only the visible 25 % of patches; a light decoder with its own fixed sin-cos table
reconstructs every patch, and the loss is the mean squared error over the masked patches only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from abaw_ce.errors import OptionError
from abaw_ce.models.vit import LAYER_NORM_EPS, VitArch, build_vit, sincos_2d


@dataclass(frozen=True)
class DecoderArch:
    embed_dim: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads or self.embed_dim % 4:
            raise OptionError(f"decoder embed_dim {self.embed_dim} must be divisible by num_heads "
                              f"{self.num_heads} and by 4")
        if self.depth < 1:
            raise OptionError(f"decoder depth must be at least 1, got {self.depth}")


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L, patch*patch*3), patches row-major, pixels (row, col, channel) inside."""
    return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)


def unpatchify(patches: torch.Tensor, patch: int, grid: int) -> torch.Tensor:
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid, w=grid, p=patch, q=patch)


def random_masking(tokens: torch.Tensor, keep: int, noise: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``keep`` tokens with the lowest noise in each sample.

    Returns the kept tokens (B, keep, D), the mask (B, L; 1 = removed, in the original order) and
    ``ids_restore`` (B, L), the permutation that puts the shuffled sequence back in order.
    """
    batch, length, dim = tokens.shape
    if noise.shape != (batch, length):
        raise ValueError(f"mask noise must have shape {(batch, length)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, length, device=tokens.device, dtype=tokens.dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore


class MaskedAutoencoder(nn.Module):
    def __init__(self, arch: VitArch, decoder: DecoderArch = DecoderArch(), mask_ratio: float = 0.75,
                 norm_pix_loss: bool = True):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise OptionError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.arch, self.decoder_arch = arch, decoder
        self.mask_ratio, self.norm_pix_loss = float(mask_ratio), bool(norm_pix_loss)
        self.num_keep = int(arch.num_patches * (1 - mask_ratio))
        if self.num_keep < 1:
            raise OptionError(f"mask_ratio {mask_ratio} leaves no visible patch of {arch.num_patches}")
        self.encoder = build_vit(arch, pooled_norm=False)
        self.decoder_embed = nn.Linear(arch.embed_dim, decoder.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder.embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(decoder.embed_dim, arch.grid, arch.grid),
                             persistent=False)
        norm = partial(nn.LayerNorm, eps=LAYER_NORM_EPS)
        self.decoder_blocks = nn.Sequential(*[
            Block(decoder.embed_dim, decoder.num_heads, decoder.mlp_ratio, qkv_bias=True, norm_layer=norm)
            for _ in range(decoder.depth)])
        self.decoder_norm = norm(decoder.embed_dim)
        self.decoder_pred = nn.Linear(decoder.embed_dim, arch.patch_size ** 2 * 3)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAE's initialisation: xavier for linear layers and the patch projection, N(0, 0.02) for tokens.
        def init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.apply(init)
        proj = self.encoder.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        # Read by timm's optimizer factory: tokens and position tables are not decayed (biases/norms neither).
        return {"encoder.cls_token", "encoder.pos_embed", "mask_token"}

    def config(self) -> dict:
        return {"arch": self.arch.to_dict(), "decoder": asdict(self.decoder_arch), "mask_ratio": self.mask_ratio,
                "norm_pix_loss": self.norm_pix_loss}

    def forward_encoder(self, images: torch.Tensor, noise: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        enc = self.encoder
        tokens = enc.patch_embed(images) + enc.pos_embed[:, 1:, :]
        tokens, mask, ids_restore = random_masking(tokens, self.num_keep, noise)
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
        tokens = enc.blocks(torch.cat([cls, tokens], dim=1))
        return enc.norm(tokens), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        batch, length = ids_restore.shape
        fill = self.mask_token.expand(batch, length + 1 - x.shape[1], -1)
        shuffled = torch.cat([x[:, 1:, :], fill], dim=1)
        ordered = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1, :], ordered], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:, :])

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        target = patchify(images, self.arch.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_patch = (pred.float() - self.targets(images).float()).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss, pred (B, L, p*p*3), mask (B, L)). ``noise`` (B, L) fixes the mask; uniform if None."""
        if noise is None:
            noise = torch.rand(images.shape[0], self.arch.num_patches, device=images.device)
        latent, mask, ids_restore = self.forward_encoder(images, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.loss(images, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (normalised space) of (masked input, reconstruction with the visible patches pasted back)."""
        p, grid = self.arch.patch_size, self.arch.grid
        original = patchify(images, p).float()
        pred = pred.float()
        if self.norm_pix_loss:
            # Predictions are per-patch standardised; undo it with each patch's own statistics to display.
            mean = original.mean(dim=-1, keepdim=True)
            std = (original.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
            pred = pred * std + mean
        m = mask.float().unsqueeze(-1)
        masked = unpatchify(original * (1 - m), p, grid)
        pasted = unpatchify(original * (1 - m) + pred * m, p, grid)
        return masked, pasted

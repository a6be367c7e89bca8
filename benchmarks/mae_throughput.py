"""MAE pretraining throughput: our training step against a plain baseline, measured in the same run.

ours:     timm blocks with fused scaled-dot-product attention; the loss stays on the device (no host sync).
baseline: the same model with the explicit softmax attention path and a ``loss.item()`` after every step.

Both run forward + backward + AdamW on random images, alternating in rounds so machine noise hits both.
On a GPU it also reports model FLOPs utilisation against the card's peak dense bf16 rate.

    python benchmarks/mae_throughput.py                         # CPU-sized default (ViT-tiny, 112 px)
    python benchmarks/mae_throughput.py --size base --img-size 224 --batch 256 --precision bf16   # GPU
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_ce.models.mae import DecoderArch, MaskedAutoencoder  # noqa: E402
from abaw_ce.models.vit import VitArch, set_fused_attention, vit_arch, vit_flops_per_image  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 154.8, "4090": 165.2}


def train_flops_per_image(arch: VitArch, decoder: DecoderArch, keep: int) -> float:
    """Forward + backward (x3) FLOPs: encoder on the visible tokens, decoder on all tokens."""
    dec = VitArch(img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=decoder.embed_dim,
                  depth=decoder.depth, num_heads=decoder.num_heads, mlp_ratio=decoder.mlp_ratio)
    return 3.0 * (vit_flops_per_image(arch, tokens=keep + 1) + vit_flops_per_image(dec))


def make_step(model, optimizer, images, precision: str, device: torch.device, sync_every_step: bool):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> torch.Tensor:
        autocast = (torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
        with autocast:
            loss, _, _ = model(images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if sync_every_step:
            loss.item()
        return loss

    return step


def timed(step, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.detach().float().cpu()  # one sync at the end
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--depth", type=int, default=None, help="override the encoder depth")
    parser.add_argument("--decoder-depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="card's peak for MFU (default: by name)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    arch = vit_arch(args.size, img_size=args.img_size, patch_size=args.patch, depth=args.depth)
    decoder = DecoderArch(depth=args.decoder_depth)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    variants = {}
    for name, fused, sync in (("ours", True, False), ("baseline", False, True)):
        torch.manual_seed(0)
        model = MaskedAutoencoder(arch, decoder).to(device).train()
        set_fused_attention(model, fused)
        optimizer = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.95))
        variants[name] = make_step(model, optimizer, images, args.precision, device, sync)
        timed(variants[name], 2, device)  # warm-up: allocator, kernels, optimizer state

    seconds: dict[str, list[float]] = {name: [] for name in variants}
    peak_mem: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, step in variants.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds[name].append(timed(step, args.steps, device))
            if device.type == "cuda":
                peak_mem[name] = torch.cuda.max_memory_allocated(device) / 2**30

    rate = {name: args.batch * args.steps / statistics.median(s) for name, s in seconds.items()}
    print(f"MAE ViT-{args.size} (width {arch.embed_dim}, depth {arch.depth}), {args.img_size}px, patch "
          f"{args.patch}, decoder depth {decoder.depth}, batch {args.batch}, {args.precision}, {device.type}; "
          f"median of {args.rounds} rounds x {args.steps} steps")
    for name in variants:
        mem = f", peak memory {peak_mem[name]:.2f} GiB" if name in peak_mem else ""
        print(f"  {name:9s} {rate[name]:9.1f} images/s{mem}")
    if device.type != "cuda":
        print(f"  peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"  ratio ours/baseline: {rate['ours'] / rate['baseline']:.2f}x")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        flops = train_flops_per_image(arch, decoder, int(arch.num_patches * 0.25))
        achieved = rate["ours"] * flops / 1e12
        line = f"  model FLOPs: {flops / 1e9:.1f} GFLOP/image, achieved {achieved:.1f} TFLOP/s on {name}"
        if peak:
            line += f", MFU {achieved / peak:.1%} of {peak:.0f} TFLOP/s peak bf16"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One prepared device check: MAE pretraining, emotion fine-tuning and make_submission at full size on a GPU.

Prints, for each part, images/s (or frames/s) and peak device memory; for MAE also the model FLOPs, counted by
``torch.utils.flop_counter`` on one real training step (not assumed), and the MFU against the card's peak dense
bf16 rate. Precision follows the kit's one rule (``abaw_ce.train.loop.resolve_precision("auto")``): bf16 where
the card supports it, else fp32.

    python benchmarks/gpu_check.py                 # on one GPU: ViT-B/16 at 224 px, 5 folds, >= 26k frames
    python benchmarks/gpu_check.py --smoke         # the same code on the CPU in seconds (part of make test)

The device machine lacks omegaconf and av: carry their wheels and ``pip install --no-index --no-deps`` them.
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_ce import labels  # noqa: E402
from abaw_ce.models.mae import DecoderArch, MaskedAutoencoder  # noqa: E402
from abaw_ce.models.vit import VitArch, build_vit, vit_arch  # noqa: E402
from abaw_ce.train.loop import resolve_precision  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 154.8, "4090": 165.2}


@dataclass
class Sizes:
    arch: VitArch
    decoder: DecoderArch
    mae_batch: int
    tune_batch: int
    steps: int
    folds: int
    frames: int        # at least this many test-video frames for make_submission
    crop: int


FULL = Sizes(vit_arch("base", img_size=224, patch_size=16), DecoderArch(), mae_batch=256, tune_batch=128,
             steps=20, folds=5, frames=26_145, crop=224)
SMOKE = Sizes(VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
              DecoderArch(embed_dim=32, depth=1, num_heads=2), mae_batch=8, tune_batch=8, steps=2, folds=2,
              frames=60, crop=32)


def autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (CPU)"


def timed_steps(step, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls after two warm-up calls; one host sync at the end only."""
    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.detach().float().cpu()
    sync(device)
    return time.perf_counter() - start


def training_step(model, loss_of, images, device, precision):
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-4, weight_decay=0.05)

    def step() -> torch.Tensor:
        with autocast(device, precision):
            loss = loss_of(model, images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def counted_flops(step) -> float:
    """FLOPs of one call of ``step`` (forward, backward and the optimizer's arithmetic-free updates)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def check_mae(sizes: Sizes, device: torch.device, precision: str) -> None:
    torch.manual_seed(0)
    model = MaskedAutoencoder(sizes.arch, sizes.decoder).to(device).train()
    images = torch.randn(sizes.mae_batch, 3, sizes.arch.img_size, sizes.arch.img_size, device=device)
    step = training_step(model, lambda m, x: m(x)[0], images, device, precision)
    reset_memory(device)
    flops = counted_flops(step) / sizes.mae_batch
    seconds = timed_steps(step, sizes.steps, device)
    rate = sizes.mae_batch * sizes.steps / seconds
    line = (f"MAE ViT (width {sizes.arch.embed_dim}, depth {sizes.arch.depth}, {sizes.arch.img_size} px, patch "
            f"{sizes.arch.patch_size}), batch {sizes.mae_batch}, {precision}: {rate:.1f} images/s; "
            f"{flops / 1e9:.4g} GFLOP per image counted")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        achieved = rate * flops / 1e12
        line += f", {achieved:.1f} TFLOP/s" + (f", MFU {achieved / peak:.1%} of {peak:.0f}" if peak else "")
    print(line + f"; {peak_memory(device)}", flush=True)


def check_finetune(sizes: Sizes, device: torch.device, precision: str) -> None:
    torch.manual_seed(0)
    model = build_vit(sizes.arch, num_classes=len(labels.BASIC_EMOTIONS)).to(device).train()
    images = torch.randn(sizes.tune_batch, 3, sizes.arch.img_size, sizes.arch.img_size, device=device)
    targets = (torch.rand(sizes.tune_batch, len(labels.BASIC_EMOTIONS), device=device) > 0.7).float()
    step = training_step(model, lambda m, x: F.binary_cross_entropy_with_logits(m(x).float(), targets), images,
                         device, precision)
    reset_memory(device)
    seconds = timed_steps(step, sizes.steps, device)
    print(f"emotion fine-tuning ViT (width {sizes.arch.embed_dim}), batch {sizes.tune_batch}, {precision}: "
          f"{sizes.tune_batch * sizes.steps / seconds:.1f} images/s; {peak_memory(device)}", flush=True)


def long_videos(world_test: Path, out: Path, frames: int, per_video: int = 1000) -> int:
    """Videos of ``per_video`` frames made of the world's test videos played in turn until ``frames`` frames are
    written, each stamped apart (identical videos would be found in the faces cache); returns the frames written."""
    from abaw_ce.synth.world import looped_video

    sources = sorted(world_test.glob("*.mp4"))
    written, index = 0, 0
    while written < frames:
        rotated = sources[index % len(sources):] + sources[:index % len(sources)]
        written += looped_video(rotated, out / f"long{index:03d}.mp4", min(per_video, frames - written),
                                stamp=index + 1)
        index += 1
    return written


def check_submission(sizes: Sizes, device: torch.device, precision: str, tmp: Path, sources: Path | None) -> None:
    from abaw_ce.submission.pipeline import make_submission
    from abaw_ce.submission.random_runs import random_emotion_run
    from abaw_ce.synth.world import generate_world

    run = random_emotion_run(tmp / "folds", sizes.folds, sizes.arch, [0.5] * 3, [0.25] * 3)
    if sources is None:
        generate_world(tmp / "world", seed=0, scale="tiny")
        sources = tmp / "world" / "test"
    frames = long_videos(sources, tmp / "videos", sizes.frames)
    times = []
    for attempt in ("faces and models", "models only (faces cached)"):
        reset_memory(device)
        start = time.perf_counter()
        summary = make_submission(tmp / "videos", [run], tmp / f"sub{len(times)}.txt", work_dir=tmp / "work",
                                  detector="opencv", crop_size=sizes.crop, device=device.type, progress=False,
                                  overwrite=True, precision="bf16" if precision == "bf16" else "fp32")
        sync(device)
        times.append(time.perf_counter() - start)
        print(f"make_submission, {sizes.folds}-fold ViT (width {sizes.arch.embed_dim}) ensemble, {frames} frames of "
              f"{len(list((tmp / 'videos').glob('*.mp4')))} videos, {precision}, {attempt}: {times[-1]:.1f} s, "
              f"{summary['frames'] / times[-1]:.1f} frames/s; {peak_memory(device)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the same code in seconds")
    parser.add_argument("--device", default=None, help="default: cuda when present (never with --smoke)")
    parser.add_argument("--skip-submission", action="store_true")
    parser.add_argument("--source-videos", type=Path, default=None,
                        help="videos to loop into the test videos (default: a tiny synthetic world's, rendered)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke else args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = SMOKE if args.smoke else FULL
    # bf16 under autocast on the CPU too in the smoke run, so dtype errors show before a GPU user meets them
    precision = "bf16" if args.smoke else resolve_precision("auto")
    if precision == "no":
        precision = "fp32"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}, precision {precision}" + (" (smoke)" if args.smoke else ""),
          flush=True)
    started = time.perf_counter()
    check_mae(sizes, device, precision)
    check_finetune(sizes, device, precision)
    if not args.skip_submission:
        with tempfile.TemporaryDirectory() as tmp:
            check_submission(sizes, device, precision, Path(tmp), args.source_videos)
    print(f"gpu_check done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

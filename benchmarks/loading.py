"""Training-time loading speed: a folder of JPEG crops read with PIL vs the same crops in a packed store.

    python benchmarks/loading.py [--n 2000] [--size 224] [--workers 0] [--batch 64] [--out DIR]

Both loaders run in the same process, through the same DataLoader settings and the same shuffled order, one
after the other, so the ratio is meaningful on a shared, noisy machine even when the absolute rates are not.
Files are read warm (from the page cache): this measures decode and copy cost, not the disk.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

try:
    from abaw_ce.data.packed import PackedFaces, pack_image_files
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from abaw_ce.data.packed import PackedFaces, pack_image_files


class FolderPIL(Dataset):
    """The baseline: one file open + JPEG decode per crop, returned as uint8 CHW like PackedFaces."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as image:
            pixels = np.array(image.convert("RGB"))
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def smooth_noise_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Blobs at two scales plus fine grain: compresses like a face crop, unlike pure noise or flat colour."""
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size),
                                                                                      Image.Resampling.BICUBIC)
    detail = Image.fromarray(rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC)
    pixels = (0.75 * np.asarray(coarse, dtype=np.float32) + 0.25 * np.asarray(detail, dtype=np.float32)
              + rng.normal(0.0, 3.0, (size, size, 3)))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_jpegs(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        smooth_noise_image(rng, size).save(path, quality=90)
        paths.append(path)
    return paths


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def loader_rate(dataset: Dataset, batch: int, workers: int, seed: int, repeats: int) -> float:
    """Best images/second over `repeats` shuffled passes, after one untimed pass (workers up, cache warm)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0)
    best = 0.0
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        seen = sum(len(images) for images in loader)
        elapsed = time.perf_counter() - start
        if attempt > 0:
            best = max(best, seen / elapsed)
    return best


def get_batch_rate(faces: PackedFaces, batch: int, seed: int, repeats: int) -> float:
    """PackedFaces.get_batch without a DataLoader: the ceiling for in-process batched reads."""
    generator = torch.Generator().manual_seed(seed)
    best = 0.0
    for attempt in range(repeats + 1):
        order = torch.randperm(len(faces), generator=generator).numpy()
        start = time.perf_counter()
        for first in range(0, len(order), batch):
            faces.get_batch(order[first:first + batch])
        elapsed = time.perf_counter() - start
        if attempt > 0:
            best = max(best, len(order) / elapsed)
    return best


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="number of crops (default 2000)")
    parser.add_argument("--size", type=int, default=224, help="crop side in pixels (default 224)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per loader; best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the JPEGs (OUT/jpeg) and the store (OUT/packed) here instead of a temp folder")
    args = parser.parse_args(argv)

    work_dir = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="abaw-ce-loading-"))
    try:
        started = time.perf_counter()
        paths = make_jpegs(work_dir / "jpeg", args.n, args.size, args.seed)
        print(f"wrote {args.n} JPEG crops ({args.size}x{args.size}, quality 90) in "
              f"{time.perf_counter() - started:.1f}s to {work_dir / 'jpeg'}")

        started = time.perf_counter()
        store = pack_image_files(paths, work_dir / "packed", args.size, args.size, overwrite=True)
        pack_seconds = time.perf_counter() - started
        print(f"packed them in {pack_seconds:.1f}s ({args.n / pack_seconds:.0f} images/s) to {store}")

        faces = PackedFaces(store)
        folder_rate = loader_rate(FolderPIL(paths), args.batch, args.workers, args.seed, args.repeats)
        packed_rate = loader_rate(faces, args.batch, args.workers, args.seed, args.repeats)
        batch_rate = get_batch_rate(faces, args.batch, args.seed, args.repeats)

        rows = [("folder + PIL (JPEG)", "DataLoader", folder_rate),
                ("PackedFaces", "DataLoader", packed_rate),
                ("PackedFaces.get_batch", "no DataLoader", batch_rate)]
        print()
        print(f"{args.n} crops {args.size}x{args.size}, batch {args.batch}, workers {args.workers}, shuffled, "
              f"best of {args.repeats} passes, warm page cache")
        print(f"{'loader':<24}{'through':<16}{'images/s':>12}{'ms/batch':>11}")
        for name, through, rate in rows:
            print(f"{name:<24}{through:<16}{rate:>12.0f}{1000 * args.batch / rate:>11.2f}")
        print()
        print(f"packed / folder+PIL = {packed_rate / folder_rate:.1f}x")
        print(f"get_batch / folder+PIL = {batch_rate / folder_rate:.1f}x")
        jpeg_size, store_size = folder_bytes(work_dir / "jpeg"), folder_bytes(store)
        print(f"storage: JPEG folder {mib(jpeg_size)}, packed store {mib(store_size)} "
              f"({store_size / jpeg_size:.1f}x the JPEGs; raw pixels trade disk for decode time)")
    finally:
        if args.out is None:
            shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

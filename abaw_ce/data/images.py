"""Face images from any mix of packed stores, faces-step outputs, image folders and CSV manifests.

Everything is served as ``torch.uint8`` (3, H, W) RGB, whatever the file's mode (grayscale, palette, RGBA,
CMYK, 16-bit). Files are read when asked for, so an image that turns out truncated or corrupt mid-epoch is
reported by raising ``UnreadableImage`` and the caller decides to skip it.

``read_rgb_array`` is the kit's one reader of user image files: the faces step and the packer use it too, so
a file decodes to the same pixels at every stage.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from abaw_ce.data import packed
from abaw_ce.data.adapters import load_image_folder, load_manifest
from abaw_ce.data.image_file import read_rgb_array
from abaw_ce.errors import InputError
from abaw_ce.faces.pipeline import STORE_DIR

def read_rgb(path: str | Path) -> torch.Tensor:
    """One image file as uint8 (3, H, W); raises UnreadableImage when it cannot be decoded."""
    return torch.from_numpy(np.ascontiguousarray(read_rgb_array(path).transpose(2, 0, 1)))


class ImageFiles(Dataset):
    """Image files by path, read on access."""

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_rgb(self.paths[i])

    def describe(self, i: int) -> str:
        return self.paths[i]


class StoreFaces(Dataset):
    """A packed store's crops (already decoded, so never unreadable)."""

    def __init__(self, store_dir: Path):
        self.faces = packed.PackedFaces(store_dir)

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.faces[i]

    def describe(self, i: int) -> str:
        return f"{self.faces.store_dir}[row {int(self.faces.rows[i])}]"


@dataclass(frozen=True)
class SourceInfo:
    path: str
    kind: str  # packed | faces_output | image_folder | manifest
    count: int


def open_source(path: str | Path) -> tuple[Dataset, SourceInfo]:
    """Open one image source, recognised by what is on disk."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "image source not found (expected a packed store, a faces-step output folder, "
                               "an image folder or a CSV manifest)")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise InputError(path, "a file image source must be a CSV manifest with a 'path' column")
        table = load_manifest(path)
        dataset: Dataset = ImageFiles(table["path"].tolist())
        kind = "manifest"
    elif packed.is_store(path):
        dataset, kind = StoreFaces(path), "packed"
    elif packed.is_store(path / STORE_DIR):
        dataset, kind = StoreFaces(path / STORE_DIR), "faces_output"
    else:
        try:
            table = load_image_folder(path)
        except PermissionError as err:
            raise InputError(path, f"cannot read this folder ({err.strerror})") from None
        dataset, kind = ImageFiles(table["path"].tolist()), "image_folder"
    if len(dataset) == 0:
        raise InputError(path, f"this {kind.replace('_', ' ')} holds no images")
    return dataset, SourceInfo(str(path), kind, len(dataset))


class FaceImages(ConcatDataset):
    """All sources concatenated; ``describe(i)`` names where item i comes from (for skip reports)."""

    def __init__(self, sources: Sequence[str | Path]):
        if not sources:
            raise ValueError("no image sources given")
        opened = [open_source(s) for s in sources]
        super().__init__([d for d, _ in opened])
        self.infos = [info for _, info in opened]

    def describe(self, i: int) -> str:
        source = int(np.searchsorted(self.cumulative_sizes, i, side="right"))
        start = self.cumulative_sizes[source - 1] if source else 0
        return self.datasets[source].describe(i - start)

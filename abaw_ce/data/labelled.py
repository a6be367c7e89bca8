"""Labelled face samples for the fine-tuning stages: sample-table rows with their targets and masks."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from abaw_ce.data.images import read_rgb


class TableSamples(Dataset):
    """Row i of a sample table: {"image": uint8 (3, H, W), "target": float (C,), "mask": float (C,)}.

    ``targets`` and ``mask`` are (N, C) arrays aligned with the table (mask 1 = labelled).
    """

    def __init__(self, table: pd.DataFrame, targets: np.ndarray, mask: np.ndarray | None = None):
        if len(targets) != len(table):
            raise ValueError(f"{len(targets)} target rows for a table of {len(table)} rows")
        self.paths = table["path"].astype(str).tolist()
        self.targets = torch.as_tensor(np.nan_to_num(np.asarray(targets, np.float32)))
        self.mask = (torch.ones_like(self.targets) if mask is None else
                     torch.as_tensor(np.asarray(mask, np.float32)))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": read_rgb(self.paths[i]), "target": self.targets[i], "mask": self.mask[i]}

    def describe(self, i: int) -> str:
        return self.paths[i]


class FaceTransform:
    """uint8 face -> {"image": normalised float tensor}; train mode adds the seed paper's augmentations."""

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                 crop_scale: Sequence[float] = (0.8, 1.0), hflip: float = 0.5, rotation: float = 10.0,
                 color_jitter: float = 0.2):
        steps: list[Any] = []
        if train:
            steps.append(v2.RandomResizedCrop(img_size, scale=tuple(crop_scale), antialias=True))
            if hflip > 0:
                steps.append(v2.RandomHorizontalFlip(hflip))
            if rotation > 0:
                steps.append(v2.RandomRotation(rotation))
            if color_jitter > 0:
                steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                            saturation=color_jitter))
        else:
            steps += [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        self.transform = v2.Compose(steps)

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": self.transform(image)}

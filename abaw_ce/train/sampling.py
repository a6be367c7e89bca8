"""Randomness that depends only on (seed, epoch, sample), never on process count, workers or resumption.

The sampler yields ``(epoch, index)`` keys; the dataset derives every random choice for that sample
(augmentation, MAE mask noise) from them. A run on 1 or 8 processes, or one resumed from a checkpoint,
therefore sees exactly the same augmented samples in the same global batches.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from abaw_ce.data.images import UnreadableImage

log = logging.getLogger(__name__)

_PERMUTATION, _SAMPLE = 0, 1
# How many following items to try in place of an unreadable one before giving up on the dataset.
MAX_REPLACEMENTS = 64


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class EpochSampler(Sampler):
    """A fresh permutation each epoch, a pure function of (seed, epoch); yields ``(epoch, index)``."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = int(size), int(seed), bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, _PERMUTATION))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = range(self.size)
        epoch = self.epoch
        for index in order:
            yield epoch, index


class SeededSamples(Dataset):
    """``make(image)`` applied to ``base[index]`` with the CPU RNG seeded from (seed, epoch, index).

    An unreadable image is replaced by the next readable item (same seed stream) and counted in the
    sample's ``skipped`` field (``index`` is the item actually served), so a bad file costs one warning
    instead of the run. A base item may be a dict with an ``image`` and fields passed through untouched.
    """

    def __init__(self, base: Dataset, make: Callable[[torch.Tensor], dict[str, Any]], seed: int):
        self.base, self.make, self.seed = base, make, int(seed)
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, int(key))
        size = len(self)
        for skipped in range(min(MAX_REPLACEMENTS, size)):
            item = (index + skipped) % size
            try:
                image = self.base[item]
            except UnreadableImage as err:
                if item not in self._warned:
                    self._warned.add(item)
                    log.warning("skipping unreadable image %s", err)
                continue
            extras: dict[str, Any] = {}
            if isinstance(image, dict):  # labelled items: {"image": ..., "target": ..., ...}
                extras = {k: v for k, v in image.items() if k != "image"}
                image = image["image"]
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(derived_seed(self.seed, epoch, _SAMPLE, index))
                sample = self.make(image)
            sample.update(extras)
            sample["skipped"] = torch.tensor(skipped)
            sample["index"] = torch.tensor(item)
            return sample
        raise RuntimeError(f"{min(MAX_REPLACEMENTS, size)} images in a row from item {index} could not be read; "
                           f"the data looks broken (see the warnings above)")

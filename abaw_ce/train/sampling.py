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

from abaw_ce.data.image_file import UnreadableImage
from abaw_ce.errors import OptionError, UserError

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


class GroupedBatchOrder(Sampler):
    """``(epoch, index)`` keys in which every consecutive run of ``batch_size`` holds a fixed number of items
    of each group (e.g. the VA-, expression- and AU-labelled sets of a multi-task update): shares proportional
    to the groups' sizes, at least one each. An epoch lasts until every group has been seen once (a group that
    runs out starts a fresh permutation), so one epoch covers every set. A pure function of (seed, epoch)."""

    def __init__(self, groups: list[np.ndarray] | tuple, batch_size: int, seed: int):
        self.groups = [np.asarray(g, dtype=np.int64) for g in groups]
        if not self.groups or any(len(g) == 0 for g in self.groups):
            raise ValueError("every group of a grouped batch order needs at least one item")
        if batch_size < len(self.groups):
            raise OptionError(f"a batch of {batch_size} cannot hold one item of each of {len(self.groups)} groups")
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), 0
        self.shares = self._shares()
        self.batches = max(int(np.ceil(len(g) / k)) for g, k in zip(self.groups, self.shares))

    def _shares(self) -> list[int]:
        """The batch split by group size (largest remainders), every group getting at least one."""
        sizes = np.array([len(g) for g in self.groups], dtype=np.float64)
        exact = self.batch_size * sizes / sizes.sum()
        shares = np.maximum(np.floor(exact), 1).astype(np.int64)
        while shares.sum() < self.batch_size:
            shares[int(np.argmax(exact - shares))] += 1
        while shares.sum() > self.batch_size:
            over = np.where(shares > 1, shares - exact, -np.inf)
            shares[int(np.argmax(over))] -= 1
        return shares.tolist()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def _stream(self, g: int) -> Iterator[int]:
        cycle = 0
        while True:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, _PERMUTATION, g, cycle))
            for i in torch.randperm(len(self.groups[g]), generator=generator).tolist():
                yield int(self.groups[g][i])
            cycle += 1

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        streams = [self._stream(g) for g in range(len(self.groups))]
        for _ in range(self.batches):
            for stream, share in zip(streams, self.shares):
                for _ in range(share):
                    yield epoch, next(stream)


class SeededSamples(Dataset):
    """``make(image)`` applied to ``base[index]`` with the CPU RNG seeded from (seed, epoch, index).

    An unreadable image is replaced by the next readable item (same seed stream) and counted in the
    sample's ``skipped`` field (``index`` is the item actually served), so a bad file costs one warning
    instead of the run. A base item may be a dict with an ``image`` and fields passed through untouched.
    A key may carry more integers after ``(epoch, index)``: they join the seed, so that one item drawn twice
    in an epoch (e.g. by a curriculum's plan) is augmented afresh each time; a plain key seeds as it always did.
    """

    def __init__(self, base: Dataset, make: Callable[[torch.Tensor], dict[str, Any]], seed: int):
        self.base, self.make, self.seed = base, make, int(seed)
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, ...] | int) -> dict[str, Any]:
        epoch, index, *salt = key if isinstance(key, tuple) else (0, int(key))
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
                torch.default_generator.manual_seed(derived_seed(self.seed, epoch, _SAMPLE, index, *salt))
                sample = self.make(image)
            sample.update(extras)
            sample["skipped"] = torch.tensor(skipped)
            sample["index"] = torch.tensor(item)
            return sample
        raise UserError(f"{min(MAX_REPLACEMENTS, size)} images in a row from item {index} could not be read; "
                        f"the data looks broken (see the warnings above)")

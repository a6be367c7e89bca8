"""The ABAW7 compound-expression winner's curriculum (arXiv 2503.07969) over the training samples of a stage.

The run is cut into stages of ``train.curriculum.epochs`` epochs. Stage 0 is meant to train on
single-expression images only (compound share 0); each following stage raises the share of compound samples
in an epoch: first the real compound labels (rows whose expression target has two positives: RAF-DB compound,
C-EXPR-DB frames), each at most once per epoch, then compounds generated on the fly, which fill the rest. A
generated compound mixes two single-expression images with different emotions by CutMix or Mixup and carries
both emotions as positives: its target is the union of the two targets (normalised to sum 1 for a KL head, as
a real compound's 0.5/0.5), its mask the AND of the two masks; target columns after the expression ones (the
AUs of C-EXPR-NET) are masked out, a mixed face having no AU label.

An epoch keeps the length of the training set (so updates per epoch and the schedule do not change): slot
``s`` of epoch ``e`` is what ``EpochPlan`` puts there, a pure function of (seed, e); the engine's
``EpochSampler`` shuffles the slots; the mix of a generated slot (CutMix or Mixup, lambda, box) and the
augmentation of its images are drawn from (seed, e, s). A run resumed mid-stage therefore sees the same
batches as one that never stopped.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from abaw_ce.errors import OptionError
from abaw_ce.train import runs
from abaw_ce.train.sampling import derived_seed

log = logging.getLogger(__name__)

GENERATE_CHOICES = ("cutmix", "mixup", "both", "none")
SINGLE, REAL, GENERATED = 0, 1, 2  # what an epoch's slot holds
# derived_seed stream tags, apart from sampling's permutation (0) and samples (1) and the engine's mixup (2)
_PLAN, _MIX = 3, 4
_KEY = "train.curriculum"


@dataclass(frozen=True)
class Curriculum:
    """Stages of ``epochs[i]`` epochs whose epochs hold a ``compound_share[i]`` share of compound samples;
    ``generate`` says how compounds are made beyond the real ones (``none``: real ones only, repeated as
    needed); the first image's share ``lam`` of a generated one is uniform in ``lam_range``."""
    epochs: tuple[int, ...]
    compound_share: tuple[float, ...]
    generate: str = "both"
    lam_range: tuple[float, float] = (0.3, 0.7)

    def __post_init__(self) -> None:
        if not self.epochs or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in self.epochs):
            raise OptionError(f"{_KEY}.epochs must list positive integers (epochs per stage), got "
                              f"{list(self.epochs)!r}")
        if len(self.compound_share) != len(self.epochs):
            raise OptionError(f"{_KEY}.compound_share needs one share per stage ({len(self.epochs)} stages in "
                              f"{_KEY}.epochs), got {list(self.compound_share)!r}")
        if any(not 0.0 <= s <= 1.0 for s in self.compound_share):
            raise OptionError(f"{_KEY}.compound_share values must lie in [0, 1], got {list(self.compound_share)!r}")
        if self.generate not in GENERATE_CHOICES:
            raise OptionError(f"{_KEY}.generate must be one of {GENERATE_CHOICES}, got {self.generate!r}")
        low, high = self.lam_range
        if not 0.0 < low <= high < 1.0:
            raise OptionError(f"{_KEY}.lam_range must be [low, high] with 0 < low <= high < 1, got "
                              f"{list(self.lam_range)!r}")

    @property
    def total_epochs(self) -> int:
        return int(sum(self.epochs))

    @property
    def final_stage_start(self) -> int:
        """The first epoch of the last stage: the model is chosen there (earlier stages train another mix)."""
        return int(sum(self.epochs[:-1]))

    def selection_start(self, run_epochs: int) -> int:
        """The first epoch of the last stage a run of ``run_epochs`` epochs reaches (the model is chosen there;
        a run stopped inside the curriculum chooses in the stage it ends in)."""
        return int(sum(self.epochs[:self.stage(max(int(run_epochs), 1) - 1)]))

    def stage(self, epoch: int) -> int:
        """The stage epoch ``epoch`` (from 0) belongs to; epochs past the end stay in the last stage."""
        ends = np.cumsum(self.epochs).tolist()
        return min(bisect.bisect_right(ends, int(epoch)), len(self.epochs) - 1)

    def share(self, epoch: int) -> float:
        return float(self.compound_share[self.stage(epoch)])

    def epoch_info(self, epoch: int) -> dict[str, Any]:
        """What the engine adds to an epoch's record in ``metrics.json``."""
        return {"curriculum_stage": self.stage(epoch), "compound_share": self.share(epoch)}

    def describe(self) -> str:
        made = {"both": "CutMix or Mixup", "cutmix": "CutMix", "mixup": "Mixup", "none": "none generated"}
        return (f"curriculum of {len(self.epochs)} stages: epochs {list(self.epochs)}, compound share "
                f"{[float(s) for s in self.compound_share]}, compounds {made[self.generate]}")


def from_config(train: DictConfig) -> Curriculum | None:
    """The curriculum of a stage's ``train`` section; None when it is off (or absent: runs from before it)."""
    node = train.get("curriculum") if isinstance(train, DictConfig) else None
    if node is None or not node.get("enabled", False):
        return None
    try:
        return Curriculum(epochs=tuple(node.epochs), compound_share=tuple(float(s) for s in node.compound_share),
                          generate=str(node.get("generate", "both")),
                          lam_range=tuple(float(x) for x in node.get("lam_range", (0.3, 0.7))))
    except (TypeError, ValueError) as err:
        raise OptionError(f"{_KEY} cannot be read ({err}); e.g. {_KEY}={{enabled: true, epochs: [5, 5, 3, 3], "
                          f"compound_share: [0, 0.2, 0.4, 1.0], generate: both}}") from None


def configure(config: DictConfig, stage: str, skip: str | None = None) -> tuple[DictConfig, Curriculum | None]:
    """(config, curriculum). ``train.epochs`` null means the curriculum's length (the sum of its stages); a
    number is the run's length either way: shorter, the run stops inside the curriculum; longer, the last stage
    goes on. ``skip`` (a reason) trains without the curriculum even when it is on, saying why."""
    curriculum = from_config(config.train)
    main = runs.process_state().is_main_process
    if curriculum is not None and skip:
        if main:
            print(f"{stage}: training without {_KEY}: {skip}")
        if config.train.epochs is None:  # the length stays the curriculum's
            config = OmegaConf.merge(config, {"train": {"epochs": curriculum.total_epochs}})
        curriculum = None
    if curriculum is None:
        if config.train.epochs is None:
            raise OptionError("train.epochs is null, which means the curriculum's length, but the curriculum is "
                              f"off ({_KEY}.enabled=false{', ' + skip if skip else ''}): set train.epochs")
        return config, None
    epochs = curriculum.total_epochs if config.train.epochs is None else int(config.train.epochs)
    config = OmegaConf.merge(config, {"train": {"epochs": epochs}})
    if main:
        if epochs == curriculum.total_epochs:
            length = f"{epochs} epochs in all (the stages' sum)"
        elif epochs < curriculum.total_epochs:
            length = (f"train.epochs={epochs} stops the run in stage {curriculum.stage(epochs - 1)} (the stages "
                      f"sum to {curriculum.total_epochs})")
        else:
            length = (f"train.epochs={epochs}: the last stage goes on for {epochs - curriculum.total_epochs} more "
                      f"epoch(s) after the stages' {curriculum.total_epochs}")
        print(f"{stage}: {curriculum.describe()}; {length}")
    return config, curriculum


# ---------------------------------------------------------------- the rows and the plan of an epoch

@dataclass(frozen=True)
class Pools:
    """Rows of a training set by their expression targets. ``single``: at most one positive (stage 0 draws
    only these; rows without an expression label, e.g. AU-only ones, count here); ``real``: two or more
    (real compounds); ``source``: exactly one labelled positive, ``emotion`` its column (what generation mixes)."""
    single: np.ndarray
    real: np.ndarray
    source: np.ndarray
    emotion: np.ndarray


def pools(targets: np.ndarray, masks: np.ndarray | None = None, columns: int | None = None) -> Pools:
    """``Pools`` of (N, C) targets (and masks, 1 = labelled); ``columns``: how many leading columns are the
    expression ones (all by default). A positive is a labelled entry above 0 (a KL target's 0.5 counts)."""
    targets = np.nan_to_num(np.asarray(targets, dtype=np.float32))
    columns = targets.shape[1] if columns is None else int(columns)
    labelled = np.ones_like(targets, dtype=bool) if masks is None else np.asarray(masks) > 0
    positive = (targets[:, :columns] > 0) & labelled[:, :columns]
    count = positive.sum(axis=1)
    source = np.flatnonzero(count == 1)
    return Pools(single=np.flatnonzero(count <= 1), real=np.flatnonzero(count >= 2), source=source,
                 emotion=positive[source].argmax(axis=1))


@dataclass(frozen=True)
class EpochPlan:
    """Slot ``s`` of an epoch: ``kind[s]`` (SINGLE, REAL or GENERATED), the row ``first[s]`` and, for a
    generated compound, the row ``second[s]`` it is mixed with (else -1)."""
    stage: int
    share: float
    kind: np.ndarray
    first: np.ndarray
    second: np.ndarray

    def counts(self) -> dict[str, int]:
        return {name: int((self.kind == k).sum()) for name, k in (("single", SINGLE), ("real", REAL),
                                                                    ("generated", GENERATED))}


def slot_counts(share: float, size: int, pools: Pools, generate: str) -> tuple[int, int, int]:
    """(single, real, generated) slots of an epoch of ``size`` at compound share ``share``: real compounds
    first, each at most once (all slots, repeated, when nothing is generated), generated ones for the rest."""
    compound = int(round(share * size))
    if generate == "none":
        real = compound if len(pools.real) else 0
    else:
        real = min(compound, len(pools.real))
    return size - compound, real, compound - real


def _cycled(rng: np.random.Generator, rows: np.ndarray, n: int) -> np.ndarray:
    """``n`` rows: fresh permutations of ``rows`` one after another (each row once before any repeats)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    rounds = -(-n // len(rows))
    return np.concatenate([rng.permutation(rows) for _ in range(rounds)])[:n].astype(np.int64)


def _pairs(rng: np.random.Generator, pools: Pools, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (first, second) source rows with different emotions: the first uniform over the source rows, the
    second uniform over those of another emotion."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(pools.emotion, kind="stable")
    rows, emotion = pools.source[order], pools.emotion[order]
    size = len(rows)
    start = np.searchsorted(emotion, emotion, side="left")
    count = np.searchsorted(emotion, emotion, side="right") - start
    first = rng.integers(0, size, n)
    other = rng.integers(0, size - count[first])  # a position among the rows of the other emotions
    second = np.where(other < start[first], other, other + count[first])
    return rows[first].astype(np.int64), rows[second].astype(np.int64)


def plan_epoch(curriculum: Curriculum, pools: Pools, size: int, seed: int, epoch: int) -> EpochPlan:
    """The ``size`` slots of epoch ``epoch``, a pure function of (seed, epoch) for given pools."""
    stage = curriculum.stage(epoch)
    share = float(curriculum.compound_share[stage])
    n_single, n_real, n_generated = slot_counts(share, size, pools, curriculum.generate)
    rng = np.random.default_rng(derived_seed(seed, epoch, _PLAN))
    real = _cycled(rng, pools.real, n_real)
    first, second = _pairs(rng, pools, n_generated)
    single = _cycled(rng, pools.single, n_single)
    kind = np.concatenate([np.full(n_single, SINGLE), np.full(n_real, REAL), np.full(n_generated, GENERATED)])
    none = np.full(n_single + n_real, -1, dtype=np.int64)
    return EpochPlan(stage, share, kind.astype(np.int8), np.concatenate([single, real, first]),
                     np.concatenate([none, second]))


# ---------------------------------------------------------------- mixing two samples

@dataclass(frozen=True)
class Mix:
    """How a generated compound is made: ``mode`` cutmix or mixup; ``lam`` the first image's share of the
    pixels (mixup: of each pixel); ``box`` (top, left, height, width) of the second image's patch (cutmix)."""
    mode: str
    lam: float
    box: tuple[int, int, int, int] | None = None


def mix_params(seed: int, epoch: int, slot: int, generate: str, height: int, width: int,
               lam_range: tuple[float, float] = (0.3, 0.7)) -> Mix:
    """The mix of slot ``slot`` of epoch ``epoch``, drawn from (seed, epoch, slot) alone. CutMix's box lies
    inside the image, its area a (1 - lam) share (rounded to whole pixels; ``lam`` is the exact share left)."""
    if generate not in ("cutmix", "mixup", "both"):
        raise ValueError(f"no mix for generate={generate!r}")
    rng = np.random.default_rng(derived_seed(seed, epoch, _MIX, slot))
    mode = ("cutmix", "mixup")[int(rng.integers(2))] if generate == "both" else generate
    lam = float(rng.uniform(*lam_range))
    if mode == "mixup":
        return Mix(mode, lam)
    side = float(np.sqrt(1.0 - lam))
    h, w = min(height, max(1, int(round(height * side)))), min(width, max(1, int(round(width * side))))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return Mix(mode, 1.0 - h * w / (height * width), (top, left, h, w))


def mix_images(first: torch.Tensor, second: torch.Tensor, mix: Mix) -> torch.Tensor:
    """(C, H, W) images mixed: a convex combination (mixup) or ``second``'s box pasted into ``first``."""
    if mix.mode == "mixup":
        return mix.lam * first + (1.0 - mix.lam) * second
    top, left, h, w = mix.box
    out = first.clone()
    out[..., top:top + h, left:left + w] = second[..., top:top + h, left:left + w]
    return out


def mix_labels(first_target: torch.Tensor, second_target: torch.Tensor, first_mask: torch.Tensor,
               second_mask: torch.Tensor, columns: int, normalise: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, mask) of a generated compound: over the ``columns`` expression columns the union of the two
    targets (each emotion a positive, whatever lambda; normalised to sum 1 with ``normalise``, the KL head's
    form) and the AND of the masks; later columns unlabelled (mask 0, target 0)."""
    target = torch.zeros_like(first_target)
    mask = torch.zeros_like(first_mask)
    union = torch.maximum((first_target[:columns] > 0).to(target), (second_target[:columns] > 0).to(target))
    if normalise:
        union = union / union.sum().clamp(min=1.0)
    target[:columns] = union
    mask[:columns] = first_mask[:columns] * second_mask[:columns]
    return target, mask


# ---------------------------------------------------------------- the training set a curriculum serves

class CurriculumSamples(Dataset):
    """A training set served by a curriculum: key ``(epoch, slot)`` -> the sample the epoch's plan puts in
    the slot. ``base`` is a ``SeededSamples`` (keys ``(epoch, index, *salt)``) whose items carry ``target`` and
    ``mask``; ``targets``/``masks`` are the same rows' arrays (to sort the rows into pools); ``columns`` the
    leading expression columns; ``normalise`` the KL head's targets. Items gain ``generated`` (bool)."""

    def __init__(self, base: Dataset, targets: np.ndarray, curriculum: Curriculum, seed: int,
                 masks: np.ndarray | None = None, columns: int | None = None, normalise: bool = False):
        self.base, self.curriculum, self.seed = base, curriculum, int(seed)
        self.size = len(base)  # type: ignore[arg-type]
        if len(targets) != self.size:
            raise ValueError(f"{len(targets)} target rows for a training set of {self.size}")
        self.columns = int(np.asarray(targets).shape[1] if columns is None else columns)
        self.normalise = bool(normalise)
        self.pools = pools(targets, masks, self.columns)
        self._plans: dict[int, EpochPlan] = {}
        self._check()

    def _check(self) -> None:
        """Every stage can be served: singles for its single slots, real or generated compounds for the rest."""
        p, emotions = self.pools, len(np.unique(self.pools.emotion))
        for stage, share in enumerate(self.curriculum.compound_share):
            n_single, n_real, n_generated = slot_counts(float(share), self.size, p, self.curriculum.generate)
            if n_single and not len(p.single):
                raise OptionError(f"{_KEY}: stage {stage} (compound share {share}) needs single-expression "
                                  f"images, and the training set has none")
            if n_real + n_generated and not len(p.real) and self.curriculum.generate == "none":
                raise OptionError(f"{_KEY}: stage {stage} (compound share {share}) needs compound samples; the "
                                  f"training set has no compound label and {_KEY}.generate is none")
            if n_generated and emotions < 2:
                raise OptionError(f"{_KEY}: stage {stage} (compound share {share}) generates compounds from two "
                                  f"different emotions; the training set's single-expression images show "
                                  f"{emotions}")

    def __len__(self) -> int:
        return self.size

    def plan(self, epoch: int) -> EpochPlan:
        epoch = int(epoch)
        if epoch not in self._plans:
            if len(self._plans) >= 2:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = plan_epoch(self.curriculum, self.pools, self.size, self.seed, epoch)
        return self._plans[epoch]

    def epoch_info(self, epoch: int) -> dict[str, Any]:
        return self.curriculum.epoch_info(epoch)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, slot = key if isinstance(key, tuple) else (0, int(key))
        plan = self.plan(epoch)
        first = int(plan.first[slot])
        if plan.kind[slot] != GENERATED:
            sample = self.base[(epoch, first, slot)]
            sample["generated"] = torch.tensor(False)
            return sample
        a = self.base[(epoch, first, slot, 0)]
        b = self.base[(epoch, int(plan.second[slot]), slot, 1)]
        mix = mix_params(self.seed, epoch, slot, self.curriculum.generate, int(a["image"].shape[-2]),
                         int(a["image"].shape[-1]), self.curriculum.lam_range)
        target, mask = mix_labels(a["target"], b["target"], a["mask"], b["mask"], self.columns, self.normalise)
        return {**a, "image": mix_images(a["image"], b["image"], mix), "target": target, "mask": mask,
                "skipped": a["skipped"] + b["skipped"], "generated": torch.tensor(True)}

"""The fine-tuning engine shared by the AU, emotion, C-EXPR-NET and multi-task stages.

One Accelerate loop: AdamW with layer-wise lr decay (timm), warmup then cosine annealing with warm restarts
per update, an EMA of the weights (timm ``ModelEmaV3``) that is what gets evaluated and exported, multi-label
mixup, distillation from a frozen teacher on the same (augmented, mixed) batch, early stopping on the
validation score keeping the best export, mid-epoch resumable checkpoints, TensorBoard + ``metrics.json``.
``fit`` runs it in steps: set-up, start (or resume), an epoch of training, validation, the end. The stages on
it also share ``run_single`` (a one-run stage's folder), ``load_tables`` and ``fold_assignment``.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, ListConfig, OmegaConf
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from abaw_ce.data import folds as folds_lib
from abaw_ce.data.adapters import load_dataset
from abaw_ce.data.table import concat_tables
from abaw_ce.errors import OptionError
from abaw_ce.progress import progress_bar
from abaw_ce.train import runs
from abaw_ce.train.loop import (STATUS_FILE, LossMonitor, NonFiniteLoss, TrainLog, epoch_batches,
                                device_layout, make_accelerator, read_status, restore, train_step,
                                write_status)
from abaw_ce.train.losses import mixup
from abaw_ce.train.sampling import EpochSampler, derived_seed

log = logging.getLogger(__name__)

BEST_DIR = "export"
__all__ = ["fit", "FitResult", "EarlyStopping", "NonFiniteLoss", "STATUS_FILE", "predict", "restart_schedule",
           "FROZEN_ON_RESUME", "load_tables", "fold_assignment", "validation_rows", "run_single"]
VALIDATION_FILE = "validation.json"
_MIXUP = 2
# Settings a resumed run of an engine stage may not change (anything else, e.g. epochs or workers, may be).
FROZEN_ON_RESUME = ("model", "data", "loss", "optim", "distill", "train.batch_size", "train.grad_accum",
                    "train.seed", "train.ema", "train.ema_decay", "train.ema_warmup", "train.mixup_alpha",
                    "train.curriculum")


@dataclass
class EarlyStopping:
    """Patience counted in epochs without a strictly better validation score."""
    patience: int = 10
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: bool = False

    def step(self, score: float, epoch: int) -> bool:
        """Record an epoch's score; True when it is the best so far."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = float(score), int(epoch), 0
            return True
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stopped = True
        return False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class RestartSchedule(CosineLRScheduler):
    """timm's cosine annealing with warm restarts, whose cycles may differ: cycle i lasts ``lengths[i]`` updates
    and starts from ``scales[i]`` x the base lr (the last entry of each list repeats). After a linear warmup to
    the base lr, each cycle anneals down to ``lr_min``."""

    def __init__(self, optimizer: torch.optim.Optimizer, lengths: Sequence[int], scales: Sequence[float],
                 **kwargs) -> None:
        self.cycle_lengths = [max(1, int(n)) for n in lengths]
        self.cycle_scales = [float(s) for s in scales]
        super().__init__(optimizer, t_initial=self.cycle_lengths[0], **kwargs)

    def _get_lr(self, t: int) -> list[float]:
        if t < self.warmup_t:
            return super()._get_lr(t)
        t -= self.warmup_t
        cycle = 0
        while cycle < len(self.cycle_lengths) - 1 and t >= self.cycle_lengths[cycle]:
            t -= self.cycle_lengths[cycle]
            cycle += 1
        length = self.cycle_lengths[cycle]
        cycle += t // length  # the last length repeats
        t %= length
        scale = self.cycle_scales[min(cycle, len(self.cycle_scales) - 1)]
        return [self.lr_min + 0.5 * (base * scale - self.lr_min) * (1 + math.cos(math.pi * t / length))
                for base in self.base_values]


def _as_list(value: Any, name: str) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if not values or any(not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0 for v in values):
        raise OptionError(f"{name} must be a positive number or a non-empty list of them, got {value!r}")
    return [float(v) for v in values]


def restart_schedule(optimizer: torch.optim.Optimizer, updates_per_epoch: int, epochs: int,
                     warmup_epochs: float, restart_epochs: float | Sequence[float], min_lr: float,
                     restart_lr_scale: float | Sequence[float] = 1.0) -> RestartSchedule:
    """Linear warmup, then cosine cycles down to ``min_lr`` (warm restarts). ``restart_epochs``: each cycle's
    length in epochs, one number for equal cycles or a list (the last repeats); ``restart_lr_scale``: each
    cycle's peak as a multiple of the base lr, likewise (a last, lower cycle fine-tunes what the others found)."""
    lengths = _as_list(restart_epochs, "optim.restart_epochs")
    scales = _as_list(restart_lr_scale, "optim.restart_lr_scale")
    total = max(1, updates_per_epoch * epochs)
    warmup = min(int(round(warmup_epochs * updates_per_epoch)), total - 1)
    return RestartSchedule(optimizer, [round(n * updates_per_epoch) for n in lengths], scales, lr_min=min_lr,
                           warmup_t=warmup, warmup_lr_init=min_lr, warmup_prefix=True, t_in_epochs=False)


def make_ema(model: nn.Module, decay: float, warmup: bool = False) -> ModelEmaV3:
    """timm's EMA of ``model``'s weights. ``warmup``: its effective decay starts near 0 and grows towards
    ``decay`` (``use_warmup``), so the average does not remember the starting weights; without it the decay is
    ``decay`` from the second update on (the first copies the weights)."""
    return ModelEmaV3(model, decay=decay, use_warmup=bool(warmup))


def layer_decay_of(model: nn.Module, layer_decay: float | None) -> float | None:
    """The layer-wise lr decay to use for ``model``: None when off (unset or 1), or when the model has no timm
    ``group_matcher`` to say which parameters form its layers (then logged)."""
    if not layer_decay or layer_decay >= 1.0:
        return None
    if not callable(getattr(model, "group_matcher", None)):
        log.warning("optim.layer_decay %s ignored: %s has no group_matcher to split it into layers; every "
                    "parameter gets the base lr", layer_decay, type(model).__name__)
        return None
    return float(layer_decay)


@dataclass
class FitResult:
    run_dir: Path
    best_score: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    finished: bool
    best_metrics: dict[str, Any] = field(default_factory=dict)


# loss_fn(outputs, batch, teacher_probs) -> scalar loss; batch holds image/target/mask after mixup.
LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor], torch.Tensor | None], torch.Tensor]
# evaluate(probs, targets, masks) -> metrics dict with a "score" to maximise.
EvaluateFn = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]
# export(model in eval mode, folder, metrics, indices/probs of the validation set) -> None
ExportFn = Callable[[nn.Module, Path, dict[str, Any], dict[str, np.ndarray]], None]


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, accelerator: Accelerator,
            activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid) -> dict[str, np.ndarray]:
    """Probabilities, targets, masks and dataset indices of a whole (sharded) loader, gathered."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"probs": [], "target": [], "mask": [], "index": []}
    for batch in loader:
        with accelerator.autocast():
            outputs = model(batch["image"])
        gathered = accelerator.gather_for_metrics(
            (activation(outputs.float()), batch["target"], batch["mask"], batch["index"]))
        for key, value in zip(parts, gathered):
            parts[key].append(value.cpu())
    model.train(was_training)
    return {k: torch.cat(v).numpy() if v else np.zeros((0,)) for k, v in parts.items()}


def fit(*, stage: str, config: DictConfig, run_dir: Path, model: nn.Module, train_set: Dataset,
        val_set: Dataset, loss_fn: LossFn, evaluate: EvaluateFn, export: ExportFn,
        teacher: nn.Module | None = None, resume_from: Path | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
        train_order: Sampler | None = None, extra_state: Sequence[Any] = (),
        epoch_info: Callable[[int], dict[str, Any]] | None = None, select_from: int = 0) -> FitResult:
    """Train ``model`` with the recipe in ``config`` (sections optim/train); the run folder must exist.
    ``activation`` turns the model's outputs into the probabilities ``evaluate`` and ``export`` receive;
    ``train_order`` replaces the shuffled epoch order (e.g. a ``GroupedBatchOrder``); ``extra_state`` (modules
    moved to the device, optimizers...) is saved in every checkpoint and restored on resume; ``epoch_info(epoch)``
    adds fields to each epoch's validation record (e.g. a curriculum's stage). Epochs before ``select_from`` (every
    ``train.validate_every``-th of them) are validated and logged, but neither become the best nor count toward early
    stopping (a curriculum's earlier stages train another task: their compound scores say nothing of the final
    model's)."""
    validate_every = config.train.get("validate_every", 1)  # runs started before the key existed: every epoch
    runs.check_positive_ints({"validate_every": validate_every}, "train", ("validate_every",))
    run = _set_up(stage, config, run_dir, model, train_set, val_set, teacher, train_order)
    run.epoch_info = epoch_info
    run.validate_every = validate_every
    run.select_from = min(int(select_from), int(config.train.epochs) - 1)  # the last epoch can always be chosen
    _register_state(run, extra_state)
    _start(run, resume_from)
    _announce(run, len(train_set), len(val_set))
    run.model.train()
    while _epochs_left(run):
        _train_epoch(run, loss_fn)
        if run.progress.batch_in_epoch >= run.batches_per_epoch:
            _end_epoch(run, evaluate, export, activation)
    return _finish(run)


@dataclass
class _Fit:
    """What the steps of one ``fit`` share: set up by ``_set_up``, the rest by ``_start``."""
    stage: str
    config: DictConfig
    run_dir: Path
    accelerator: Accelerator
    model: nn.Module  # as prepared by the accelerator
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    ema: ModelEmaV3 | None
    teacher: nn.Module | None
    batches_per_epoch: int  # micro-batches per process, whole updates only
    updates_per_epoch: int
    scheduler: RestartSchedule
    progress: runs.Progress
    stopping: EarlyStopping
    metrics: runs.MetricsLog = field(init=False)
    unwrapped: nn.Module = field(init=False)
    stop_at: int = field(init=False)
    monitor: LossMonitor = field(init=False)
    images_per_update: int = field(init=False)
    bar: Any = field(init=False)
    log_train: TrainLog = field(init=False)
    epoch_info: Callable[[int], dict[str, Any]] | None = field(default=None, init=False)
    select_from: int = field(default=0, init=False)
    validate_every: int = field(default=1, init=False)

    @property
    def total_updates(self) -> int:
        return self.updates_per_epoch * self.config.train.epochs


def _set_up(stage: str, config: DictConfig, run_dir: Path, model: nn.Module, train_set: Dataset,
            val_set: Dataset, teacher: nn.Module | None, train_order: Sampler | None) -> _Fit:
    """The seeded accelerator; the loaders, AdamW with layer-wise lr decay and the EMA, prepared; the teacher
    on the device; the schedule."""
    t, o = config.train, config.optim
    runs.check_positive_ints(t, "train", ("epochs", "batch_size", "grad_accum", "log_every", "keep_checkpoints",
                                          "patience"))
    accelerator = make_accelerator(run_dir, t.precision, t.grad_accum)
    set_seed(t.seed)
    train_loader, val_loader = _loaders(stage, t, accelerator.num_processes, train_set, val_set, train_order)
    layer_decay = layer_decay_of(model, o.layer_decay)
    optimizer = create_optimizer_v2(model, "adamw", lr=o.lr, weight_decay=o.weight_decay,
                                    layer_decay=layer_decay, betas=tuple(o.betas))
    ema = make_ema(model, t.ema_decay, t.get("ema_warmup", False)) if t.ema else None  # absent: a run from before
    device_layout(model, accelerator.device)
    if ema is not None:
        device_layout(ema.module, accelerator.device)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    batches_per_epoch = (len(train_loader) // t.grad_accum) * t.grad_accum
    updates_per_epoch = batches_per_epoch // t.grad_accum
    if updates_per_epoch < 1:
        raise OptionError(f"{stage}: an epoch of {len(train_loader)} batches is shorter than train.grad_accum")
    scheduler = restart_schedule(optimizer, updates_per_epoch, t.epochs, o.warmup_epochs, o.restart_epochs,
                                 o.min_lr, o.get("restart_lr_scale", 1.0))
    return _Fit(stage, config, run_dir, accelerator, model, optimizer, train_loader, val_loader, ema, teacher,
                batches_per_epoch, updates_per_epoch, scheduler, runs.Progress(), EarlyStopping(patience=t.patience))


def _loaders(stage: str, t: DictConfig, num_processes: int, train_set: Dataset, val_set: Dataset,
             train_order: Sampler | None) -> tuple[DataLoader, DataLoader]:
    """The training loader (whole batches in the seeded epoch order, or ``train_order``) and the validation one."""
    if len(train_set) < t.batch_size * num_processes:
        raise OptionError(f"{stage}: only {len(train_set)} training samples, fewer than one global batch "
                          f"({t.batch_size} x {num_processes}); lower train.batch_size")
    if len(val_set) == 0:
        raise OptionError(f"{stage}: the validation set is empty")
    sampler = train_order if train_order is not None else EpochSampler(len(train_set), seed=t.seed)
    # Workers live across epochs: the training sets draw their randomness from the (epoch, index) keys.
    workers = {"num_workers": t.num_workers, "persistent_workers": t.num_workers > 0,
               "pin_memory": torch.cuda.is_available()}
    train_loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, drop_last=True, **workers)
    val_loader = DataLoader(val_set, batch_size=t.eval_batch_size, shuffle=False, **workers)
    return train_loader, val_loader


def _register_state(run: _Fit, extra_state: Sequence[Any]) -> None:
    """What every checkpoint saves: schedule, progress, early stopping, the EMA and ``extra_state`` (modules
    among it moved to the device first)."""
    accelerator = run.accelerator
    accelerator.register_for_checkpointing(run.scheduler, run.progress, run.stopping)
    if run.ema is not None:
        run.ema.to(accelerator.device)
        accelerator.register_for_checkpointing(run.ema)
    for item in extra_state:
        if isinstance(item, nn.Module):
            item.to(accelerator.device)
        accelerator.register_for_checkpointing(item)


def _start(run: _Fit, resume_from: Path | None) -> None:
    """Restore ``resume_from`` (if any); the metrics log (cut back to the checkpoint), the trackers, the loss
    monitor and where to stop."""
    t, accelerator, progress = run.config.train, run.accelerator, run.progress
    if resume_from is not None:
        restore(accelerator, resume_from, run.scheduler, progress)
    run.metrics = runs.MetricsLog(run.run_dir / runs.METRICS_FILE,
                                  resume_update=progress.update if resume_from is not None else None)
    accelerator.init_trackers(run.stage, config=runs.flat_config(run.config))
    run.unwrapped = accelerator.unwrap_model(run.model)
    total_updates = run.total_updates
    run.stop_at = total_updates if t.stop_after_updates is None else min(total_updates,
                                                                         int(t.stop_after_updates))
    run.monitor = LossMonitor(accelerator, run.run_dir, run.stage, t.keep_checkpoints, last_good=resume_from)
    run.images_per_update = t.batch_size * accelerator.num_processes * t.grad_accum


def _announce(run: _Fit, train_size: int, val_size: int) -> None:
    """The running status and the summary line (main process); the progress bar and the training log."""
    t, accelerator, progress = run.config.train, run.accelerator, run.progress
    if accelerator.is_main_process:
        write_status(run.run_dir, run.stage, "running", epoch=progress.epoch, update=progress.update)
        accelerator.print(f"{run.stage}: {train_size} training / {val_size} validation samples, "
                          f"{run.updates_per_epoch} updates per epoch, up to {t.epochs} epochs "
                          f"(patience {t.patience}), EMA {_ema_words(run.ema)}, mixup "
                          f"{'alpha ' + str(t.mixup_alpha) if t.mixup_alpha else 'off'}, distillation "
                          f"{'on' if run.teacher is not None else 'off'} -> {run.run_dir}")
    run.bar = progress_bar(total=run.total_updates, initial=progress.update, desc=run.stage, unit="upd",
                           disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    run.log_train = TrainLog(accelerator, run.monitor, run.metrics, run.bar, run.optimizer, progress,
                             run.updates_per_epoch, run.images_per_update)


def _ema_words(ema: ModelEmaV3 | None) -> str:
    if ema is None:
        return "off"
    return f"on (decay {ema.decay}{', warm-up' if ema.use_warmup else ''})"


def _epochs_left(run: _Fit) -> bool:
    progress = run.progress
    return progress.update < run.stop_at and progress.epoch < run.config.train.epochs and not run.stopping.stopped


def _train_epoch(run: _Fit, loss_fn: LossFn) -> None:
    """The current epoch's remaining batches: a step each; on every update the EMA, the bar, the training log
    and the interval checkpoint."""
    t, accelerator, progress, model = run.config.train, run.accelerator, run.progress, run.model
    for batch in epoch_batches(accelerator, run.train_loader, progress, run.batches_per_epoch, run.stop_at):
        batch, teacher_probs = _mix_and_teach(run, dict(batch))
        if not train_step(accelerator, model, run.optimizer, run.scheduler, run.monitor, progress,
                          lambda: loss_fn(model(batch["image"]), batch, teacher_probs), run.config.optim.clip_grad,
                          batch["skipped"], run.images_per_update):
            continue  # a micro-batch or an fp16 overflow step: no update, so neither EMA nor log moves
        if run.ema is not None:
            run.ema.update(run.unwrapped, step=progress.update)
        run.bar.update(1)
        if progress.update % t.log_every == 0:
            run.log_train()
        if t.checkpoint_every and progress.update % t.checkpoint_every == 0 and progress.update < run.stop_at:
            run.monitor.checkpoint(progress.update)


def _mix_and_teach(run: _Fit, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                        torch.Tensor | None]:
    """The batch after mixup (its generator seeded by epoch, batch and process) and the teacher's
    probabilities on its mixed images (None without a teacher)."""
    t, accelerator, progress = run.config.train, run.accelerator, run.progress
    if t.mixup_alpha:
        rng = np.random.default_rng(derived_seed(t.seed, progress.epoch, _MIXUP, progress.batch_in_epoch,
                                                 accelerator.process_index))
        batch["image"], batch["target"], batch["mask"], _ = mixup(
            batch["image"], batch["target"], t.mixup_alpha, rng, batch["mask"])
    teacher_probs = None
    if run.teacher is not None:
        with torch.no_grad(), accelerator.autocast():
            teacher_probs = torch.sigmoid(run.teacher(batch["image"]).float())
    return batch, teacher_probs


def _end_epoch(run: _Fit, evaluate: EvaluateFn, export: ExportFn,
               activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """A whole epoch done: the NaN check, validation, the next epoch, a checkpoint."""
    run.monitor.check_finite(run.progress.update)
    epoch = run.progress.epoch
    if epoch >= run.select_from or epoch % run.validate_every == 0:
        _validate(run, evaluate, export, activation)
    run.progress.epoch += 1
    run.progress.batch_in_epoch = 0
    run.monitor.checkpoint(run.progress.update)


def _validate(run: _Fit, evaluate: EvaluateFn, export: ExportFn,
              activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Score the evaluated (EMA) weights on the validation set; a better epoch is exported with its
    validation.json; early stopping counts the rest."""
    accelerator, progress, stopping, run_dir = run.accelerator, run.progress, run.stopping, run.run_dir
    eval_model = run.ema.module if run.ema is not None else run.unwrapped
    outputs = predict(eval_model, run.val_loader, accelerator, activation)
    result = evaluate(outputs["probs"], outputs["target"], outputs["mask"])
    selecting = progress.epoch >= run.select_from
    improved = stopping.step(result["score"], progress.epoch) if selecting else False
    record = {"update": progress.update, "epoch": progress.epoch, "val_score": result["score"],
              "best_epoch": stopping.best_epoch, **(run.epoch_info(progress.epoch) if run.epoch_info else {})}
    accelerator.log({"val_score": result["score"]}, step=progress.update)
    if accelerator.is_main_process:
        run.metrics.append(record)
        if improved:
            export(eval_model, run_dir / BEST_DIR, {**result, "epoch": progress.epoch}, outputs)
            runs.atomic_write_json(run_dir / VALIDATION_FILE, {**result, "epoch": progress.epoch,
                                                               "update": progress.update})
    accelerator.wait_for_everyone()
    best = (" (best)" if improved else f" (best {stopping.best_score:.4f} at epoch {stopping.best_epoch})"
            if selecting else f" (the best is chosen from epoch {run.select_from} on)")
    accelerator.print(f"{run.stage}: epoch {progress.epoch} validation score {result['score']:.4f}{best}")


def _finish(run: _Fit) -> FitResult:
    """The last log and (mid-epoch) checkpoint, the curves and final status; the trackers closed."""
    accelerator, progress, stopping, run_dir = run.accelerator, run.progress, run.stopping, run.run_dir
    run.bar.close()
    if run.monitor.pending:
        run.log_train()
    if progress.batch_in_epoch:  # stopped mid-epoch
        run.monitor.checkpoint(progress.update)
    finished = stopping.stopped or progress.epoch >= run.config.train.epochs
    best: dict[str, Any] = {}
    if (run_dir / VALIDATION_FILE).is_file():
        best = json.loads((run_dir / VALIDATION_FILE).read_text(encoding="utf-8"))
    if accelerator.is_main_process:
        runs.plot_metrics(run.metrics.records, run_dir / "curves.png", ("loss", "lr", "val_score"),
                          title=f"{run.stage}, {run_dir.name}")
        write_status(run_dir, run.stage, "finished" if finished else "stopped", epoch=progress.epoch,
                     update=progress.update, best_epoch=stopping.best_epoch, best_score=stopping.best_score,
                     stopped_early=stopping.stopped, checkpoint=run.monitor.checkpoint_ref())
        if not finished:
            accelerator.print(f"{run.stage}: stopped at update {progress.update}; continue with --resume")
    for tracker in accelerator.trackers:  # not end_training(): it ends the process group, which the next fold needs
        tracker.finish()
    return FitResult(run_dir, stopping.best_score, stopping.best_epoch, progress.epoch, stopping.stopped,
                     finished, best)


# ---------------------------------------------------------------- what the stages on the engine share

def load_tables(specs: Sequence[Any], non_basic: str | None = None) -> pd.DataFrame:
    """The sample table of a stage's ``data.datasets`` specs (``load_dataset`` each), concatenated;
    ``non_basic`` is the default non-basic-expression policy of the sets that have one."""
    if not specs:
        raise OptionError("data.datasets is empty; list the labelled sets, e.g. "
                          "data.datasets=[{format:rafdb_basic,root:data/RAF-DB/basic}]")
    tables = []
    for spec in specs:
        spec = dict(OmegaConf.to_container(spec, resolve=True)) if isinstance(spec, DictConfig) else dict(spec)
        if non_basic is not None and spec.get("format") not in ("affwild2_au", "affwild2_va", "image_folder"):
            spec.setdefault("non_basic", non_basic)
        tables.append(load_dataset(spec))
    return concat_tables(tables)


def fold_assignment(table: pd.DataFrame, run_dir: Path, n_folds: int, seed: int) -> np.ndarray:
    """The fold of every row of ``table`` for a run: read from the run's ``folds.csv`` when it has one (a
    resumed run), else assigned (``assign_folds``) and saved there (``folds.csv``, ``folds.json``)."""
    saved = run_dir / "folds.csv"
    with runs.process_state().main_process_first():  # the main process writes it, the others read it
        if saved.is_file():
            return folds_lib.load_folds(table, saved)
        assigned = folds_lib.assign_folds(table, n_folds, seed)
        folds_lib.save_folds(table, assigned, run_dir, n_folds, seed)
        return assigned


def validation_rows(table: pd.DataFrame, run_dir: Path, data: DictConfig) -> np.ndarray:
    """Which rows of ``table`` a one-run stage validates on: fold ``data.val_fold`` of the grouped split, only of
    the sources named in ``data.val_sources`` when it lists any (every row of the other sources then trains:
    their identities, e.g. a few labelled videos', all join training)."""
    val = fold_assignment(table, run_dir, data.folds, data.fold_seed) == data.val_fold
    sources = data.get("val_sources")
    if not sources:
        return val
    names = [str(s) for s in sources]
    present = sorted(table["source"].astype(str).unique())
    unknown = [s for s in names if s not in present]
    if unknown:
        raise OptionError(f"data.val_sources names {unknown}, which no set of data.datasets gives; the sources "
                          f"here are {present}")
    val &= table["source"].astype(str).isin(names).to_numpy()
    if not val.any():
        raise OptionError(f"data.val_sources {names} has no row in validation fold {data.val_fold}; name another "
                          f"source or fold")
    return val


def run_single(stage: str, config: DictConfig, resume: str | None, overrides: Sequence[str],
               train: Callable[[DictConfig, Path, bool], None]) -> tuple[Path, bool]:
    """Start or resume a one-run stage and ``train(config, run_dir, resuming)`` it; a finished run is left
    alone. Returns (run folder, whether it trained now and has a best epoch to report: a run stopped before
    its first validation has none); a new folder that got nothing is removed."""
    config, run_dir, resuming = runs.start_or_resume(stage, config, resume, overrides, FROZEN_ON_RESUME)
    if read_status(run_dir).get("state") == "finished":
        print(f"{run_dir} already finished")
        return run_dir, False
    with runs.discard_if_unused(run_dir, created=not resuming):
        train(config, run_dir, resuming)
    return run_dir, (run_dir / VALIDATION_FILE).is_file()

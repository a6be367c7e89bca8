"""The fine-tuning engine shared by the AU, emotion (and later C-EXPR-NET) stages.

One Accelerate loop: AdamW with layer-wise lr decay (timm), warmup then cosine annealing with warm restarts
per update, an EMA of the weights (timm ``ModelEmaV3``) that is what gets evaluated and exported, multi-label
mixup, distillation from a frozen teacher on the same (augmented, mixed) batch, early stopping on the
validation score keeping the best export, mid-epoch resumable checkpoints, TensorBoard + ``metrics.json``.
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
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from abaw_ce.errors import OptionError
from abaw_ce.train import runs
from abaw_ce.train.loop import (STATUS_FILE, LossMonitor, NonFiniteLoss, TrainLog, epoch_batches,
                                make_accelerator, restore, train_step,
                                write_status)
from abaw_ce.train.losses import mixup
from abaw_ce.train.sampling import EpochSampler, derived_seed

log = logging.getLogger(__name__)

BEST_DIR = "export"
__all__ = ["fit", "FitResult", "EarlyStopping", "NonFiniteLoss", "STATUS_FILE", "predict", "restart_schedule"]
VALIDATION_FILE = "validation.json"
_MIXUP = 2


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


def restart_schedule(optimizer: torch.optim.Optimizer, updates_per_epoch: int, epochs: int,
                     warmup_epochs: float, restart_epochs: float, min_lr: float) -> CosineLRScheduler:
    """Linear warmup, then cosine cycles of ``restart_epochs`` epochs down to ``min_lr`` (warm restarts)."""
    total = max(1, updates_per_epoch * epochs)
    warmup = min(int(round(warmup_epochs * updates_per_epoch)), total - 1)
    cycle = max(1, int(round(restart_epochs * updates_per_epoch)))
    return CosineLRScheduler(optimizer, t_initial=cycle, lr_min=min_lr, cycle_limit=total // cycle + 2,
                             warmup_t=warmup, warmup_lr_init=min_lr, warmup_prefix=True, t_in_epochs=False)


def make_ema(model: nn.Module, decay: float) -> ModelEmaV3:
    return ModelEmaV3(model, decay=decay)


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
        train_order: Sampler | None = None, extra_state: Sequence[Any] = ()) -> FitResult:
    """Train ``model`` with the recipe in ``config`` (sections optim/train); the run folder must exist.
    ``activation`` turns the model's outputs into the probabilities ``evaluate`` and ``export`` receive;
    ``train_order`` replaces the shuffled epoch order (e.g. a ``GroupedBatchOrder``); ``extra_state`` (modules
    moved to the device, optimizers...) is saved in every checkpoint and restored on resume."""
    t, o = config.train, config.optim
    runs.check_positive_ints(t, "train", ("epochs", "batch_size", "grad_accum", "log_every", "keep_checkpoints",
                                          "patience"))
    accelerator = make_accelerator(run_dir, t.precision, t.grad_accum)
    set_seed(t.seed)
    if len(train_set) < t.batch_size * accelerator.num_processes:
        raise OptionError(f"{stage}: only {len(train_set)} training samples, fewer than one global batch "
                          f"({t.batch_size} x {accelerator.num_processes}); lower train.batch_size")
    if len(val_set) == 0:
        raise OptionError(f"{stage}: the validation set is empty")
    sampler = train_order if train_order is not None else EpochSampler(len(train_set), seed=t.seed)
    train_loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                              num_workers=t.num_workers, pin_memory=torch.cuda.is_available())
    val_loader = DataLoader(val_set, batch_size=t.eval_batch_size, shuffle=False, num_workers=t.num_workers)

    layer_decay = o.layer_decay if o.layer_decay and o.layer_decay < 1.0 else None
    optimizer = create_optimizer_v2(model, "adamw", lr=o.lr, weight_decay=o.weight_decay,
                                    layer_decay=layer_decay, betas=tuple(o.betas))
    ema = make_ema(model, t.ema_decay) if t.ema else None
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval().requires_grad_(False)
    batches_per_epoch = (len(train_loader) // t.grad_accum) * t.grad_accum
    updates_per_epoch = batches_per_epoch // t.grad_accum
    if updates_per_epoch < 1:
        raise OptionError(f"{stage}: an epoch of {len(train_loader)} batches is shorter than train.grad_accum")
    scheduler = restart_schedule(optimizer, updates_per_epoch, t.epochs, o.warmup_epochs, o.restart_epochs,
                                 o.min_lr)
    progress = runs.Progress()
    stopping = EarlyStopping(patience=t.patience)
    accelerator.register_for_checkpointing(scheduler, progress, stopping)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    for item in extra_state:
        if isinstance(item, nn.Module):
            item.to(accelerator.device)
        accelerator.register_for_checkpointing(item)
    if resume_from is not None:
        restore(accelerator, resume_from, scheduler, progress)
    metrics = runs.MetricsLog(run_dir / runs.METRICS_FILE,
                              resume_update=progress.update if resume_from is not None else None)
    accelerator.init_trackers(stage, config=runs.flat_config(config))
    unwrapped = accelerator.unwrap_model(model)
    total_updates = updates_per_epoch * t.epochs
    stop_at = total_updates if t.stop_after_updates is None else min(total_updates, int(t.stop_after_updates))
    monitor = LossMonitor(accelerator, run_dir, stage, t.keep_checkpoints, last_good=resume_from)
    images_per_update = t.batch_size * accelerator.num_processes * t.grad_accum
    if accelerator.is_main_process:
        write_status(run_dir, stage, "running", epoch=progress.epoch, update=progress.update)
        accelerator.print(f"{stage}: {len(train_set)} training / {len(val_set)} validation samples, "
                          f"{updates_per_epoch} updates per epoch, up to {t.epochs} epochs "
                          f"(patience {t.patience}), EMA {'on' if ema else 'off'}, mixup "
                          f"{'alpha ' + str(t.mixup_alpha) if t.mixup_alpha else 'off'}, distillation "
                          f"{'on' if teacher is not None else 'off'} -> {run_dir}")

    bar = tqdm(total=total_updates, initial=progress.update, desc=stage, unit="upd",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    log_train = TrainLog(accelerator, monitor, metrics, bar, optimizer, progress, updates_per_epoch,
                         images_per_update)

    def end_of_epoch() -> None:
        eval_model = ema.module if ema is not None else unwrapped
        outputs = predict(eval_model, val_loader, accelerator, activation)
        result = evaluate(outputs["probs"], outputs["target"], outputs["mask"])
        improved = stopping.step(result["score"], progress.epoch)
        record = {"update": progress.update, "epoch": progress.epoch, "val_score": result["score"],
                  "best_epoch": stopping.best_epoch}
        accelerator.log({"val_score": result["score"]}, step=progress.update)
        if accelerator.is_main_process:
            metrics.append(record)
            if improved:
                export(eval_model, run_dir / BEST_DIR, {**result, "epoch": progress.epoch}, outputs)
                runs.atomic_write_json(run_dir / VALIDATION_FILE, {**result, "epoch": progress.epoch,
                                                                   "update": progress.update})
        accelerator.wait_for_everyone()
        accelerator.print(f"{stage}: epoch {progress.epoch} validation score {result['score']:.4f}"
                          f"{' (best)' if improved else f' (best {stopping.best_score:.4f} at epoch {stopping.best_epoch})'}")

    model.train()
    while progress.update < stop_at and progress.epoch < t.epochs and not stopping.stopped:
        for batch in epoch_batches(accelerator, train_loader, progress, batches_per_epoch, stop_at):
            batch = dict(batch)
            if t.mixup_alpha:
                rng = np.random.default_rng(derived_seed(t.seed, progress.epoch, _MIXUP, progress.batch_in_epoch,
                                                         accelerator.process_index))
                batch["image"], batch["target"], batch["mask"], _ = mixup(
                    batch["image"], batch["target"], t.mixup_alpha, rng, batch["mask"])
            teacher_probs = None
            if teacher is not None:
                with torch.no_grad(), accelerator.autocast():
                    teacher_probs = torch.sigmoid(teacher(batch["image"]).float())
            if not train_step(accelerator, model, optimizer, scheduler, monitor, progress,
                              lambda: loss_fn(model(batch["image"]), batch, teacher_probs), o.clip_grad,
                              batch["skipped"], images_per_update):
                continue  # a micro-batch or an fp16 overflow step: no update, so neither EMA nor log moves
            if ema is not None:
                ema.update(unwrapped, step=progress.update)
            bar.update(1)
            if progress.update % t.log_every == 0:
                log_train()
            if t.checkpoint_every and progress.update % t.checkpoint_every == 0 and progress.update < stop_at:
                monitor.checkpoint(progress.update)
        if progress.batch_in_epoch >= batches_per_epoch:
            monitor.check_finite(progress.update)
            end_of_epoch()
            progress.epoch += 1
            progress.batch_in_epoch = 0
            monitor.checkpoint(progress.update)
    bar.close()
    if monitor.pending:
        log_train()
    if progress.batch_in_epoch:  # stopped mid-epoch
        monitor.checkpoint(progress.update)
    finished = stopping.stopped or progress.epoch >= t.epochs
    best: dict[str, Any] = {}
    if (run_dir / VALIDATION_FILE).is_file():
        best = json.loads((run_dir / VALIDATION_FILE).read_text(encoding="utf-8"))
    if accelerator.is_main_process:
        runs.plot_metrics(metrics.records, run_dir / "curves.png", ("loss", "lr", "val_score"),
                          title=f"{stage}, {run_dir.name}")
        write_status(run_dir, stage, "finished" if finished else "stopped", epoch=progress.epoch,
                     update=progress.update, best_epoch=stopping.best_epoch, best_score=stopping.best_score,
                     stopped_early=stopping.stopped,
                     checkpoint=monitor.checkpoint_ref())
        if not finished:
            accelerator.print(f"{stage}: stopped at update {progress.update}; continue with --resume")
    for tracker in accelerator.trackers:  # not end_training(): it ends the process group, which the next fold needs
        tracker.finish()
    return FitResult(run_dir, stopping.best_score, stopping.best_epoch, progress.epoch, stopping.stopped,
                     finished, best)

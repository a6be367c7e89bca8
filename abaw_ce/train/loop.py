"""Pieces of the training loop shared by MAE pretraining and the fine-tuning engine: the Accelerator,
sync-free loss bookkeeping, the NaN guard and checkpointing."""
from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration

from abaw_ce.data.processes import cpu_processes_requested
from abaw_ce.errors import InputError, OptionError
from abaw_ce.train import runs

STATUS_FILE = "status.json"


class NonFiniteLoss(RuntimeError):
    pass


def resolve_precision(choice: str | bool) -> str:
    """Accelerate's mixed_precision from the config's ``train.precision``."""
    if choice is False or choice == "fp32":  # YAML reads a bare `no` as false
        return "no"
    if choice == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if choice not in ("bf16", "fp16", "no"):
        raise OptionError(f"train.precision must be auto, bf16, fp16 or fp32, got {choice!r}")
    return choice


# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX512-BF16 and AMX on x86, BF16 on Arm.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively, where CPU autocast runs convolutions about twice as fast as
    fp32 (elsewhere bf16 is emulated and slower). False when ``cpuinfo`` cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and NATIVE_BF16_FLAGS & set(value.split()):
            return True
    return False


def inference_bf16(choice: str | bool, device: str) -> bool:
    """Whether inference on ``device`` runs under bf16 autocast, by the training rule: ``auto`` takes bf16 on a
    GPU that supports it and fp32 elsewhere; an explicit ``bf16`` is honoured on the CPU (it catches dtype
    errors before a GPU user meets them) and falls back to fp32 on a GPU without bf16."""
    resolved = resolve_precision(choice)
    if resolved != "bf16":
        return False
    return not str(device).startswith("cuda") or torch.cuda.is_bf16_supported()


def prefers_channels_last(model: torch.nn.Module) -> bool:
    """A CNN: more than one 2-D convolution (a ViT has one, its patch embedding)."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


def device_layout(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """The model with its 4-D weights channels-last when it is a CNN on a GPU, where NHWC convolutions run on the
    tensor cores without transposes; unchanged elsewhere (on a CPU it changes the numbers, not clearly the speed)."""
    if torch.device(device).type == "cuda" and prefers_channels_last(model):
        model.to(memory_format=torch.channels_last)
    return model


def make_accelerator(run_dir: Path, precision: str | bool, grad_accum: int) -> Accelerator:
    """Accumulation counted by updates (not tied to the end of the loader), TensorBoard under the run; batches
    copied to the GPU without blocking (the loaders pin memory there)."""
    return Accelerator(
        cpu=cpu_processes_requested(), mixed_precision=resolve_precision(precision),
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False),
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        step_scheduler_with_optimizer=False)


def in_own_process(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a freshly spawned Python process; its result (or its exception) comes back here. For a
    training stage whose Accelerator settings differ from this process's: Accelerate fixes the precision once per
    process, as each ``accelerate launch`` of a stage script would."""
    sys.stdout.flush()
    sys.stderr.flush()
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def restore(accelerator: Accelerator, checkpoint: Path, scheduler: Any, progress: runs.Progress) -> None:
    """Load a checkpoint into everything registered with the accelerator, and put the schedule back at the
    restored update."""
    try:
        accelerator.load_state(str(checkpoint))
    except (RuntimeError, KeyError, ValueError) as err:
        raise InputError(checkpoint, f"cannot restore this checkpoint into the configured model ({err})") from None
    scheduler.step_update(progress.update)
    accelerator.print(f"resumed {checkpoint} at update {progress.update} (epoch {progress.epoch}, "
                      f"batch {progress.batch_in_epoch})")


def read_status(run_dir: Path) -> dict:
    """A run folder's status (empty when it has none yet)."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_status(run_dir: Path, stage: str, state: str, **extra) -> None:
    runs.atomic_write_json(run_dir / STATUS_FILE, {"stage": stage, "state": state, **extra})


class LossMonitor:
    """Accumulates losses on the device (no host sync per step); syncs only when asked to report, check or
    checkpoint. A non-finite loss stops the run without writing a checkpoint from the bad weights."""

    def __init__(self, accelerator: Accelerator, run_dir: Path, stage: str, keep_checkpoints: int,
                 last_good: Path | None = None):
        self.accelerator, self.run_dir, self.stage = accelerator, run_dir, stage
        self.keep, self.last_good = keep_checkpoints, last_good
        device = accelerator.device
        self.loss_sum = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)
        self.nonfinite = torch.zeros((), device=device, dtype=torch.bool)
        self.skipped = torch.zeros((), device=device, dtype=torch.long)

    def add(self, loss: torch.Tensor, skipped: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.loss_sum += loss
        self.count += 1
        self.nonfinite |= ~torch.isfinite(loss)
        self.skipped += skipped.sum().to(self.skipped.device)

    @property
    def pending(self) -> bool:
        return bool(self.count.item() > 0)

    def check_finite(self, update: int) -> None:
        if self.accelerator.reduce(self.nonfinite.long(), "sum").item() > 0:
            where = (f"the last good checkpoint is {self.last_good}" if self.last_good
                     else "no checkpoint was saved yet")
            message = (f"{self.stage}: the loss became NaN/inf before update {update}; stopped without saving. "
                       f"{where}. Lower the learning rate, set optim.clip_grad, or check the data")
            if self.accelerator.is_main_process:
                write_status(self.run_dir, self.stage, "failed", update=update, reason=message)
            raise NonFiniteLoss(message)

    def checkpoint(self, update: int) -> Path:
        self.check_finite(update)
        self.last_good = runs.save_checkpoint(self.accelerator, self.run_dir, update, self.keep)
        return self.last_good

    def take(self, update: int) -> tuple[float, int]:
        """(mean loss since the last take over all processes, images skipped since then); resets both."""
        self.check_finite(update)
        reduce = self.accelerator.reduce
        loss = (reduce(self.loss_sum, "sum") / reduce(self.count, "sum").clamp(min=1)).item()
        skipped = int(reduce(self.skipped, "sum").item())
        self.loss_sum.zero_()
        self.count.zero_()
        self.skipped.zero_()
        return loss, skipped

    def checkpoint_ref(self) -> str | None:
        return f"{runs.CHECKPOINT_DIR}/{self.last_good.name}" if self.last_good else None


def epoch_batches(accelerator: Accelerator, loader: Any, progress: runs.Progress, batches_per_epoch: int,
                  stop_at: int) -> Iterator[Any]:
    """The batches of the current epoch still to do: skips those a resumed run already consumed, and stops
    at the epoch's last whole update or at ``stop_at`` updates."""
    loader.set_epoch(progress.epoch)
    skip = progress.batch_in_epoch
    epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
    epoch_loader.set_epoch(progress.epoch)
    for batch in epoch_loader:
        if progress.batch_in_epoch >= batches_per_epoch or progress.update >= stop_at:
            return
        yield batch


def train_step(accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scheduler: Any, monitor: LossMonitor, progress: runs.Progress,
               compute_loss: Callable[[], torch.Tensor], clip_grad: float | None, skipped: torch.Tensor,
               images_per_update: int) -> bool:
    """One micro-batch: loss, backward and (on accumulation boundaries) clipping, the optimizer step and the
    per-update schedule; the bookkeeping in ``progress`` and ``monitor``. True when an update happened.

    A step that fp16's GradScaler skipped (inf/NaN gradients; it lowers its scale instead) is no update: the
    batch counts as consumed (``batch_in_epoch``, so a resumed run skips it too), but ``progress.update``, the
    schedule (a function of it) and whatever the caller does on an update (the EMA) stay where they were."""
    with accelerator.accumulate(model):
        loss = compute_loss()
        accelerator.backward(loss)
        if accelerator.sync_gradients and clip_grad:
            accelerator.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    progress.batch_in_epoch += 1
    monitor.add(loss, skipped)
    if not accelerator.sync_gradients or accelerator.optimizer_step_was_skipped:
        return False
    progress.update += 1
    progress.images += images_per_update
    scheduler.step_update(progress.update)
    return True


class TrainLog:
    """The training record every ``log_every`` updates: mean loss since the last one, lr, images/s and
    skipped images, to the trackers, ``metrics.json`` (main process) and the progress bar."""

    def __init__(self, accelerator: Accelerator, monitor: LossMonitor, metrics: runs.MetricsLog, bar: Any,
                 optimizer: torch.optim.Optimizer, progress: runs.Progress, updates_per_epoch: int,
                 images_per_update: int):
        self.accelerator, self.monitor, self.metrics, self.bar = accelerator, monitor, metrics, bar
        self.optimizer, self.progress = optimizer, progress
        self.updates_per_epoch, self.images_per_update = updates_per_epoch, images_per_update
        self.tick, self.tick_update = time.perf_counter(), progress.update

    def __call__(self) -> None:
        progress = self.progress
        loss, skipped = self.monitor.take(progress.update)
        progress.skipped += skipped
        now = time.perf_counter()
        rate = (progress.update - self.tick_update) * self.images_per_update / max(now - self.tick, 1e-9)
        record = {"update": progress.update, "epoch": round(progress.update / self.updates_per_epoch, 3),
                  "loss": loss, "lr": max(g["lr"] for g in self.optimizer.param_groups), "images_per_s": rate,
                  "skipped_images": progress.skipped}
        self.accelerator.log({k: v for k, v in record.items() if k != "update"}, step=progress.update)
        if self.accelerator.is_main_process:
            self.metrics.append(record)
        self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}", refresh=False)  # the bar redraws on its own pace
        self.tick, self.tick_update = now, progress.update

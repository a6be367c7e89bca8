"""Stage 1: MAE pretraining of the face encoder with Accelerate (``pretrain/mae.py``)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.utils import save_image

from abaw_ce.data.images import FaceImages
from abaw_ce.errors import OptionError
from abaw_ce.models.export import encoder_state_from_pretraining, save_encoder
from abaw_ce.models.mae import DecoderArch, MaskedAutoencoder
from abaw_ce.models.vit import VitArch, vit_arch
from abaw_ce.progress import progress_bar
from abaw_ce.train import runs
from abaw_ce.train.loop import (STATUS_FILE, LossMonitor, NonFiniteLoss, TrainLog, epoch_batches,
                                make_accelerator, restore, train_step,
                                write_status)
from abaw_ce.train.sampling import EpochSampler, SeededSamples, derived_seed

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
RECON_DIR = "reconstructions"
__all__ = ["pretrain_mae", "NonFiniteLoss", "STATUS_FILE", "build_mae", "save_reconstructions"]
# Settings a resumed run may not change (anything else, e.g. epochs or workers, may be).
FROZEN_ON_RESUME = ("model", "optim", "data.sources", "data.mean", "data.std", "data.crop_scale", "data.hflip",
                    "train.batch_size", "train.grad_accum", "train.seed")


def build_mae(config: DictConfig) -> MaskedAutoencoder:
    m = config.model
    arch = vit_arch(m.size, img_size=m.img_size, patch_size=m.patch_size, embed_dim=m.embed_dim, depth=m.depth,
                    num_heads=m.num_heads)
    decoder = DecoderArch(embed_dim=m.decoder_embed_dim, depth=m.decoder_depth, num_heads=m.decoder_num_heads)
    return MaskedAutoencoder(arch, decoder, mask_ratio=m.mask_ratio, norm_pix_loss=m.norm_pix_loss)


class MaeSampleMaker:
    """uint8 face -> {image: normalised crop, noise: per-patch mask noise}; randomness from the global RNG,
    which ``SeededSamples`` seeds per sample."""

    def __init__(self, img_size: int, num_patches: int, mean: list[float], std: list[float],
                 crop_scale: tuple[float, float] | None = (0.2, 1.0), hflip: float = 0.5):
        steps: list[Any] = []
        if crop_scale is None:  # deterministic view for visualisation
            steps += [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
        else:
            steps.append(v2.RandomResizedCrop(img_size, scale=tuple(crop_scale), antialias=True,
                                              interpolation=v2.InterpolationMode.BICUBIC))
            if hflip > 0:
                steps.append(v2.RandomHorizontalFlip(hflip))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        self.transform = v2.Compose(steps)
        self.num_patches = num_patches

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"image": self.transform(image), "noise": torch.rand(self.num_patches)}


def _check_settings(config: DictConfig) -> None:
    runs.check_positive_ints(config.train, "train", ("epochs", "batch_size", "grad_accum", "log_every",
                                                     "checkpoint_every", "keep_checkpoints"))
    if not config.data.sources:
        raise OptionError("data.sources is empty; give at least one image folder, packed store or manifest "
                          "(e.g. data.sources=[data/faces])")


def _resolve_run(config: DictConfig, resume: str | None, overrides: list[str]
                 ) -> tuple[DictConfig, Path, Path | None]:
    """(config, run folder, checkpoint to resume from or None), nothing written yet: ``pretrain_mae`` creates a
    new run's folder (``runs.create_run_dir``) only once its data opened. A resume names the run folder (its
    newest checkpoint) or one of its checkpoints."""
    if resume is None:
        return config, runs.new_run_dir("mae", config), None
    run_dir, checkpoint = runs.find_resume_checkpoint(resume)
    return runs.resumed_config(run_dir, overrides, FROZEN_ON_RESUME), run_dir, checkpoint


@torch.no_grad()
def save_reconstructions(model: MaskedAutoencoder, batch: dict[str, torch.Tensor], mean: list[float],
                         std: list[float], path: Path) -> Path:
    """PNG grid: originals, masked inputs, reconstructions (visible patches pasted back), one row each."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    images, noise = batch["image"].to(device), batch["noise"].to(device)
    _, pred, mask = model(images, noise)
    masked, pasted = model.reconstruct(images, pred, mask)
    model.train(was_training)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    rows = [(t.float() * s + m).clamp(0, 1) for t in (images, masked, pasted)]
    # Masked patches show as mid-grey rather than the colour of "zero after normalisation".
    keep = (unpatch_mask(mask, model.arch) < 0.5)
    rows[1] = torch.where(keep, rows[1], torch.full_like(rows[1], 0.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows), str(path), nrow=images.shape[0], padding=2, pad_value=1.0)
    return path


def unpatch_mask(mask: torch.Tensor, arch: VitArch) -> torch.Tensor:
    """(B, L) patch mask -> (B, 1, H, W) pixel mask."""
    grid, p = arch.grid, arch.patch_size
    return mask.view(-1, 1, grid, grid).repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)


def pretrain_mae(config: DictConfig, resume: str | None = None, overrides: list[str] | None = None) -> Path:
    """Run (or resume) MAE pretraining; returns the run folder."""
    config, run_dir, checkpoint = _resolve_run(config, resume, list(overrides or []))
    _check_settings(config)
    # Open the data first: a wrong path fails in a second, before any process group starts.
    dataset = FaceImages(list(config.data.sources))
    accelerator = make_accelerator(run_dir, config.train.precision, config.train.grad_accum)
    if checkpoint is None:
        run_dir = runs.create_run_dir(run_dir, config, accelerator)
    run = _set_up(config, run_dir, accelerator, dataset, checkpoint)
    _start(run)
    if checkpoint is not None and run.progress.update >= run.stop_at and (run_dir / EXPORT_DIR).is_dir():
        accelerator.print(f"{run_dir} already finished at update {run.progress.update}; nothing to do")
        accelerator.end_training()
        return run_dir
    _begin(run)
    while run.progress.update < run.stop_at:
        _train_epoch(run)
    _finish(run)
    accelerator.end_training()
    return run_dir


@dataclass
class _MaeRun:
    """What the steps of one ``pretrain_mae`` share: set up by ``_set_up``, the rest by ``_start``/``_begin``."""
    config: DictConfig
    run_dir: Path
    accelerator: Accelerator
    dataset: FaceImages
    checkpoint: Path | None  # to resume from
    arch: VitArch
    model: MaskedAutoencoder  # as prepared by the accelerator
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    batches_per_epoch: int  # micro-batches per process, whole updates only
    updates_per_epoch: int
    effective_batch: int  # images per update, all processes
    lr: float
    scheduler: CosineLRScheduler
    progress: runs.Progress
    metrics: runs.MetricsLog = field(init=False)
    vis_batch: dict[str, torch.Tensor] | None = field(init=False, default=None)
    unwrapped: MaskedAutoencoder = field(init=False)
    stop_at: int = field(init=False)
    monitor: LossMonitor = field(init=False)
    bar: Any = field(init=False)
    log_now: TrainLog = field(init=False)

    @property
    def total_updates(self) -> int:
        return self.updates_per_epoch * self.config.train.epochs


def _set_up(config: DictConfig, run_dir: Path, accelerator: Accelerator, dataset: FaceImages,
            checkpoint: Path | None) -> _MaeRun:
    """The seeded model, the loader, AdamW (lr by the scaling rule unless given), prepared; warmup then
    cosine; what the checkpoints hold."""
    t, o = config.train, config.optim
    set_seed(t.seed)
    model = build_mae(config)
    arch = model.arch
    loader = _loader(config, arch, dataset, accelerator.num_processes)
    effective_batch = t.batch_size * accelerator.num_processes * t.grad_accum
    lr = o.lr if o.lr is not None else o.base_lr * effective_batch / 256
    optimizer = create_optimizer_v2(model, "adamw", lr=lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    batches_per_epoch = (len(loader) // t.grad_accum) * t.grad_accum  # whole updates only
    updates_per_epoch = batches_per_epoch // t.grad_accum
    if updates_per_epoch < 1:
        raise OptionError(f"an epoch of {len(loader)} batches per process is shorter than train.grad_accum "
                          f"({t.grad_accum}); lower grad_accum or batch_size")
    total_updates = updates_per_epoch * t.epochs
    warmup = min(int(round(o.warmup_epochs * updates_per_epoch)), total_updates - 1)
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, total_updates - warmup), lr_min=o.min_lr,
                                  warmup_t=warmup, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    progress = runs.Progress()
    accelerator.register_for_checkpointing(scheduler, progress)
    return _MaeRun(config, run_dir, accelerator, dataset, checkpoint, arch, model, optimizer, loader,
                   batches_per_epoch, updates_per_epoch, effective_batch, lr, scheduler, progress)


def _loader(config: DictConfig, arch: VitArch, dataset: FaceImages, num_processes: int) -> DataLoader:
    """Augmented crops and mask noise, seeded per sample, in the seeded epoch order; whole batches only."""
    t = config.train
    maker = MaeSampleMaker(arch.img_size, arch.num_patches, list(config.data.mean), list(config.data.std),
                           tuple(config.data.crop_scale), config.data.hflip)
    samples = SeededSamples(dataset, maker, seed=t.seed)
    global_batch = t.batch_size * num_processes
    if len(samples) < global_batch:
        raise OptionError(f"only {len(samples)} images in data.sources, fewer than one global batch "
                          f"({t.batch_size} x {num_processes} processes); lower train.batch_size")
    sampler = EpochSampler(len(samples), seed=t.seed)
    return DataLoader(samples, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                      num_workers=config.data.num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)


def _start(run: _MaeRun) -> None:
    """Restore the checkpoint (if any); the metrics log (cut back to it), the trackers; on the main process
    the visualisation batch, the summary line and the running status; where to stop."""
    t, accelerator, progress, arch = run.config.train, run.accelerator, run.progress, run.arch
    if run.checkpoint is not None:
        restore(accelerator, run.checkpoint, run.scheduler, progress)
    run.metrics = runs.MetricsLog(run.run_dir / runs.METRICS_FILE,
                                  resume_update=progress.update if run.checkpoint else None)
    accelerator.init_trackers("mae", config=runs.flat_config(run.config))
    if accelerator.is_main_process:
        run.vis_batch = _visualisation_batch(run.config, arch, run.dataset)
        accelerator.print(f"MAE pretraining: {len(run.dataset)} images from {len(run.dataset.infos)} source(s), "
                          f"ViT width {arch.embed_dim} depth {arch.depth} at {arch.img_size}px, "
                          f"{accelerator.num_processes} process(es), effective batch {run.effective_batch}, "
                          f"lr {run.lr:.3g}, {run.total_updates} updates -> {run.run_dir}")
        write_status(run.run_dir, "mae", "running", update=progress.update, total_updates=run.total_updates)
    run.unwrapped = accelerator.unwrap_model(run.model)
    total_updates = run.total_updates
    run.stop_at = total_updates if t.stop_after_updates is None else min(total_updates,
                                                                         int(t.stop_after_updates))


def _visualisation_batch(config: DictConfig, arch: VitArch, dataset: FaceImages) -> dict[str, torch.Tensor]:
    """Up to ``train.vis_images`` images spread over the data, centre-cropped, with fixed mask noise."""
    t = config.train
    vis_maker = MaeSampleMaker(arch.img_size, arch.num_patches, list(config.data.mean), list(config.data.std),
                               crop_scale=None)
    vis_samples = SeededSamples(dataset, vis_maker, seed=derived_seed(t.seed, 1))
    picks = torch.linspace(0, len(dataset) - 1, min(t.vis_images, len(dataset))).round().long().tolist()
    return torch.utils.data.default_collate([vis_samples[i] for i in picks])


def _begin(run: _MaeRun) -> None:
    """The loss monitor, the progress bar and the training log; training mode; the reconstructions of a
    run's start."""
    accelerator, progress = run.accelerator, run.progress
    run.monitor = LossMonitor(accelerator, run.run_dir, "mae", run.config.train.keep_checkpoints,
                              last_good=run.checkpoint)
    run.bar = progress_bar(total=run.total_updates, initial=progress.update, desc="mae", unit="upd",
                           disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    run.log_now = TrainLog(accelerator, run.monitor, run.metrics, run.bar, run.optimizer, progress,
                           run.updates_per_epoch, run.effective_batch)
    run.model.train()
    if progress.update == 0 and accelerator.is_main_process:
        _visualise(run)


def _visualise(run: _MaeRun) -> None:
    if run.accelerator.is_main_process and run.vis_batch is not None:
        save_reconstructions(run.unwrapped, run.vis_batch, list(run.config.data.mean), list(run.config.data.std),
                             run.run_dir / RECON_DIR / f"{runs.checkpoint_name(run.progress.update)}.png")


def _train_epoch(run: _MaeRun) -> None:
    """The current epoch's remaining batches: a step each; on every update the bar, the training log, the
    interval checkpoint and reconstructions."""
    t, accelerator, progress, model = run.config.train, run.accelerator, run.progress, run.model
    for batch in epoch_batches(accelerator, run.loader, progress, run.batches_per_epoch, run.stop_at):
        if not train_step(accelerator, model, run.optimizer, run.scheduler, run.monitor, progress,
                          lambda: model(batch["image"], batch["noise"])[0], run.config.optim.clip_grad,
                          batch["skipped"], run.effective_batch):
            continue
        run.bar.update(1)
        if progress.update % t.log_every == 0:
            run.log_now()
        if progress.update % t.checkpoint_every == 0 and progress.update < run.stop_at:
            run.monitor.checkpoint(progress.update)
        if t.vis_every and progress.update % t.vis_every == 0:
            _visualise(run)
    if progress.batch_in_epoch >= run.batches_per_epoch:
        # also when fp16 skipped every step of the epoch (no update, so no log checked the loss)
        run.monitor.check_finite(progress.update)
        progress.epoch += 1
        progress.batch_in_epoch = 0


def _finish(run: _MaeRun) -> None:
    """The last log and checkpoint; on the main process the last reconstructions, the encoder export of a
    finished run, the loss curves and the final status."""
    t, accelerator, progress, run_dir = run.config.train, run.accelerator, run.progress, run.run_dir
    run.bar.close()
    if run.monitor.pending:
        run.log_now()
    run.monitor.checkpoint(progress.update)
    finished = progress.update >= run.total_updates
    if accelerator.is_main_process:
        if t.vis_every == 0 or progress.update % t.vis_every:
            _visualise(run)
        if finished:
            export = save_encoder(
                run_dir / EXPORT_DIR, encoder_state_from_pretraining(run.unwrapped.encoder), run.arch,
                list(run.config.data.mean), list(run.config.data.std), overwrite=True,
                source={"stage": "mae", "run": run_dir.name, "update": progress.update, "epochs": progress.epoch,
                        "images_seen": progress.images, "config": runs.CONFIG_FILE})
            accelerator.print(f"exported encoder -> {export}")
        runs.plot_metrics(run.metrics.records, run_dir / "loss.png", ("loss", "lr", "images_per_s"),
                          title=f"MAE pretraining, {run_dir.name}")
        write_status(run_dir, "mae", "finished" if finished else "stopped", update=progress.update,
                     total_updates=run.total_updates, checkpoint=run.monitor.checkpoint_ref())
        if not finished:
            accelerator.print(f"stopped at update {progress.update}/{run.total_updates}; continue with "
                              f"--resume {run_dir}")

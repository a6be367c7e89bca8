"""Stage 1: MAE pretraining of the face encoder with Accelerate (``pretrain/mae.py``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, set_seed
from omegaconf import DictConfig, OmegaConf
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.utils import save_image
from tqdm.auto import tqdm

from abaw_ce.data.images import FaceImages
from abaw_ce.errors import OptionError
from abaw_ce.models.export import encoder_state_from_pretraining, save_encoder
from abaw_ce.models.mae import DecoderArch, MaskedAutoencoder
from abaw_ce.models.vit import VitArch, vit_arch
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
    """(config, run folder, checkpoint to resume from or None)."""
    if resume is None:
        run_dir = Path(config.output.dir) if config.output.dir else Path("runs") / runs.new_run_name("mae")
        return config, run_dir, None
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
    t, o = config.train, config.optim
    # Open the data first: a wrong path fails in a second, before any process group starts.
    dataset = FaceImages(list(config.data.sources))
    accelerator = make_accelerator(run_dir, t.precision, t.grad_accum)
    # Every process must agree on the folder (a default name carries a timestamp).
    shared = [str(run_dir)]
    broadcast_object_list(shared)
    run_dir = Path(shared[0])
    if checkpoint is None:
        if accelerator.is_main_process:
            runs.prepare_run_dir(run_dir, overwrite=bool(config.output.overwrite))
            OmegaConf.save(config, run_dir / runs.CONFIG_FILE)
        accelerator.wait_for_everyone()

    set_seed(t.seed)
    model = build_mae(config)
    arch = model.arch
    maker = MaeSampleMaker(arch.img_size, arch.num_patches, list(config.data.mean), list(config.data.std),
                           tuple(config.data.crop_scale), config.data.hflip)
    samples = SeededSamples(dataset, maker, seed=t.seed)
    global_batch = t.batch_size * accelerator.num_processes
    if len(samples) < global_batch:
        raise OptionError(f"only {len(samples)} images in data.sources, fewer than one global batch "
                          f"({t.batch_size} x {accelerator.num_processes} processes); lower train.batch_size")
    sampler = EpochSampler(len(samples), seed=t.seed)
    loader = DataLoader(samples, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                        num_workers=config.data.num_workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False)

    effective_batch = global_batch * t.grad_accum
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

    if checkpoint is not None:
        restore(accelerator, checkpoint, scheduler, progress)
    metrics = runs.MetricsLog(run_dir / runs.METRICS_FILE, resume_update=progress.update if checkpoint else None)
    accelerator.init_trackers("mae", config=runs.flat_config(config))

    vis_batch = None
    if accelerator.is_main_process:
        vis_maker = MaeSampleMaker(arch.img_size, arch.num_patches, list(config.data.mean), list(config.data.std),
                                   crop_scale=None)
        vis_samples = SeededSamples(dataset, vis_maker, seed=derived_seed(t.seed, 1))
        picks = torch.linspace(0, len(dataset) - 1, min(t.vis_images, len(dataset))).round().long().tolist()
        vis_batch = torch.utils.data.default_collate([vis_samples[i] for i in picks])
        accelerator.print(f"MAE pretraining: {len(dataset)} images from {len(dataset.infos)} source(s), "
                          f"ViT width {arch.embed_dim} depth {arch.depth} at {arch.img_size}px, "
                          f"{accelerator.num_processes} process(es), effective batch {effective_batch}, "
                          f"lr {lr:.3g}, {total_updates} updates -> {run_dir}")
        write_status(run_dir, "mae", "running", update=progress.update, total_updates=total_updates)

    unwrapped = accelerator.unwrap_model(model)
    stop_at = total_updates if t.stop_after_updates is None else min(total_updates, int(t.stop_after_updates))
    if checkpoint is not None and progress.update >= stop_at and (run_dir / EXPORT_DIR).is_dir():
        accelerator.print(f"{run_dir} already finished at update {progress.update}; nothing to do")
        accelerator.end_training()
        return run_dir
    monitor = LossMonitor(accelerator, run_dir, "mae", t.keep_checkpoints, last_good=checkpoint)
    bar = tqdm(total=total_updates, initial=progress.update, desc="mae", unit="upd",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    log_now = TrainLog(accelerator, monitor, metrics, bar, optimizer, progress, updates_per_epoch,
                       effective_batch)

    def visualise_now() -> None:
        if accelerator.is_main_process and vis_batch is not None:
            save_reconstructions(unwrapped, vis_batch, list(config.data.mean), list(config.data.std),
                                 run_dir / RECON_DIR / f"{runs.checkpoint_name(progress.update)}.png")

    model.train()
    if progress.update == 0 and accelerator.is_main_process:
        visualise_now()
    while progress.update < stop_at:
        for batch in epoch_batches(accelerator, loader, progress, batches_per_epoch, stop_at):
            if not train_step(accelerator, model, optimizer, scheduler, monitor, progress,
                              lambda: model(batch["image"], batch["noise"])[0], o.clip_grad, batch["skipped"],
                              effective_batch):
                continue
            bar.update(1)
            if progress.update % t.log_every == 0:
                log_now()
            if progress.update % t.checkpoint_every == 0 and progress.update < stop_at:
                monitor.checkpoint(progress.update)
            if t.vis_every and progress.update % t.vis_every == 0:
                visualise_now()
        if progress.batch_in_epoch >= batches_per_epoch:
            # also when fp16 skipped every step of the epoch (no update, so no log checked the loss)
            monitor.check_finite(progress.update)
            progress.epoch += 1
            progress.batch_in_epoch = 0
    bar.close()
    if monitor.pending:
        log_now()
    monitor.checkpoint(progress.update)
    finished = progress.update >= total_updates
    if accelerator.is_main_process:
        if t.vis_every == 0 or progress.update % t.vis_every:
            visualise_now()
        if finished:
            export = save_encoder(
                run_dir / EXPORT_DIR, encoder_state_from_pretraining(unwrapped.encoder), arch,
                list(config.data.mean), list(config.data.std), overwrite=True,
                source={"stage": "mae", "run": run_dir.name, "update": progress.update, "epochs": progress.epoch,
                        "images_seen": progress.images, "config": runs.CONFIG_FILE})
            accelerator.print(f"exported encoder -> {export}")
        runs.plot_metrics(metrics.records, run_dir / "loss.png", ("loss", "lr", "images_per_s"),
                          title=f"MAE pretraining, {run_dir.name}")
        write_status(run_dir, "mae", "finished" if finished else "stopped", update=progress.update,
                     total_updates=total_updates, checkpoint=monitor.checkpoint_ref())
        if not finished:
            accelerator.print(f"stopped at update {progress.update}/{total_updates}; continue with "
                              f"--resume {run_dir}")
    accelerator.end_training()
    return run_dir

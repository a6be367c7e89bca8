"""Batched inference of fold models over the faces step's packed crops, saved per video.

Every export is loaded through the models' registry (``abaw_ce.models.registry.load_export``), whatever its
kind. Every batch of crops goes through every model (optionally also mirrored). Their basic-emotion probabilities
(sigmoid outputs of the emotion track, the expression softmax of a C-EXPR-NET) are put on one scale
(``fusion.common_scale``: a distribution over the six emotions per frame), averaged within each run, then over
runs with the shares ``RunShares`` decides once. Frames without a face keep NaN rows so fusion settings can change
later without running the models again (``probs/<video>.npz``: frames, face_found, probs).
"""
from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from abaw_ce import labels
from abaw_ce.audio import FrameClock, MelSettings, frame_windows, log_mel, read_audio
from abaw_ce.data.packed import PackedFaces, read_index
from abaw_ce.errors import InputError, OptionError
from abaw_ce.faces.pipeline import FRAMES_CSV, STORE_DIR
from abaw_ce.fusion import common_scale
from abaw_ce.models.registry import is_export, load_export
from abaw_ce.progress import progress_bar
from abaw_ce.submission.run_checks import is_finished
from abaw_ce.train.loop import device_layout

PROBS_DIR = "probs"
# The submission's name for the track of an export kind, where it differs (a ViT or timm classifier: the emotion
# track; an ensemble may mix both).
TRACK_OF_KIND = {"vit": "emotion", "timm": "emotion"}


@dataclass
class LoadedModel:
    path: Path
    model: nn.Module
    img_size: int
    mean: list[float]
    std: list[float]
    track: str = "emotion"  # "emotion" (a ViT or timm classifier), "cexprnet" or "multitask"
    run_index: int = 0  # which of the requested runs it came from: folds are averaged within their run first
    modality: str = "visual"  # "audio": a C-EXPR-NET-A reading log-mel windows of the video's sound
    audio: dict | None = None  # the audio model's input settings (n_mels, width, mean, std, sample_rate)
    # how the model's outputs are read: "sigmoid_logits" or "probabilities"; by default, sigmoid logits for the
    # emotion track, probabilities for the others
    scores: str | None = None

    def __post_init__(self) -> None:
        if self.scores is None:
            self.scores = "sigmoid_logits" if self.track == "emotion" else "probabilities"

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The model's basic-emotion probabilities on the common scale (each row sums to 1)."""
        out = self.model(x).float()
        return common_scale(torch.sigmoid(out) if self.scores == "sigmoid_logits" else out)


def find_exports(run: str | Path) -> list[Path]:
    """Model exports of a run: the ``export`` of every finished fold of an emotion run (an unfinished fold's
    export is only its best epoch so far, and is left out), the ``export`` of a C-EXPR-NET or multi-task run,
    or the folder itself if it is an export."""
    run = Path(run)
    for folder in (run, run / "export"):
        if is_export(folder):
            return [folder]
    folds = sorted(p for p in run.glob("fold_*/export") if is_export(p))
    exports = [e for e in folds if is_finished(e.parent)]
    if not exports:
        raise InputError(run, "no finished fold here (every fold_*/export belongs to an unfinished fold)" if folds
                         else "no model export here (expected fold_*/export folders of an emotion run, or an "
                              "export folder)")
    return exports


def load_models(runs: Sequence[str | Path], device: torch.device | str = "cpu", compile_models: bool = False
                ) -> list[LoadedModel]:
    """Every export of every run; all must output the six basic emotions in the kit's order (``load_export``
    refuses any other). A CNN on a GPU is made channels-last; ``compile_models`` wraps each in ``torch.compile``."""
    loaded = []
    for r, run in enumerate(runs):
        for path in find_exports(run):
            module, meta = load_export(path)
            module = device_layout(module.to(device).eval(), device)
            if compile_models:
                module = torch.compile(module)
            loaded.append(LoadedModel(path, module, int(meta["img_size"]), list(meta["mean"]),
                                      list(meta["std"]), track=TRACK_OF_KIND.get(meta["kind"], meta["kind"]),
                                      run_index=r, modality=meta["modality"], audio=meta["audio"],
                                      scores=meta["scores"]))
    if not loaded:
        raise ValueError("no model to run")
    return loaded


def normalisation(m: LoadedModel, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input mean and std as (1, 3, 1, 1) tensors on ``device``."""
    return (torch.tensor(m.mean, device=device).view(1, 3, 1, 1), torch.tensor(m.std, device=device).view(1, 3, 1, 1))


def prepare_batch(batch: torch.Tensor, m: LoadedModel, mean: torch.Tensor | None = None,
                  std: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, 3, H, W) crops -> the model's input size and normalisation (``mean``/``std`` as
    ``normalisation`` gives them, made here when not given)."""
    x = batch.float().div_(255)
    if x.shape[-1] != m.img_size or x.shape[-2] != m.img_size:
        x = F.interpolate(x, size=(m.img_size, m.img_size), mode="bilinear", antialias=True, align_corners=False)
    if mean is None or std is None:
        mean, std = normalisation(m, x.device)
    return (x - mean) / std


@dataclass(frozen=True)
class RunShares:
    """Each requested run's share of the ensemble, decided once for every part of the submission.

    A run's share is its weight over the sum of all runs' weights (equal by default), whatever its track or
    modality. Inside a run the share is split evenly over its models (five folds count as one run). The visual
    runs' models are averaged with these shares; the audio runs' total share is the late-fusion weight of the
    audio track, so the final per-frame mixture gives every run exactly its share.
    """
    shares: tuple[float, ...]  # per requested run; they sum to 1
    modalities: tuple[str, ...]  # per requested run: "visual" or "audio"

    @classmethod
    def of(cls, models: Sequence[LoadedModel], run_weights: Sequence[float] | None = None,
           n_runs: int | None = None) -> RunShares:
        """``n_runs`` requested runs (default: as many as the models name), ``run_weights`` one per run."""
        n_runs = n_runs if n_runs is not None else max(m.run_index for m in models) + 1
        weights = np.ones(n_runs) if run_weights is None else np.asarray(run_weights, dtype=np.float64)
        usable = np.all(np.isfinite(weights)) and np.all(weights >= 0) and weights.sum() > 0
        if weights.shape != (n_runs,) or not usable:
            raise OptionError(f"--run-weights must be {n_runs} non-negative numbers (one per run) with a positive "
                              f"sum, got {None if run_weights is None else list(run_weights)}")
        modalities = []
        for r in range(n_runs):
            kinds = {m.modality for m in models if m.run_index == r}
            if len(kinds) > 1:
                raise ValueError(f"run {r} has models of modalities {sorted(kinds)}; expected one")
            modalities.append(kinds.pop() if kinds else "none")  # none: a subset of the models was given
        present = np.array([m != "none" for m in modalities]) * weights
        if present.sum() <= 0:
            raise OptionError(f"the runs given have weight 0 (run weights {list(weights)})")
        return cls(tuple(float(w) for w in present / present.sum()), tuple(modalities))

    def modality_share(self, modality: str) -> float:
        """The total share of the runs of one modality (the audio late-fusion weight for "audio")."""
        return float(sum(s for s, m in zip(self.shares, self.modalities) if m == modality))

    def model_weights(self, models: Sequence[LoadedModel]) -> list[float]:
        """Each model's weight within its modality's average: its run's share over the modality's share, split
        over the run's models (0 for a run of share 0, or a modality whose runs all have share 0)."""
        sizes = Counter(m.run_index for m in models)
        totals = {m.modality: self.modality_share(m.modality) for m in models}
        return [self.shares[m.run_index] / totals[m.modality] / sizes[m.run_index] if totals[m.modality] > 0 else 0.0
                for m in models]


class CropBatches(Dataset):
    """Batch ``b`` of a packed store: (b, its uint8 crops), rows ``b * batch_size`` on, read in one slice. The
    batches are fixed by the store alone, so any split of them over processes computes the same numbers."""

    def __init__(self, store_dir: str | Path, batch_size: int):
        if batch_size < 1:
            raise OptionError(f"batch size must be >= 1, got {batch_size}")
        self.faces = PackedFaces(store_dir)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.faces) // self.batch_size)

    def rows(self, b: int) -> np.ndarray:
        return np.arange(b * self.batch_size, min((b + 1) * self.batch_size, len(self.faces)))

    def __getitem__(self, b: int) -> tuple[int, torch.Tensor]:
        rows = self.rows(b)
        return b, self.faces.read_range(int(rows[0]), len(rows))  # read, not mapped: memory flat in store size


def default_workers(device: torch.device) -> int:
    """Loader workers: on a GPU, reading overlaps compute; on a CPU the cores are the models' (reading a batch of
    crops from the store is one read of consecutive rows, far cheaper than the models)."""
    return min(4, os.cpu_count() or 1) if device.type == "cuda" else 0


def predict_crops(store_dir: str | Path, models: Sequence[LoadedModel], shares: RunShares | None = None,
                  batch_size: int = 256, flip: bool = False, device: torch.device | str = "cpu", bf16: bool = False,
                  progress: bool = True, n_outputs: int = len(labels.BASIC_EMOTIONS),
                  workers: int | None = None) -> np.ndarray:
    """(N, 6) probabilities for every crop of a store: the mean over each run's models (and mirrored crops
    with ``flip``), then the mean over runs with their ``shares`` (default: equal). Audio models are not given
    crops (``predict_audio``), nor models whose run has share 0."""
    return predict_crop_part(store_dir, models, shares, batch_size, flip, device, bf16, progress, n_outputs,
                             (0, 1), workers)[1]


@torch.no_grad()
def predict_crop_part(store_dir: str | Path, models: Sequence[LoadedModel], shares: RunShares | None = None,
                      batch_size: int = 256, flip: bool = False, device: torch.device | str = "cpu",
                      bf16: bool = False, progress: bool = True, n_outputs: int = len(labels.BASIC_EMOTIONS),
                      part: tuple[int, int] = (0, 1), workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``predict_crops`` for one process's part: (store rows, their probabilities).

    ``part`` (rank, processes): this process computes batches rank, rank + processes, ... of the store's fixed
    batches, so a row's numbers do not depend on how many processes share the work. Crops come through a
    DataLoader (``workers``, pinned memory and non-blocking copies on a GPU); every model sees each batch once, and
    results stay on the device until the end (no host sync per batch)."""
    shares = shares if shares is not None else RunShares.of(models)
    models = [m for m in models if m.modality == "visual"]
    weighted = [(m, w) for m, w in zip(models, shares.model_weights(models)) if w > 0]
    if not weighted:
        raise ValueError("no visual model has a positive share")
    device = torch.device(device)
    rank, processes = part
    batches = CropBatches(store_dir, batch_size)
    mine = list(range(rank, len(batches), processes))
    rows = np.concatenate([batches.rows(b) for b in mine]) if mine else np.zeros(0, np.int64)
    out = torch.empty((len(rows), n_outputs), device=device)
    workers = default_workers(device) if workers is None else workers
    loader = DataLoader(batches, batch_size=None, sampler=mine, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    views = (False, True) if flip else (False,)
    # Folds of one run share their input size and normalisation: each distinct input is made once per batch.
    scales = [(m, share / len(views), (m.img_size, tuple(m.mean), tuple(m.std)), *normalisation(m, device))
              for m, share in weighted]
    at = 0
    for _, crops in progress_bar(loader, desc="inference", unit="batch", disable=not progress):
        crops = crops.to(device, non_blocking=True)
        total = out[at:at + len(crops)]
        total.zero_()
        inputs: dict[tuple, torch.Tensor] = {}
        for m, share, key, mean, std in scales:
            x = inputs.get(key)
            if x is None:
                x = inputs[key] = prepare_batch(crops, m, mean, std)
            for mirrored in views:
                with autocast:
                    total += m.probabilities(x.flip(-1) if mirrored else x) * share
        at += len(crops)
    return rows, out.cpu().numpy()


def save_video_probs(faces_dir: str | Path, probs: np.ndarray, out_dir: str | Path) -> dict[str, Path]:
    """Split crop probabilities per video, aligned to every decoded frame (NaN where no face)."""
    faces_dir, out_dir = Path(faces_dir), Path(out_dir)
    frames = pd.read_csv(faces_dir / FRAMES_CSV, dtype={"video": str})
    index = read_index(faces_dir / STORE_DIR)
    if len(index) != len(probs):
        raise ValueError(f"{len(probs)} probability rows for {len(index)} crops")
    if len(index) == 0:  # no face anywhere: the store's index has no video/frame columns
        crops = pd.DataFrame({"video": pd.Series(dtype=str), "frame": pd.Series(dtype=np.int64),
                              "row": pd.Series(dtype=np.int64)})
    else:
        crops = index[["video", "frame"]].astype({"video": str}).assign(row=np.arange(len(index)))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for video, part in frames.groupby("video", sort=True):
        part = part.sort_values("frame").merge(crops, on=["video", "frame"], how="left")
        values = np.full((len(part), probs.shape[1]), np.nan, dtype=np.float32)
        has = part["row"].notna().to_numpy()
        values[has] = probs[part.loc[has, "row"].astype(int).to_numpy()]
        path = out_dir / f"{video}.npz"
        np.savez(path, frames=part["frame"].to_numpy(np.int64), face_found=has, probs=values)
        written[str(video)] = path
    return written


def read_video_probs(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["frames"], data["face_found"], data["probs"]


@torch.no_grad()
def predict_audio(video: str | Path, frames: np.ndarray, models: Sequence[LoadedModel], shares: RunShares,
                  device: torch.device | str = "cpu", batch_size: int = 256) -> np.ndarray | None:
    """(N, 6) probabilities of the audio models for 1-based ``frames`` of a video, each frame heard at its own
    timestamp (each run's models averaged, then the runs with their shares), or None when the video has no
    audio track."""
    models = [m for m in models if m.modality == "audio"]
    out = np.zeros((len(frames), len(labels.BASIC_EMOTIONS)), dtype=np.float32)
    tracks: dict[tuple[int, int], tuple[torch.Tensor, np.ndarray] | None] = {}  # (rate, mels) -> (mel, times)
    for m, share in zip(models, shares.model_weights(models)):
        if share == 0:  # a run weighted 0: its sound need not be read
            continue
        a = m.audio
        settings = MelSettings(sample_rate=int(a["sample_rate"]), n_mels=int(a["n_mels"]))
        key = (settings.sample_rate, settings.n_mels)
        if key not in tracks:
            track = read_audio(video, settings.sample_rate)
            tracks[key] = None if track is None else (log_mel(track.samples, settings),
                                                      FrameClock.of(video, track).seconds(frames))
        if tracks[key] is None:
            return None
        spectrogram, times = tracks[key]
        for start in range(0, len(times), batch_size):
            part = slice(start, start + batch_size)
            x = (frame_windows(spectrogram, times[part], int(a["width"]), settings) - a["mean"]) / a["std"]
            out[part] += m.probabilities(x.to(device)).cpu().numpy() * share
    return out

"""Batched inference of fold models over the faces step's packed crops, saved per video.

Every batch of crops goes through every model (optionally also mirrored). Their basic-emotion probabilities
(sigmoid outputs of the emotion track, the expression softmax of a C-EXPR-NET) are averaged within each run,
then over runs with optional weights. Frames without a face keep NaN rows so fusion settings can change later
without running the models again (``probs/<video>.npz``: frames, face_found, probs).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from abaw_ce import labels
from abaw_ce.cexprnet import EXPORT_META_FILE as CEXPRNET_META_FILE
from abaw_ce.data.packed import PackedFaces
from abaw_ce.multitask import EXPORT_META_FILE as MULTITASK_META_FILE
from abaw_ce.errors import InputError
from abaw_ce.models.export import META_FILE, load_classifier

PROBS_DIR = "probs"


@dataclass
class LoadedModel:
    path: Path
    model: nn.Module
    img_size: int
    mean: list[float]
    std: list[float]
    track: str = "emotion"  # "emotion": sigmoid outputs; "cexprnet", "multitask": the model returns probabilities
    run: int = 0  # which of the requested runs it came from: folds are averaged within their run first
    modality: str = "visual"  # "audio": a C-EXPR-NET-A reading log-mel windows of the video's sound
    audio: dict | None = None  # the audio model's input settings (n_mels, width, mean, std, sample_rate)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x).float()
        return torch.sigmoid(out) if self.track == "emotion" else out


class CExprNetExpressions(nn.Module):
    """A C-EXPR-NET's expression branch as (B, 6) probabilities (softmax of the KL head, sigmoids of the
    multi-label sigmoid head), for fusion with the other track."""

    def __init__(self, net: nn.Module, head: str = "kl"):
        super().__init__()
        self.net, self.head = net, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)["expr_logits"].float()
        return torch.sigmoid(logits) if self.head == "sigmoid" else logits.softmax(dim=1)


def find_exports(run: str | Path) -> list[Path]:
    """Model exports of a run: every finished ``fold_*/export`` of an emotion run, the ``export`` of a
    C-EXPR-NET or multi-task run, or the folder itself if it is an export."""
    run = Path(run)
    for meta_file in (META_FILE, CEXPRNET_META_FILE, MULTITASK_META_FILE):
        if (run / meta_file).is_file():
            return [run]
        if (run / "export" / meta_file).is_file():
            return [run / "export"]
    exports = sorted(p.parent for p in run.glob("fold_*/export/" + META_FILE))
    if not exports:
        raise InputError(run, "no model export here (expected fold_*/export folders of an emotion run, or an "
                              "export folder)")
    return exports


def load_models(runs: Sequence[str | Path], device: torch.device | str = "cpu") -> list[LoadedModel]:
    """Every export of every run; all must output the six basic emotions in the kit's order."""
    loaded = []
    for r, run in enumerate(runs):
        for path in find_exports(run):
            if (path / CEXPRNET_META_FILE).is_file():
                from abaw_ce.cexprnet.train import load_cexprnet

                net, meta = load_cexprnet(path)
                head = meta.get("expr_head", "kl")
                if head == "multiclass":
                    raise InputError(path, "a multi-class C-EXPR-NET (13 classes, no basic-emotion "
                                           "probabilities) cannot join the pairwise fusion; it serves the "
                                           "ablation only")
                if list(meta["expression_labels"]) != list(labels.BASIC_EMOTIONS):
                    raise InputError(path, f"model outputs {meta['expression_labels']}; expected the basic "
                                           f"emotions in the kit's order (refusing to mix label orders)")
                loaded.append(LoadedModel(path, CExprNetExpressions(net, head).to(device).eval(),
                                          int(meta["img_size"]), list(meta["mean"]), list(meta["std"]),
                                          track="cexprnet", run=r, modality=meta.get("modality", "visual"),
                                          audio=meta.get("audio")))
                continue
            if (path / MULTITASK_META_FILE).is_file():
                from abaw_ce.multitask.train import BasicEmotionProbabilities, load_multitask

                net, meta = load_multitask(path)
                loaded.append(LoadedModel(path, BasicEmotionProbabilities(net, meta["method"]).to(device).eval(),
                                          int(meta["img_size"]), list(meta["mean"]), list(meta["std"]),
                                          track="multitask", run=r))
                continue
            model, meta = load_classifier(path)
            names = (meta.get("head") or {}).get("labels")
            if list(names or []) != list(labels.BASIC_EMOTIONS):
                raise InputError(path, f"model outputs {names}; expected the basic emotions in the kit's order "
                                       f"{list(labels.BASIC_EMOTIONS)} (refusing to mix label orders)")
            loaded.append(LoadedModel(path, model.to(device).eval(), meta["arch"].img_size,
                                      list(meta["mean"]), list(meta["std"]), run=r))
    if not loaded:
        raise ValueError("no model to run")
    return loaded


def prepare_batch(batch: torch.Tensor, m: LoadedModel) -> torch.Tensor:
    """uint8 (B, 3, H, W) crops -> the model's input size and normalisation."""
    x = batch.float().div_(255)
    if x.shape[-1] != m.img_size or x.shape[-2] != m.img_size:
        x = F.interpolate(x, size=(m.img_size, m.img_size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(m.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(m.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def model_shares(models: Sequence[LoadedModel], run_weights: Sequence[float] | None = None) -> list[float]:
    """Each model's weight in the ensemble: its run's weight (equal by default) split evenly over the run's
    models, so that a run of five fold models and a single-model run of another track count as the weights
    say. Raises on weights that are not one non-negative number per run with a positive sum."""
    n_runs = max(m.run for m in models) + 1
    weights = np.ones(n_runs) if run_weights is None else np.asarray(run_weights, dtype=np.float64)
    if weights.shape != (n_runs,) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"run weights must be {n_runs} non-negative numbers (one per run) with a positive sum, "
                         f"got {None if run_weights is None else list(run_weights)}")
    sizes = Counter(m.run for m in models)
    total = sum(weights[r] for r in sizes)
    if total <= 0:
        raise ValueError("the runs given models all have weight 0")
    return [weights[m.run] / total / sizes[m.run] for m in models]


@torch.no_grad()
def predict_crops(store_dir: str | Path, models: Sequence[LoadedModel], batch_size: int = 256,
                  flip: bool = False, device: torch.device | str = "cpu", bf16: bool = False,
                  progress: bool = True, run_weights: Sequence[float] | None = None,
                  n_outputs: int = len(labels.BASIC_EMOTIONS)) -> np.ndarray:
    """(N, 6) probabilities for every crop of a store: the mean over each run's models (and mirrored crops
    with ``flip``), then the ``run_weights``-weighted mean over runs (see ``model_shares``). Audio models
    are not given crops (``predict_audio``)."""
    models = [m for m in models if m.modality == "visual"]
    per_model = model_shares(models, run_weights)
    faces = PackedFaces(store_dir)
    out = np.zeros((len(faces), n_outputs), dtype=np.float32)
    device = torch.device(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
    starts = range(0, len(faces), batch_size)
    views = (False, True) if flip else (False,)
    for start in tqdm(starts, desc="inference", unit="batch", disable=not progress):
        rows = np.arange(start, min(start + batch_size, len(faces)))
        crops = faces.get_batch(rows).to(device, non_blocking=True)
        total = torch.zeros(len(rows), n_outputs, device=device)
        for m, share in zip(models, per_model):
            x = prepare_batch(crops, m)
            for mirrored in views:
                with autocast:
                    total += m.probabilities(x.flip(-1) if mirrored else x) * (share / len(views))
        out[rows] = total.cpu().numpy()
    return out


def save_video_probs(faces_dir: str | Path, probs: np.ndarray, out_dir: str | Path) -> dict[str, Path]:
    """Split crop probabilities per video, aligned to every decoded frame (NaN where no face)."""
    from abaw_ce.data.packed import read_index
    from abaw_ce.faces.pipeline import FRAMES_CSV, STORE_DIR

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


def audio_share(models: Sequence[LoadedModel], run_weights: Sequence[float] | None = None) -> float:
    """The audio runs' part of the run weights: the late-fusion weight of the audio track (0 without any)."""
    n_runs = max(m.run for m in models) + 1
    weights = np.ones(n_runs) if run_weights is None else np.asarray(run_weights, dtype=np.float64)
    present = sorted({m.run for m in models})
    audio = sorted({m.run for m in models if m.modality == "audio"})
    total = float(sum(weights[r] for r in present))
    return float(sum(weights[r] for r in audio)) / total if total > 0 else 0.0


@torch.no_grad()
def predict_audio(video: str | Path, frames: np.ndarray, models: Sequence[LoadedModel],
                  run_weights: Sequence[float] | None = None, device: torch.device | str = "cpu",
                  batch_size: int = 256) -> np.ndarray | None:
    """(N, 6) probabilities of the audio models for 1-based ``frames`` of a video (each run's models
    averaged, then the runs with their weights), or None when the video has no audio track."""
    from abaw_ce.audio import MelSettings, frame_windows, log_mel, read_audio
    from abaw_ce.video import video_info

    models = [m for m in models if m.modality == "audio"]
    shares = model_shares(models, run_weights)
    fps = video_info(video).fps
    times = (np.asarray(frames, np.int64) - 1) / fps
    out = np.zeros((len(times), len(labels.BASIC_EMOTIONS)), dtype=np.float32)
    samples: dict[int, np.ndarray | None] = {}
    for m, share in zip(models, shares):
        a = m.audio
        rate = int(a["sample_rate"])
        if rate not in samples:
            samples[rate] = read_audio(video, rate)
        if samples[rate] is None:
            return None
        settings = MelSettings(sample_rate=rate, n_mels=int(a["n_mels"]))
        spectrogram = log_mel(samples[rate], settings)
        for start in range(0, len(times), batch_size):
            part = slice(start, start + batch_size)
            x = (frame_windows(spectrogram, times[part], int(a["width"]), settings) - a["mean"]) / a["std"]
            out[part] += m.probabilities(x.to(device)).cpu().numpy() * share
    return out

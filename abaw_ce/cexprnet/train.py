"""Training the C-EXPR-NET track (``finetune/cexprnet.py``) with the kit's engine.

Rows with a basic or compound expression get a KL target (one-hot, or 0.5 on each emotion of the pair);
rows with AU labels get them over the 17 C-EXPR-DB AUs (unlabelled AUs masked); images without any AU label
can be labelled by an AU teacher (``loss.au_teacher``: an AU-stage export, ViT or timm), as the paper does:
the processes share those rows on their devices, and the teacher's outputs are kept in ``<run>/au_teacher``
for resumes. The
engine sees one (B, E + 17) output: expression logits, then sigmoid AU logits. The best (EMA) weights are
exported to ``<run>/export`` (``abaw_ce.models.cexprnet.save_export``): ``model.safetensors``, ``cexprnet.json``
and the AU description tokenizer; their predictions on the validation part go to ``<run>/oof.csv`` (the fold runs'
layout: ``y_``/``p_`` columns of the 6 basic emotions, 6-way heads only), which ``submit/tune_fusion.py`` fits
weighted fusion on.

``model.modality=visual`` reads face images; rows of C-EXPR-DB videos (one per labelled frame) become face
crops first (``abaw_ce.data.video_frames``). ``model.modality=audio`` (C-EXPR-NET-A) reads, for the same
frame rows, a log-mel window of the video's audio centred at the frame; videos without audio are left out.

``train.curriculum`` (``abaw_ce.train.curriculum``) serves the training rows in stages of rising compound
share; a generated compound's expression target is the normalised union of its two emotions (0.5 on each for
the KL head, like a real compound row's; 0/1 for the sigmoid head), and its AUs are unlabelled.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from omegaconf import DictConfig
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Subset

from abaw_ce import audio, fusion, labels
from abaw_ce.cexprnet.model import LossWeights, cexprnet_loss
from abaw_ce.cexprnet.modules import kl_targets
from abaw_ce.data.labelled import FaceTransform, TableSamples
from abaw_ce.data.table import au_arrays
from abaw_ce.data.video_frames import crop_frame_rows, finished_record, fresh_partial, is_frame_row, publish_cache
from abaw_ce.errors import InputError, OptionError
from abaw_ce.models.au_text import encode, train_tokenizer
from abaw_ce.models.backbones import build_backbone
from abaw_ce.models.cexprnet import CExprNet, expression_outputs, save_export
from abaw_ce.models.timm_classifier import classifier_meta, load_any_classifier
from abaw_ce.progress import progress_bar
from abaw_ce.train import curriculum as curriculum_lib
from abaw_ce.train import engine, runs
from abaw_ce.train.engine import load_tables, run_single, validation_rows
from abaw_ce.train.runs import resume_point
from abaw_ce.train.metrics import multilabel_f1
from abaw_ce.train.reports import OOF_NAME, write_oof
from abaw_ce.train.sampling import SeededSamples

STAGE = "cexprnet"
AU_NAMES = tuple(f"AU{n}" for n in labels.CEXPR_AUS)
MODALITIES = ("visual", "audio")
N_COMPOUNDS = len(labels.CEXPR_COMPOUNDS)
# A softmax emotion counts as shown at >= 0.25: half of the 0.5 a compound's target gives each of its pair.
EXPRESSION_THRESHOLD = 0.25
TEACHER_DIR, TEACHER_PROBS_FILE = "au_teacher", "probs.npy"  # <run>/au_teacher: the AU teacher's outputs


class FlatOutputs(nn.Module):
    """The engine's interface: one (B, E + A) tensor, expression logits first."""

    def __init__(self, net: CExprNet):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(images)
        return torch.cat([out["expr_logits"], out["au_logits"]], dim=1)


def probability_fn(head: str):
    """Engine outputs -> probabilities: softmax (or sigmoids) over the expression part, sigmoid AUs."""
    n_expr = expression_outputs(head)

    def to_probabilities(outputs: torch.Tensor) -> torch.Tensor:
        expr = outputs[:, :n_expr]
        expr = torch.sigmoid(expr) if head == "sigmoid" else expr.softmax(dim=1)
        return torch.cat([expr, torch.sigmoid(outputs[:, n_expr:])], dim=1)

    return to_probabilities


def expression_targets(table: pd.DataFrame, head: str = "kl") -> tuple[np.ndarray, np.ndarray]:
    """(N, E) expression targets and (N,) mask. ``kl``: basic and compound rows, one-hot or 0.5 on each of
    the pair; ``sigmoid``: the same rows, 0/1 multi-label; ``multiclass``: compound and Other rows, one-hot
    over the 13 C-EXPR-DB classes (basic rows have no class there)."""
    names = table["expression"].fillna("").astype(str).tolist()
    kinds = [labels.expression_kind(e) if e else "" for e in names]
    targets = np.zeros((len(table), expression_outputs(head)), dtype=np.float32)
    if head == "multiclass":
        has = np.array([k == "compound" or labels.normalise_name(e) == "other" for k, e in zip(kinds, names)],
                       dtype=bool)
        for i in np.flatnonzero(has):
            targets[i, labels.compound_index(names[i])] = 1.0
        return targets, has
    has = np.array([k in ("basic", "compound") for k in kinds], dtype=bool)
    if has.any():
        chosen = [names[i] for i in np.flatnonzero(has)]
        targets[has] = (kl_targets(chosen) if head == "kl"
                        else np.stack([labels.multilabel_target(n) for n in chosen]).astype(np.float32))
    return targets, has


def compound_scores(expr_probs: np.ndarray, head: str) -> np.ndarray:
    """(N, 12) C-EXPR-DB compound scores: the pair sum of a 6-way head, the class probabilities of the
    multi-class head."""
    if head == "multiclass":
        return expr_probs[:, :N_COMPOUNDS]
    return fusion.pair_scores(expr_probs, "sum", pairs=labels.CEXPR_PAIRS)


def compound_truth(expr_targets: np.ndarray, has_expr: np.ndarray, head: str) -> np.ndarray:
    """C-EXPR-DB compound index 0..11 of each row with a compound label, else -1."""
    if head == "multiclass":
        truth = np.where(expr_targets.max(axis=1) > 0, expr_targets.argmax(axis=1), -1)
        truth[truth >= N_COMPOUNDS] = -1
    else:
        truth = labels.pair_classes(expr_targets, labels.CEXPR_PAIR_INDEX)
    truth[~has_expr] = -1
    return truth


def compound_f1(scores: np.ndarray, truth: np.ndarray, classes: int) -> float | None:
    """Macro F1 over the classes present in ``truth`` (rows with truth in 0..classes-1), argmax over the
    first ``classes`` scores; None without such rows."""
    from sklearn.metrics import f1_score

    keep = (truth >= 0) & (truth < classes)
    if not keep.any():
        return None
    predicted = scores[keep, :classes].argmax(axis=1)
    present = sorted(set(truth[keep].tolist()))
    return float(f1_score(truth[keep], predicted, labels=present, average="macro", zero_division=0))


@dataclass
class TeacherReport:
    """What ``teacher_au_labels`` did: how many rows it labelled, and whether the cached outputs served."""
    labelled: int = 0
    reused: bool = False


def teacher_au_labels(table: pd.DataFrame, values: np.ndarray, mask: np.ndarray, teacher: str | Path,
                      cache_dir: str | Path, batch_size: int = 64, num_workers: int = 0, progress: bool = True
                      ) -> tuple[np.ndarray, np.ndarray, TeacherReport]:
    """Fill the AUs an AU-stage export predicts, for rows without any AU label (thresholds of its export,
    else 0.5). The teacher's probabilities come from ``cache_dir`` when it was made from the same export and
    images, else the launched processes compute them (each its share) and the main process caches them.
    Returns new values, mask and what was done."""
    teacher = Path(teacher)
    head = _teacher_head(teacher)
    columns = [(j, AU_NAMES.index(name)) for j, name in enumerate(head["labels"]) if name in AU_NAMES]
    cuts = np.array([float(head.get("thresholds", {}).get(name, 0.5)) for name in head["labels"]])
    rows = np.flatnonzero(~mask.any(axis=1))
    values, mask = values.copy(), mask.copy()
    if len(rows) == 0 or not columns:
        return values, mask, TeacherReport()
    probs, reused = _cached_teacher_probs(table.iloc[rows], teacher, Path(cache_dir), batch_size, num_workers,
                                          progress)
    on = probs >= cuts
    for j, col in columns:
        values[rows, col] = on[:, j]
        mask[rows, col] = True
    return values, mask, TeacherReport(len(rows), reused)


def _export_folder(teacher: Path) -> Path:
    """``loss.au_teacher`` names the export folder or one of its files."""
    return teacher.parent if teacher.is_file() else teacher


def _teacher_head(teacher: Path) -> dict[str, Any]:
    """The export's head, read from its metadata alone (cached outputs need no weights)."""
    head = classifier_meta(_export_folder(teacher))["meta"].get("head") or {}
    if head.get("task") != "au":
        raise InputError(teacher, f"loss.au_teacher must be an AU-stage export; this one's head is "
                                  f"{head.get('task')!r}")
    return head


def _file_signature(path: str | Path) -> list[int]:
    """[bytes, mtime_ns] of a file, [] when it is missing: a rewritten file changes the stamp."""
    try:
        stat = os.stat(path)
    except OSError:
        return []
    return [stat.st_size, stat.st_mtime_ns]


def _teacher_stamp(teacher: Path, paths: Sequence[str]) -> dict[str, Any]:
    """What the teacher's outputs are made from: the export's files and the rows' images, in order."""
    images = hashlib.blake2b(digest_size=16)
    for path in paths:
        images.update(json.dumps([path, *_file_signature(path)]).encode())
    files = classifier_meta(_export_folder(teacher))["files"]
    return {"teacher": {str(f.resolve()): _file_signature(f) for f in files},
            "rows": len(paths), "images": images.hexdigest()}


def _main_process_value(value: Any) -> Any:
    """The main process's ``value``, on every process (so that all take the same branch)."""
    if runs.process_state().num_processes == 1:
        return value
    shared = [value]
    broadcast_object_list(shared)
    return shared[0]


def _cached_teacher_probs(rows: pd.DataFrame, teacher: Path, cache_dir: Path, batch_size: int, num_workers: int,
                          progress: bool) -> tuple[np.ndarray, bool]:
    """(rows, teacher labels) probabilities and whether they were read from ``cache_dir``. The main process
    checks the stamp and writes the folder; the others follow its decision and read what it wrote."""
    state = runs.process_state()
    stamp = _teacher_stamp(teacher, rows["path"].astype(str).tolist()) if state.is_main_process else None
    if _main_process_value(stamp is not None and finished_record(cache_dir, stamp) is not None):
        return np.load(cache_dir / TEACHER_PROBS_FILE), True
    probs, shares = _label_shares(rows, teacher, batch_size, num_workers, progress)
    if state.is_main_process:
        partial = fresh_partial(cache_dir)
        np.save(partial / TEACHER_PROBS_FILE, probs)
        publish_cache(partial, cache_dir, {"stamp": stamp, "teacher": str(teacher), "rows_per_process": shares})
    state.wait_for_everyone()
    return probs, False


def _label_shares(rows: pd.DataFrame, teacher: Path, batch_size: int, num_workers: int, progress: bool
                  ) -> tuple[np.ndarray, list[int]]:
    """Every process runs the teacher on its contiguous share of the rows, on its device; the shares are
    gathered in process order, which is row order. Returns the probabilities and each process's row count."""
    state = runs.process_state()
    model, info = load_any_classifier(teacher)
    transform = FaceTransform(info["img_size"], info["mean"], info["std"], train=False)
    # one dataset over all the rows: an unreadable image is replaced as it is under a single process
    samples = SeededSamples(TableSamples(rows, np.zeros((len(rows), 1))), transform, seed=0)
    with state.split_between_processes(list(range(len(samples)))) as share:
        probs = _teacher_probs(model.to(state.device), Subset(samples, share), state.device, batch_size,
                               num_workers, progress and state.is_main_process)
    parts = gather_object([probs])
    return np.concatenate(parts), [len(part) for part in parts]


def _teacher_probs(model: nn.Module, samples: Dataset, device: torch.device, batch_size: int, num_workers: int,
                   progress: bool) -> np.ndarray:
    """Sigmoid outputs in float32 (the labels are thresholds on them; no reduced precision)."""
    loader = DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model.eval()
    probs = [np.zeros((0, model.num_classes), dtype=np.float32)]  # a process without rows gathers an empty part
    with torch.inference_mode():
        for batch in progress_bar(loader, desc="AU teacher", unit="batch", disable=not progress, dynamic_ncols=True):
            probs.append(torch.sigmoid(model(batch["image"].to(device)).float()).cpu().numpy())
    return np.concatenate(probs)


def evaluate(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray, head: str = "kl") -> dict[str, Any]:
    """Expression F1 (6-way heads), AU F1, and the compound macro F1 over the 12 C-EXPR-DB compounds and over
    the 7 challenge classes. The score early stopping follows is the 12-compound F1 when the validation part
    has compound rows, else the expression F1."""
    n_expr = expression_outputs(head)
    expr_probs, expr_y, has_expr = probs[:, :n_expr], targets[:, :n_expr], masks[:, 0] > 0
    result: dict[str, Any] = {}
    if head != "multiclass":
        expr = multilabel_f1(expr_probs, expr_y, labels.BASIC_EMOTIONS, masks[:, :n_expr] > 0,
                             EXPRESSION_THRESHOLD if head == "kl" else 0.5)
        result.update(expr_f1=expr["per_class"], mean_expr_f1=expr["mean"])
    truth = compound_truth(expr_y, has_expr, head)
    scores = compound_scores(expr_probs, head)
    result["compound_f1"] = compound_f1(scores, truth, N_COMPOUNDS)
    result["challenge_f1"] = compound_f1(scores, truth, len(labels.CHALLENGE_COMPOUNDS))
    au_mask = masks[:, n_expr:] > 0
    labelled = [j for j in range(len(AU_NAMES)) if au_mask[:, j].any()]
    au = multilabel_f1(probs[:, n_expr:][:, labelled], targets[:, n_expr:][:, labelled],
                       [AU_NAMES[j] for j in labelled], au_mask[:, labelled], 0.5)
    result.update(au_f1=au["per_class"], mean_au_f1=au["mean"] if labelled else None, samples=int(len(probs)))
    score = result["compound_f1"] if result["compound_f1"] is not None else result.get("mean_expr_f1")
    result["score"] = float(score) if score is not None else 0.0
    result["score_name"] = "compound_f1" if result["compound_f1"] is not None else "mean_expr_f1"
    return result


def build(config: DictConfig) -> tuple[CExprNet, Any, dict[str, Any]]:
    """The network, its trained tokenizer and the export metadata (input size and normalisation)."""
    m, d = config.model, config.data
    modality, head = str(m.get("modality", "visual")), str(m.get("expr_head", "kl"))
    if modality not in MODALITIES:
        raise OptionError(f"model.modality must be one of {MODALITIES}, got {modality!r}")
    tokenizer = train_tokenizer(vocab_size=int(m.vocab_size))
    descriptions = encode(tokenizer)
    backbone, info = build_backbone(str(m.backbone), int(m.img_size), in_chans=1 if modality == "audio" else 3)
    net = CExprNet(backbone, descriptions, tokenizer.get_vocab_size(), int(m.block_dim), int(m.text_dim),
                   int(m.text_heads), int(m.text_layers), expression_outputs(head))
    default_mean, default_std = ((info["mean"], info["std"]) if info["kind"] == "vit"
                                 else (list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)))
    expression_labels = list(labels.CEXPR_CLASSES if head == "multiclass" else labels.BASIC_EMOTIONS)
    meta = {"track": STAGE, "modality": modality, "expr_head": head, "backbone": info,
            "img_size": int(m.img_size),
            "mean": list(d.mean) if d.mean is not None else default_mean,
            "std": list(d.std) if d.std is not None else default_std,
            "expression_labels": expression_labels, "au_labels": list(AU_NAMES),
            "model": {"block_dim": int(m.block_dim), "text_dim": int(m.text_dim), "text_heads": int(m.text_heads),
                      "text_layers": int(m.text_layers), "max_tokens": int(descriptions.ids.shape[1])}}
    return net, tokenizer, meta


def mel_settings(config: DictConfig) -> audio.MelSettings:
    return audio.MelSettings(n_mels=int(config.model.audio.n_mels))


def train_cexprnet(config: DictConfig, resume: str | None = None, overrides: Sequence[str] = ()) -> Path:
    run_dir, trained = run_single(STAGE, config, resume, overrides, _train)
    if not trained:
        return run_dir
    best = json.loads((run_dir / engine.VALIDATION_FILE).read_text(encoding="utf-8"))
    parts = [f"{name} {best[key]:.4f}" for name, key in (("expression F1", "mean_expr_f1"),
                                                          ("compound F1", "compound_f1"), ("AU F1", "mean_au_f1"))
             if best.get(key) is not None]
    print(f"C-EXPR-NET ({config.model.get('modality', 'visual')}) {', '.join(parts)} (epoch {best['epoch']}); "
          f"export -> {run_dir / engine.BEST_DIR}")
    return run_dir


def _audio_rows(config: DictConfig, table: pd.DataFrame
                ) -> tuple[pd.DataFrame, np.ndarray, dict[str, torch.Tensor], dict[str, audio.FrameClock]]:
    """Video-frame rows of videos with an audio track, their positions in ``table``, their spectrograms and
    frame clocks."""
    rows = np.flatnonzero(is_frame_row(table))
    if len(rows) == 0:
        raise OptionError("model.modality=audio needs video-frame rows (e.g. a {format: cexpr, root: ...} dataset); "
                          "data.datasets has only still images")
    videos = sorted(set(table["path"].iloc[rows].astype(str)))
    spectrograms, clocks, silent = audio.video_spectrograms(videos, mel_settings(config))
    if silent:
        print(f"{STAGE}: {len(silent)} video(s) without an audio track left out: {', '.join(silent[:5])}")
    rows = rows[np.isin(table["path"].iloc[rows].astype(str).to_numpy(), list(spectrograms))]
    if len(rows) == 0:
        raise OptionError("no video of data.datasets has an audio track: nothing to train the audio track on")
    return table.iloc[rows].reset_index(drop=True), rows, spectrograms, clocks


def _teach_aus(config: DictConfig, table: pd.DataFrame, values: np.ndarray, mask: np.ndarray, cache_dir: Path
               ) -> tuple[np.ndarray, np.ndarray]:
    """``teacher_au_labels`` with the stage's settings, its outcome printed once."""
    teacher, t = config.loss.au_teacher, config.train
    values, mask, report = teacher_au_labels(table, values, mask, teacher, cache_dir, int(t.eval_batch_size),
                                             int(t.num_workers))
    if runs.process_state().is_main_process:
        reused = f" (its outputs reused from {cache_dir})" if report.reused else ""
        print(f"{STAGE}: the AU teacher {teacher} labelled the AUs of {report.labelled} image(s) without AU "
              f"labels{reused}")
    return values, mask


ROW_CHOICES = ("all", "expression", "compound")


def _kept_rows(table: pd.DataFrame, expr_has: np.ndarray, au_mask: np.ndarray, rows: str) -> np.ndarray:
    """data.rows: ``all`` (an expression or an AU label), ``expression`` (an expression target), ``compound``
    (a compound or Other label: the ablation's rows without the basic-emotion augmentation)."""
    if rows == "all":
        return expr_has | au_mask.any(axis=1)
    if rows == "expression":
        return expr_has.copy()
    if rows == "compound":
        names = table["expression"].fillna("").astype(str)
        compound = np.array([bool(e) and (labels.expression_kind(e) == "compound"
                                          or labels.normalise_name(e) == "other") for e in names], dtype=bool)
        return compound & expr_has  # Other rows have a target under the multi-class head only
    raise OptionError(f"data.rows must be one of {ROW_CHOICES}, got {rows!r}")


def _train(config: DictConfig, run_dir: Path, resuming: bool) -> None:
    head = str(config.model.get("expr_head", "kl"))
    expression_outputs(head)  # a clear error before any data is read
    modality = str(config.model.get("modality", "visual"))
    skip = ("it mixes the 6 basic emotions into compounds, which model.expr_head=multiclass cannot express"
            if head == "multiclass" else
            "it mixes faces; mixing two voices' spectrograms makes no compound expression"
            if modality == "audio" else
            "data.rows=compound keeps compound rows only, and its first stages need single-expression ones"
            if config.data.get("rows", "all") == "compound" else None)
    config, curriculum = curriculum_lib.configure(config, STAGE, skip=skip)
    d, t, lw, m = config.data, config.train, config.loss, config.model
    weights = LossWeights(float(lw.expr), float(lw.au), float(lw.dist))
    if weights.dist > 0 and head == "multiclass":
        raise OptionError("distribution matching (loss.dist) needs a basic-emotion head: model.expr_head=kl or "
                          "sigmoid, or loss.dist=0")
    table = load_tables(d.datasets, non_basic="zero")
    if modality == "audio":
        if lw.au_teacher:
            raise OptionError("loss.au_teacher labels face images; the audio track (model.modality=audio) takes "
                              "none: leave it null")
        table, _, spectrograms, clocks = _audio_rows(config, table)
    else:
        table = crop_frame_rows(table, d.get("frame_crops"), run_dir / "frame_crops", STAGE)
    expr_y, expr_has = expression_targets(table, head)
    au_values, au_mask = au_arrays(table, "cexpr")
    if lw.au_teacher:
        au_values, au_mask = _teach_aus(config, table, au_values, au_mask, run_dir / TEACHER_DIR)
    if weights.au > 0 and not au_mask.any():
        raise OptionError("no image in data.datasets has an AU label; give an AU teacher "
                          "(loss.au_teacher=runs/au-.../export) or switch the AU term off (loss.au=0)")
    keep = _kept_rows(table, expr_has, au_mask, str(d.get("rows", "all")))
    if not keep.any():
        raise OptionError(f"data.datasets holds no image with an expression or AU label "
                          f"(data.rows={d.get('rows', 'all')})")
    table, expr_y, expr_has = table[keep].reset_index(drop=True), expr_y[keep], expr_has[keep]
    au_values, au_mask = au_values[keep], au_mask[keep]
    n_expr = expr_y.shape[1]
    targets = np.concatenate([expr_y, au_values], axis=1)
    masks = np.concatenate([np.repeat(expr_has[:, None], n_expr, axis=1), au_mask], axis=1).astype(np.float32)
    val = validation_rows(table, run_dir, d)

    set_seed(t.seed)
    net, tokenizer, meta = build(config)
    prior = labels.emotion_au_prior("cexpr", observational=str(lw.observational))
    if modality == "audio":
        a = m.audio
        train_videos = set(table["path"][~val].astype(str))
        mean, std = audio.spectrogram_stats({v: s for v, s in spectrograms.items() if v in train_videos})
        meta["audio"] = {"n_mels": int(a.n_mels), "width": int(a.width), "mean": mean, "std": std,
                         "sample_rate": audio.MelSettings().sample_rate}

        def samples(part: np.ndarray, train: bool) -> SeededSamples:
            base = audio.FrameAudioSamples(table[part], targets[part], masks[part], spectrograms, clocks,
                                           int(a.width), int(a.shift), mel_settings(config))
            make = audio.SpectrogramTransform(int(a.width), mean, std, train, int(a.freq_mask) if train else 0)
            return SeededSamples(base, make, t.seed)
    else:
        augment = dict(d.augment)

        def samples(part: np.ndarray, train: bool) -> SeededSamples:
            make = FaceTransform(meta["img_size"], meta["mean"], meta["std"], train=train,
                                 **(augment if train else {}))
            return SeededSamples(TableSamples(table[part], targets[part], masks[part]), make, t.seed)

    def loss_fn(outputs: torch.Tensor, batch: dict[str, torch.Tensor], _teacher: torch.Tensor | None
                ) -> torch.Tensor:
        split = {"expr_logits": outputs[:, :n_expr], "au_logits": outputs[:, n_expr:]}
        total, _ = cexprnet_loss(split, batch["target"][:, :n_expr], batch["mask"][:, 0],
                                 batch["target"][:, n_expr:], batch["mask"][:, n_expr:], prior, weights, head)
        return total

    val_rows = table[val].reset_index(drop=True)  # what the validation outputs' indices point into

    def export(model: nn.Module, out: Path, result: dict[str, Any], outputs: dict[str, np.ndarray]) -> None:
        save_export(out, model.net, {**meta, "source": {"stage": STAGE, "run": str(run_dir),
                                                        "epoch": result["epoch"], "val_score": result["score"]},
                                     "loss": {"expr": weights.expr, "au": weights.au, "dist": weights.dist,
                                              "observational": str(lw.observational)}}, tokenizer)
        if head != "multiclass":  # the exported weights' held-out predictions, as the fold runs write them
            write_oof(run_dir / OOF_NAME, val_rows, outputs, labels.BASIC_EMOTIONS)

    train_set: Any = samples(~val, True)
    if curriculum is not None:
        # generated compounds carry the union of the two emotions, normalised for the KL head (0.5/0.5, the
        # target of a real compound row), and no AU label
        train_set = curriculum_lib.CurriculumSamples(train_set, targets[~val], curriculum, t.seed, masks=masks[~val],
                                                     columns=n_expr, normalise=head == "kl")
    engine.fit(stage=STAGE, config=config, run_dir=run_dir, model=FlatOutputs(net),
               train_set=train_set, val_set=samples(val, False),
               loss_fn=loss_fn, evaluate=lambda p, y, k: evaluate(p, y, k, head), export=export,
               resume_from=resume_point(run_dir) if resuming else None, activation=probability_fn(head),
               epoch_info=curriculum.epoch_info if curriculum is not None else None,
               select_from=curriculum.selection_start(t.epochs) if curriculum is not None else 0)

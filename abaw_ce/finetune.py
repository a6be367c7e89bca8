"""Stages 2 and 3 on the shared engine: AU fine-tuning (``finetune/au.py``) and the 5-fold multi-label
basic-emotion models (``finetune/emotion.py``)."""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from abaw_ce import labels
from abaw_ce.data import folds as folds_lib
from abaw_ce.data.labelled import FaceTransform, TableSamples
from abaw_ce.data.table import au_arrays, targets as table_targets
from abaw_ce.data.video_frames import crop_frame_rows
from abaw_ce.errors import InputError, OptionError
from abaw_ce.models.export import export_meta_summary, input_signature, load_encoder, save_encoder
from abaw_ce.models.registry import load_export
from abaw_ce.models.timm_classifier import (build_timm_classifier, classifier_meta, parse_backbone,
                                            save_timm_classifier, timm_meta_summary)
from abaw_ce.models.vit import build_vit, vit_arch
from abaw_ce.train import curriculum as curriculum_lib
from abaw_ce.train import engine, runs
from abaw_ce.train.engine import fold_assignment, load_tables, run_single
from abaw_ce.train.loop import read_status
from abaw_ce.train.losses import (binary_kl, inverse_frequency_weights, masked_bce_pos_weight, pos_weights,
                                  weighted_bce)
from abaw_ce.train.metrics import evaluate_multilabel
from abaw_ce.train.reports import OOF_NAME, write_fold_report, write_oof
from abaw_ce.train.sampling import SeededSamples, derived_seed

log = logging.getLogger(__name__)

FOLD_PREFIX = "fold_"


# ---------------------------------------------------------------- encoder and inputs

def build_backbone(config: DictConfig, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """The network to fine-tune, its input settings (``img_size``, ``mean``, ``std``) and the metadata of where
    it came from; ``backbone`` says which: "vit" or "timm".

    ``model.backbone`` vit (the default, also for a run saved before the key existed) is the kit's ViT encoder:
    ``model.encoder`` null means random initialisation (the "no MAE pretraining" ablation row). An encoder
    whose image size or normalisation differs from an explicit config value is refused unless
    ``model.resize_pos_embed`` asks for the resize. ``timm:<name>`` is any timm model (``_timm_backbone``).
    """
    m = config.model
    name = parse_backbone(m.get("backbone", "vit"))
    if name is not None:
        return _timm_backbone(config, name, num_classes)
    if m.get("weights") is not None:
        raise OptionError("model.weights is read by timm:<name> backbones only; the vit backbone starts from "
                          "model.encoder")
    model, meta = _vit_backbone(config, num_classes)
    return model, {**meta, "backbone": "vit", "img_size": meta["arch"].img_size}


def _timm_backbone(config: DictConfig, name: str, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """A timm model (``pretrained=False``) with a ``num_classes`` head, from random weights or the local
    ``model.weights``; input size and normalisation from the config, else from the weights' export, else from
    the model's timm pretrained config."""
    m, d = config.model, config.data
    if not OmegaConf.is_missing(m, "encoder") and m.encoder not in (None, "none"):
        raise OptionError(f"model.encoder={m.encoder} is the vit backbone's; with model.backbone=timm:{name} give "
                          f"weights as model.weights (or leave both unset for a random initialisation)")
    model, meta = build_timm_classifier(name, num_classes, img_size=m.img_size, mean=d.mean, std=d.std,
                                        weights=m.get("weights"), drop_path_rate=float(m.drop_path or 0.0))
    print(f"timm:{name} at {meta['img_size']} px, mean {meta['mean']} std {meta['std']}, "
          f"{'weights ' + str(m.weights) if m.get('weights') else 'random initialisation'}")
    return model, meta


def _vit_backbone(config: DictConfig, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    m, d = config.model, config.data
    if m.encoder in (None, "none"):
        size = m.img_size or m.arch.img_size
        arch = vit_arch(m.arch.size, img_size=size, patch_size=m.arch.patch_size, embed_dim=m.arch.embed_dim,
                        depth=m.arch.depth, num_heads=m.arch.num_heads)
        model = build_vit(arch, pooled_norm=True, num_classes=num_classes, drop_path_rate=m.drop_path)
        mean = list(d.mean) if d.mean is not None else list(IMAGENET_DEFAULT_MEAN)
        std = list(d.std) if d.std is not None else list(IMAGENET_DEFAULT_STD)
        return model, {"arch": arch, "mean": mean, "std": std, "history": [],
                       "source": {"stage": "random-init"}}
    encoder_path = Path(m.encoder)
    _, probe = load_encoder(encoder_path)  # reads metadata and checks the weights once
    native = probe["arch"].img_size
    if m.img_size is not None and m.img_size != native and not m.resize_pos_embed:
        raise OptionError(f"encoder {encoder_path} was trained at {native} px but model.img_size is {m.img_size}; "
                          f"set model.img_size={native}, or model.resize_pos_embed=true to resize its "
                          f"position table")
    for key in ("mean", "std"):
        wanted = d[key]
        if wanted is not None and [round(float(x), 6) for x in wanted] != [round(float(x), 6) for x in probe[key]]:
            raise OptionError(f"data.{key} {list(wanted)} differs from the normalisation the encoder {encoder_path} "
                              f"was trained with ({probe[key]}); leave data.{key} null to use the encoder's")
    model, meta = load_encoder(encoder_path, img_size=m.img_size, num_classes=num_classes,
                               drop_path_rate=m.drop_path)
    if m.img_size is not None and m.img_size != native:
        print(f"resized the position table of {encoder_path} from {native} px to {m.img_size} px")
    return model, meta


def _transforms(config: DictConfig, img_size: int, mean: list[float], std: list[float]
                ) -> tuple[FaceTransform, FaceTransform]:
    a = config.data.augment
    train = FaceTransform(img_size, mean, std, train=True, crop_scale=tuple(a.crop_scale), hflip=a.hflip,
                          rotation=a.rotation, color_jitter=a.color_jitter)
    return train, FaceTransform(img_size, mean, std, train=False)


def _export_fn(stage: str, task: str, label_names: Sequence[str], arch_meta: dict[str, Any], run_dir: Path,
               table: pd.DataFrame | None = None, mean: list[float] | None = None, std: list[float] | None = None):
    """Write the best (EMA) weights as a classifier export of the backbone's kind (a ViT export, or a timm
    classifier export), and the validation probabilities beside it."""
    timm_backbone = arch_meta.get("backbone") == "timm"
    summary = timm_meta_summary(arch_meta) if timm_backbone else export_meta_summary(arch_meta)
    history = [summary] + list(arch_meta.get("history", []))

    def export(model: nn.Module, out: Path, result: dict[str, Any], outputs: dict[str, np.ndarray]) -> None:
        source = {"stage": stage, "run": str(run_dir), "epoch": result["epoch"], "val_score": result["score"]}
        head = {"task": task, "labels": list(label_names), "activation": "sigmoid",
                "thresholds": result.get("thresholds", {})}
        if timm_backbone:
            save_timm_classifier(out, model, arch_meta["model_name"], arch_meta["img_size"], mean, std, head,
                                 source, model_kwargs=arch_meta["model_kwargs"], history=history, overwrite=True)
        else:
            state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
            save_encoder(out, state, arch_meta["arch"], mean, std, overwrite=True, history=history, source=source,
                         head=head)
        if table is not None:
            write_oof(run_dir / OOF_NAME, table, outputs, label_names)

    return export


def _samples(dataset: TableSamples, transform: FaceTransform, seed: int) -> SeededSamples:
    return SeededSamples(dataset, transform, seed=seed)


# ---------------------------------------------------------------- teachers

class ProbabilityEnsemble(nn.Module):
    """Several classifiers as one: the logit of their mean sigmoid probability."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.models = nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.sigmoid(m(images).float()) for m in self.models]).mean(dim=0)
        return torch.logit(probs, eps=1e-6)


def resolve_teacher_paths(spec: Any, fold: int | None) -> list[Path]:
    """Exports named by ``distill.teachers``: export folders, or an emotion run (its same-fold export, so
    the teacher never saw this fold's validation data)."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    paths: list[Path] = []
    for item in map(Path, items):
        same_fold = item / f"{FOLD_PREFIX}{fold}" / "export"
        if (item / "export").is_dir():
            paths.append(item / "export")
        elif fold is not None and same_fold.is_dir():
            paths.append(same_fold)
        elif any(item.glob(f"{FOLD_PREFIX}*/export")):
            raise InputError(item, f"this emotion run has no finished fold {fold} export to distil from")
        else:  # an export folder or a foreign checkpoint; loading it reports what is wrong
            paths.append(item)
    return paths


def load_teacher(paths: Sequence[Path], img_size: int, mean: list[float], std: list[float]) -> nn.Module | None:
    """The teacher of ``paths``: basic-emotion classifier exports of either kind (ViT or timm, so a CNN can teach
    a ViT and the reverse), read through ``load_export`` as logits; several are one ``ProbabilityEnsemble``.
    Each must output the basic emotions in the kit's order and expect the student's input."""
    if not paths:
        return None
    models = []
    for path in paths:
        path = Path(path)
        export_dir = path.parent if path.is_file() else path
        info = classifier_meta(export_dir)
        if list(info["labels"] or []) != list(labels.BASIC_EMOTIONS):
            raise InputError(path, f"teacher outputs {info['labels']}, expected the basic emotions in the "
                                   f"kit's order {list(labels.BASIC_EMOTIONS)}; refusing to distil from it")
        if input_signature(info["img_size"], info["mean"], info["std"]) != input_signature(img_size, mean, std):
            raise InputError(path, f"teacher expects {info['img_size']} px with mean {info['mean']} std "
                                   f"{info['std']}, the student {img_size} px with mean {mean} std {std}; set "
                                   f"model.img_size / data.mean / data.std to match")
        model, meta = load_export(export_dir)
        if meta["scores"] != "sigmoid_logits":  # a classifier of either kind gives logits; kept as a guard
            raise InputError(path, f"teacher gives {meta['scores']}, not sigmoid logits; refusing to distil from it")
        models.append(model.eval())
    return models[0] if len(models) == 1 else ProbabilityEnsemble(models)


# ---------------------------------------------------------------- runs

def _class_weights(setting: Any, y_train: np.ndarray, names: Sequence[str]) -> np.ndarray:
    if setting in (None, "none"):
        return np.ones(len(names))
    if setting == "inverse_frequency":
        return inverse_frequency_weights(y_train >= 0.5, names)
    values = np.asarray(list(setting), dtype=np.float64)
    if values.shape != (len(names),) or not np.all(np.isfinite(values)) or np.any(values < 0):
        raise OptionError(f"loss.class_weights must be inverse_frequency, none, or {len(names)} non-negative "
                          f"numbers in the order {list(names)}; got {setting!r}")
    return values


def train_emotion(config: DictConfig, resume: str | None = None, overrides: Sequence[str] = (),
                  folds: Sequence[int] | None = None) -> Path:
    """Train the fold models (all, or ``folds``); returns the run folder with its fold report."""
    config, run_dir, resuming = runs.start_or_resume("emotion", config, resume, overrides, engine.FROZEN_ON_RESUME)
    with runs.discard_if_unused(run_dir, created=not resuming):
        _train_emotion_folds(config, run_dir, resuming, folds)
    state = runs.process_state()
    state.wait_for_everyone()
    report = write_fold_report(run_dir, config.data.folds) if state.is_main_process else None
    if report is not None:
        print(report.read_text(encoding="utf-8"))
    return run_dir


def _train_emotion_folds(config: DictConfig, run_dir: Path, resuming: bool, folds: Sequence[int] | None) -> None:
    config, curriculum = curriculum_lib.configure(config, "emotion")  # train.epochs null: the stages' sum
    d, t = config.data, config.train
    table = load_tables(d.datasets, d.non_basic)
    table = table[table["has_target"]].reset_index(drop=True)
    table = crop_frame_rows(table, d.get("frame_crops"), run_dir / "frame_crops", "emotion")
    if table.empty:
        raise OptionError("no labelled sample in data.datasets (after the non-basic policy)")
    assignment = fold_assignment(table, run_dir, d.folds, d.fold_seed)
    wanted = list(range(d.folds)) if folds is None else sorted(set(folds))
    outside = [k for k in wanted if not 0 <= k < d.folds]
    if outside:
        raise OptionError(f"--folds {outside} outside 0..{d.folds - 1}")
    names = labels.BASIC_EMOTIONS
    for k in wanted:
        fold_dir = run_dir / f"{FOLD_PREFIX}{k}"
        if read_status(fold_dir).get("state") == "finished":
            print(f"emotion fold {k}: already finished, skipped")
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        train_table, val_table = folds_lib.split(table, assignment, k)
        set_seed(derived_seed(t.seed, k) % 2**32)  # the new head's initialisation
        model, meta = build_backbone(config, len(names))
        img_size, mean, std = meta["img_size"], list(meta["mean"]), list(meta["std"])
        train_tf, eval_tf = _transforms(config, img_size, mean, std)
        y_train = table_targets(train_table)
        weights = torch.tensor(_class_weights(config.loss.class_weights, y_train, names), dtype=torch.float32)
        teacher = load_teacher(resolve_teacher_paths(config.distill.teachers, k), img_size, mean, std)
        distill_weight = float(config.distill.weight)

        def loss_fn(logits: torch.Tensor, batch: dict[str, torch.Tensor], teacher_probs: torch.Tensor | None,
                    weights: torch.Tensor = weights) -> torch.Tensor:
            loss = weighted_bce(logits, batch["target"], weights)
            if teacher_probs is not None:
                loss = loss + distill_weight * binary_kl(logits, teacher_probs)
            return loss

        train_set: Any = SeededSamples(TableSamples(train_table, y_train), train_tf, derived_seed(t.seed, k))
        if curriculum is not None:  # the epoch's plan of single, real and generated compound samples
            train_set = curriculum_lib.CurriculumSamples(train_set, y_train, curriculum, derived_seed(t.seed, k))
        engine.fit(
            stage=f"emotion fold {k}", config=config, run_dir=fold_dir, model=model, train_set=train_set,
            val_set=SeededSamples(TableSamples(val_table, table_targets(val_table)), eval_tf, t.seed),
            loss_fn=loss_fn, evaluate=lambda p, y, m: evaluate_multilabel(p, y, names),
            export=_export_fn("emotion", "emotion", names, meta, fold_dir, val_table, mean, std),
            teacher=teacher, resume_from=runs.resume_point(fold_dir) if resuming else None,
            epoch_info=curriculum.epoch_info if curriculum is not None else None,
            select_from=curriculum.selection_start(t.epochs) if curriculum is not None else 0)


def train_au(config: DictConfig, resume: str | None = None, overrides: Sequence[str] = ()) -> Path:
    """AU fine-tuning of the encoder; the export (``<run>/export``) feeds the emotion stage."""
    run_dir, trained = run_single("au", config, resume, overrides, _train_au)
    if not trained:
        return run_dir
    best = json.loads((run_dir / engine.VALIDATION_FILE).read_text(encoding="utf-8"))
    print(f"AU mean F1 {best['mean_f1']:.4f} at 0.5, {best['mean_f1_tuned']:.4f} at tuned thresholds "
          f"(epoch {best['epoch']}); export -> {run_dir / engine.BEST_DIR}")
    return run_dir


def _train_au(config: DictConfig, run_dir: Path, resuming: bool) -> None:
    d, t = config.data, config.train
    if d.au_set not in labels.AU_SETS:
        raise OptionError(f"data.au_set must be one of {sorted(labels.AU_SETS)}, got {d.au_set!r}")
    names = [f"AU{n}" for n in labels.AU_SETS[d.au_set]]
    table = load_tables(d.datasets)
    values, mask = au_arrays(table, d.au_set)
    labelled = mask.any(axis=1)
    if not labelled.any():
        raise OptionError(f"no sample in data.datasets carries any of the {d.au_set} AUs {names}")
    table, values, mask = table[labelled].reset_index(drop=True), values[labelled], mask[labelled]
    assignment = fold_assignment(table, run_dir, d.folds, d.fold_seed)
    val = assignment == d.val_fold
    set_seed(t.seed)  # the new head's initialisation
    model, meta = build_backbone(config, len(names))
    img_size, mean, std = meta["img_size"], list(meta["mean"]), list(meta["std"])
    train_tf, eval_tf = _transforms(config, img_size, mean, std)
    weight = torch.tensor(pos_weights(values[~val], mask[~val]), dtype=torch.float32)

    def loss_fn(logits: torch.Tensor, batch: dict[str, torch.Tensor], teacher_probs: torch.Tensor | None
                ) -> torch.Tensor:
        return masked_bce_pos_weight(logits, batch["target"], batch["mask"], weight)

    engine.fit(
        stage="au", config=config, run_dir=run_dir, model=model,
        train_set=SeededSamples(TableSamples(table[~val], values[~val], mask[~val]), train_tf, t.seed),
        val_set=SeededSamples(TableSamples(table[val], values[val], mask[val]), eval_tf, t.seed),
        loss_fn=loss_fn, evaluate=lambda p, y, m: evaluate_multilabel(p, y, names, m),
        export=_export_fn("au", "au", names, meta, run_dir, None, mean, std),
        resume_from=runs.resume_point(run_dir) if resuming else None)

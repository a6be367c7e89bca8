"""Training the multi-task track (``finetune/multitask.py``) with the kit's engine.

``sjmt`` (Pons & Masip): one sigmoid output layer over the union of the datasets' label spaces, here the 7
expressions of ``labels.SEVEN_EXPRESSIONS`` then the 17 C-EXPR-DB AUs; each sample's binary cross-entropy is
summed over its own labels only (an expression-labelled image: the 7 expressions, a compound one being
two-hot and an Other/contempt one all-zero; an AU-labelled image: the AUs its dataset annotates), averaged
over samples. The export (``model.safetensors`` + ``multitask.json``) gives make_submission the 6 basic-emotion
probabilities.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from accelerate.utils import set_seed
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from abaw_ce import labels
from abaw_ce.cexprnet.model import build_backbone, rebuild_backbone
from abaw_ce.cexprnet.train import IMAGENET_MEAN, IMAGENET_STD, compound_f1, compound_scores, compound_truth
from abaw_ce.data.labelled import FaceTransform, TableSamples
from abaw_ce.data.table import au_arrays
from abaw_ce.data.video_frames import crop_frame_rows
from abaw_ce.errors import InputError
from abaw_ce.multitask import EXPORT_META_FILE
from abaw_ce.multitask.coupling import selective_bce
from abaw_ce.train import engine, runs
from abaw_ce.train.finetune import _fold_assignment, _resume_point, load_tables, run_single
from abaw_ce.train.metrics import multilabel_f1
from abaw_ce.train.sampling import SeededSamples

STAGE = "multitask"
METHODS = ("sjmt",)
MODEL_FILE, META_FILE = "model.safetensors", EXPORT_META_FILE
EXPRESSIONS = labels.SEVEN_EXPRESSIONS
AU_NAMES = tuple(f"AU{n}" for n in labels.CEXPR_AUS)
OUTPUTS = EXPRESSIONS + AU_NAMES
N_EXPR = len(EXPRESSIONS)
# Where each of the 6 basic emotions sits among the outputs (make_submission's order).
BASIC_COLUMNS = [EXPRESSIONS.index(e) for e in labels.BASIC_EMOTIONS]


class PooledHead(nn.Module):
    """A backbone's feature map, averaged over locations, into one linear layer over every output."""

    def __init__(self, backbone: nn.Module, outputs: int = len(OUTPUTS)):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images).mean(dim=(2, 3)))


class BasicEmotionProbabilities(nn.Module):
    """An SJMT network as (B, 6) sigmoid probabilities of the basic emotions, for make_submission."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("columns", torch.tensor(BASIC_COLUMNS), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(images).float()[:, self.columns])


def sjmt_targets(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(N, 24) targets and label masks over ``OUTPUTS``: the 7 expressions where a row has an expression
    label (basic one-hot, compound two-hot, neutral its own, Other and contempt all-zero), each AU where it
    is annotated."""
    names = table["expression"].fillna("").astype(str).tolist()
    targets = np.zeros((len(table), len(OUTPUTS)), dtype=np.float32)
    mask = np.zeros_like(targets)
    for i, name in enumerate(names):
        if not name:
            continue
        mask[i, :N_EXPR] = 1.0
        if labels.normalise_name(name) == "neutral":
            targets[i, EXPRESSIONS.index("neutral")] = 1.0
        else:
            targets[i, BASIC_COLUMNS] = labels.multilabel_target(name)
    values, annotated = au_arrays(table, "cexpr")
    targets[:, N_EXPR:], mask[:, N_EXPR:] = values, annotated
    return targets, mask


def evaluate(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """Basic-emotion F1 (the 6 of the 7 expression outputs, at 0.5), AU F1, and the compound macro F1 over
    the 12 C-EXPR-DB compounds and the 7 challenge classes from pair sums; early stopping follows the
    12-compound F1 when the validation part has compound rows, else the basic-emotion F1."""
    has_expr = masks[:, 0] > 0
    basic_p, basic_y = probs[:, BASIC_COLUMNS], targets[:, BASIC_COLUMNS]
    expr = multilabel_f1(basic_p, basic_y, labels.BASIC_EMOTIONS, np.repeat(has_expr[:, None], 6, axis=1), 0.5)
    truth = compound_truth(basic_y, has_expr, "sigmoid")
    scores = compound_scores(basic_p, "sigmoid")
    au_mask = masks[:, N_EXPR:] > 0
    labelled = [j for j in range(len(AU_NAMES)) if au_mask[:, j].any()]
    au = multilabel_f1(probs[:, N_EXPR:][:, labelled], targets[:, N_EXPR:][:, labelled],
                       [AU_NAMES[j] for j in labelled], au_mask[:, labelled], 0.5)
    result = {"expr_f1": expr["per_class"], "mean_expr_f1": expr["mean"],
              "compound_f1": compound_f1(scores, truth, len(labels.CEXPR_COMPOUNDS)),
              "challenge_f1": compound_f1(scores, truth, len(labels.CHALLENGE_COMPOUNDS)),
              "au_f1": au["per_class"], "mean_au_f1": au["mean"] if labelled else None,
              "samples": int(len(probs))}
    use_compound = result["compound_f1"] is not None
    result["score"] = float(result["compound_f1"] if use_compound else result["mean_expr_f1"])
    result["score_name"] = "compound_f1" if use_compound else "mean_expr_f1"
    return result


def load_multitask(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A multi-task export folder -> (network in eval mode returning its raw outputs, metadata)."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise InputError(path, f"not a multi-task export (no {META_FILE})")
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    net = PooledHead(rebuild_backbone(meta["backbone"]), len(meta["outputs"]))
    net.load_state_dict(load_file(str(path / MODEL_FILE)))
    return net.eval(), meta


def train_multitask(config: DictConfig, resume: str | None = None, overrides: Sequence[str] = ()) -> Path:
    if str(config.model.method) not in METHODS:
        raise ValueError(f"model.method must be one of {METHODS}, got {config.model.method!r}")
    run_dir, trained = run_single(STAGE, config, resume, overrides, _train)
    if not trained:
        return run_dir
    best = json.loads((run_dir / engine.VALIDATION_FILE).read_text(encoding="utf-8"))
    parts = [f"{name} {best[key]:.4f}" for name, key in (("basic F1", "mean_expr_f1"), ("compound F1", "compound_f1"),
                                                          ("AU F1", "mean_au_f1")) if best.get(key) is not None]
    print(f"multi-task ({config.model.method}) {', '.join(parts)} (epoch {best['epoch']}); "
          f"export -> {run_dir / engine.BEST_DIR}")
    return run_dir


def _train(config: DictConfig, run_dir: Path, resuming: bool) -> None:
    d, t, m = config.data, config.train, config.model
    table = load_tables(d.datasets, non_basic="zero")
    table = crop_frame_rows(table, d.frame_crops, run_dir / "frame_crops", STAGE)
    targets, masks = sjmt_targets(table)
    keep = masks.any(axis=1)
    if not keep.any():
        raise ValueError("data.datasets holds no image with an expression or AU label")
    table, targets, masks = table[keep].reset_index(drop=True), targets[keep], masks[keep]
    val = _fold_assignment(table, run_dir, d.folds, d.fold_seed) == d.val_fold

    set_seed(t.seed)
    backbone, info = build_backbone(str(m.backbone), int(m.img_size))
    net = PooledHead(backbone)
    mean, std = ((info["mean"], info["std"]) if info["kind"] == "vit" else (IMAGENET_MEAN, IMAGENET_STD))
    mean, std = (list(d.mean) if d.mean is not None else mean), (list(d.std) if d.std is not None else std)
    meta = {"track": STAGE, "method": str(m.method), "backbone": info, "img_size": int(m.img_size), "mean": mean,
            "std": std, "outputs": list(OUTPUTS), "activation": "sigmoid",
            "expression_labels": list(labels.BASIC_EMOTIONS)}
    train_tf = FaceTransform(int(m.img_size), mean, std, train=True, **dict(d.augment))
    eval_tf = FaceTransform(int(m.img_size), mean, std, train=False)

    def loss_fn(outputs: torch.Tensor, batch: dict[str, torch.Tensor], _teacher: torch.Tensor | None
                ) -> torch.Tensor:
        return selective_bce(outputs, batch["target"], batch["mask"])

    def export(model: nn.Module, out: Path, result: dict[str, Any], _outputs: dict[str, np.ndarray]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / MODEL_FILE))
        runs.atomic_write_json(out / META_FILE, {**meta, "source": {
            "stage": STAGE, "run": str(run_dir), "epoch": result["epoch"], "val_score": result["score"]}})

    engine.fit(stage=STAGE, config=config, run_dir=run_dir, model=net,
               train_set=SeededSamples(TableSamples(table[~val], targets[~val], masks[~val]), train_tf, t.seed),
               val_set=SeededSamples(TableSamples(table[val], targets[val], masks[val]), eval_tf, t.seed),
               loss_fn=loss_fn, evaluate=evaluate, export=export,
               resume_from=_resume_point(run_dir) if resuming else None, activation=torch.sigmoid)

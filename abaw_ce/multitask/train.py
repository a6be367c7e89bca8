"""Training the multi-task track (``finetune/multitask.py``) with the kit's engine.

``sjmt`` (Pons & Masip): one sigmoid output layer over the union of the datasets' label spaces, here the 7
expressions of ``labels.SEVEN_EXPRESSIONS`` then the 17 C-EXPR-DB AUs; each sample's binary cross-entropy is
summed over its own labels only (an expression-labelled image: the 7 expressions, a compound one being
two-hot and an Other/contempt one all-zero; an AU-labelled image: the AUs its dataset annotates), averaged
over samples.

``fbn`` (FaceBehaviorNet, ``abaw_ce.multitask.fbn``): valence-arousal, 7-expression and 17-AU heads; each
update joins VA-, expression- and AU-labelled images in fixed shares (``GroupedBatchOrder``); the coupling
terms are switched in the ``loss`` section. Its validation also reports the zero-shot compound F1.

The export (``model.safetensors`` + ``multitask.json``, ``abaw_ce.models.multitask.save_export``) gives
make_submission the 6 basic-emotion probabilities (SJMT's sigmoids, FaceBehaviorNet's softmax columns).
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
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from abaw_ce import labels
from abaw_ce.cexprnet.train import compound_f1, compound_scores, compound_truth
from abaw_ce.data.labelled import FaceTransform, TableSamples
from abaw_ce.data.table import au_arrays
from abaw_ce.data.video_frames import crop_frame_rows
from abaw_ce.errors import OptionError
from abaw_ce.models.backbones import build_backbone
from abaw_ce.models.multitask import (AU_NAMES, BASIC_COLUMNS, EXPRESSIONS, N_EXPR, OUTPUTS, FaceBehaviorNet, MMLNet,
                                      PooledHead, save_export)
from abaw_ce.multitask import fbn, mml
from abaw_ce.multitask.coupling import expression_au_prior, selective_bce
from abaw_ce.train import engine
from abaw_ce.train.engine import fold_assignment, load_tables, run_single
from abaw_ce.train.runs import resume_point
from abaw_ce.train.metrics import multilabel_f1
from abaw_ce.train.sampling import GroupedBatchOrder, SeededSamples

STAGE = "multitask"
METHODS = ("sjmt", "fbn", "mml")


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
    return evaluate_heads(probs, targets, masks, slice(0, N_EXPR), slice(N_EXPR, len(OUTPUTS)), threshold=0.5)


def evaluate_heads(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray, expr: slice, au: slice,
                   va: slice | None = None, zero_shot=None, threshold: float | None = None) -> dict[str, Any]:
    """Validation of an expression head over ``labels.SEVEN_EXPRESSIONS`` and a sigmoid AU head at the given
    output columns: basic-emotion F1 (at ``threshold``; default 0.25, for a softmax), compound F1 from pair
    sums (and from ``zero_shot(probs)`` when given), AU F1, valence-arousal CCC when ``va`` is given. Early
    stopping follows the 12-compound F1 when the validation part has compound rows, else the basic F1."""
    basic_in_expr = [EXPRESSIONS.index(e) for e in labels.BASIC_EMOTIONS]
    has_expr = masks[:, expr.start] > 0
    basic_p, basic_y = probs[:, expr][:, basic_in_expr], targets[:, expr][:, basic_in_expr]
    result_expr = multilabel_f1(basic_p, basic_y, labels.BASIC_EMOTIONS, np.repeat(has_expr[:, None], 6, axis=1),
                                fbn.EXPRESSION_THRESHOLD if threshold is None else threshold)
    truth = compound_truth(basic_y, has_expr, "kl")
    scores = compound_scores(basic_p, "kl")
    au_mask = masks[:, au] > 0
    labelled = [j for j in range(len(AU_NAMES)) if au_mask[:, j].any()]
    result_au = multilabel_f1(probs[:, au][:, labelled], targets[:, au][:, labelled],
                              [AU_NAMES[j] for j in labelled], au_mask[:, labelled], 0.5)
    result = {"expr_f1": result_expr["per_class"], "mean_expr_f1": result_expr["mean"],
              "compound_f1": compound_f1(scores, truth, len(labels.CEXPR_COMPOUNDS)),
              "challenge_f1": compound_f1(scores, truth, len(labels.CHALLENGE_COMPOUNDS)),
              "au_f1": result_au["per_class"], "mean_au_f1": result_au["mean"] if labelled else None,
              "samples": int(len(probs))}
    if zero_shot is not None:
        result["zero_shot_f1"] = compound_f1(zero_shot(probs), truth, len(labels.CEXPR_COMPOUNDS))
    if va is not None:
        result["va_ccc"] = fbn.va_ccc(probs, targets, masks)
    use_compound = result["compound_f1"] is not None
    result["score"] = float(result["compound_f1"] if use_compound else result["mean_expr_f1"])
    result["score_name"] = "compound_f1" if use_compound else "mean_expr_f1"
    return result


def evaluate_fbn(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    return evaluate_heads(probs, targets, masks, fbn.EXPR, fbn.AU, fbn.VA, fbn.zero_shot)


def evaluate_mml(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    return evaluate_heads(probs, targets, masks, mml.EXPR, mml.AU)


def _mml_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    return torch.cat([outputs[:, mml.EXPR].softmax(dim=1), torch.sigmoid(outputs[:, mml.AU])], dim=1)


def _meta_validation_rows(table: pd.DataFrame, masks: np.ndarray, train: np.ndarray, fraction: float, seed: int
                          ) -> np.ndarray:
    """Expression-labelled training rows of a seeded ``fraction`` of the training groups (at least one
    group): MML's meta-validation batches, kept out of the base network's training."""
    candidates = np.flatnonzero(train & (masks[:, 0] > 0))
    if len(candidates) == 0:
        raise OptionError("MML needs expression-labelled training images for its meta-validation batches")
    groups = np.array(sorted(set(table["group"].iloc[candidates])))
    chosen = np.random.default_rng(seed).permutation(groups)[: max(1, int(round(fraction * len(groups))))]
    return candidates[np.isin(table["group"].iloc[candidates].to_numpy(), chosen)]


def train_multitask(config: DictConfig, resume: str | None = None, overrides: Sequence[str] = ()) -> Path:
    if str(config.model.method) not in METHODS:
        raise OptionError(f"model.method must be one of {METHODS}, got {config.model.method!r}")
    run_dir, trained = run_single(STAGE, config, resume, overrides, _train)
    if not trained:
        return run_dir
    best = json.loads((run_dir / engine.VALIDATION_FILE).read_text(encoding="utf-8"))
    parts = [f"{name} {best[key]:.4f}" for name, key in (("basic F1", "mean_expr_f1"), ("compound F1", "compound_f1"),
                                                          ("zero-shot compound F1", "zero_shot_f1"),
                                                          ("AU F1", "mean_au_f1"), ("VA CCC", "va_ccc"))
             if best.get(key) is not None]
    print(f"multi-task ({config.model.method}) {', '.join(parts)} (epoch {best['epoch']}); "
          f"export -> {run_dir / engine.BEST_DIR}")
    return run_dir


def _train(config: DictConfig, run_dir: Path, resuming: bool) -> None:
    d, t, m, lw = config.data, config.train, config.model, config.loss
    method = str(m.method)
    table = load_tables(d.datasets, non_basic="zero")
    table = crop_frame_rows(table, d.get("frame_crops"), run_dir / "frame_crops", STAGE)
    coupling = fbn.Coupling(bool(lw.co_annotation), bool(lw.soft_co_annotation), bool(lw.distribution_matching),
                            str(lw.observational))
    if method == "mml":
        table = mml.merge_same_images(table)
    targets, masks = {"sjmt": lambda: sjmt_targets(table), "fbn": lambda: fbn.fbn_targets(table, coupling),
                      "mml": lambda: mml.mml_targets(table)}[method]()
    keep = masks.any(axis=1)
    if not keep.any():
        raise OptionError("data.datasets holds no image with an expression, AU or valence-arousal label")
    table, targets, masks = table[keep].reset_index(drop=True), targets[keep], masks[keep]
    val = fold_assignment(table, run_dir, d.folds, d.fold_seed) == d.val_fold
    train = ~val

    set_seed(t.seed)
    backbone, info = build_backbone(str(m.backbone), int(m.img_size))
    mean, std = ((info["mean"], info["std"]) if info["kind"] == "vit"
                 else (list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD)))
    mean, std = (list(d.mean) if d.mean is not None else mean), (list(d.std) if d.std is not None else std)
    train_tf = FaceTransform(int(m.img_size), mean, std, train=True, **dict(d.augment))
    eval_tf = FaceTransform(int(m.img_size), mean, std, train=False)
    extras: tuple[Any, ...] = ()  # saved in the checkpoints beside the base network
    if method == "sjmt":
        net, outputs, order = PooledHead(backbone), OUTPUTS, None
        val_targets, val_masks = targets[val], masks[val]
        evaluate_fn, activation = evaluate, torch.sigmoid

        def loss_fn(out: torch.Tensor, batch: dict[str, torch.Tensor], _teacher: torch.Tensor | None
                    ) -> torch.Tensor:
            return selective_bce(out, batch["target"], batch["mask"])
    elif method == "mml":
        net, outputs, order = MMLNet(backbone), mml.OUTPUTS, None
        val_targets, val_masks = targets[val], masks[val]
        meta_rows = _meta_validation_rows(table, masks, train, float(lw.meta_val_fraction), int(t.seed))
        train[meta_rows] = False
        stats = None if str(lw.au_statistics) == "prior" else mml.statistics_from(table[train], targets[train],
                                                                                   masks[train])
        if stats is None:
            stats = expression_au_prior(labels.CEXPR_AUS, "weighted", mml.EXPRESSIONS)
            print(f"{STAGE}: AU statistics from the emotion->AU prior (loss.au_statistics={lw.au_statistics}; "
                  f"no training image has both an expression and AU labels)" if str(lw.au_statistics) != "prior"
                  else f"{STAGE}: AU statistics from the emotion->AU prior")
        else:
            print(f"{STAGE}: AU statistics counted on the training images with an expression and AU labels")
        print(f"{STAGE}: {len(meta_rows)} expression images of the training part held out for the meta step")
        meta_set = SeededSamples(TableSamples(table.iloc[meta_rows], targets[meta_rows], masks[meta_rows]), eval_tf,
                                 t.seed)
        meta_batches = mml.MetaBatches(meta_set, int(t.batch_size), int(t.seed))
        meta_net = mml.MetaWeightNet(backbone.num_features, int(lw.meta_hidden))
        meta_optimizer = torch.optim.Adam(meta_net.parameters(), lr=float(lw.meta_lr))
        stats_t = torch.as_tensor(stats, dtype=torch.float32)
        extras = (meta_net, meta_optimizer)
        evaluate_fn, activation = evaluate_mml, _mml_probabilities

        def loss_fn(out: torch.Tensor, batch: dict[str, torch.Tensor], _teacher: torch.Tensor | None
                    ) -> torch.Tensor:
            stats_on = stats_t.to(out.device)  # a small table
            features = net.last_features
            held = meta_batches.draw(batch["index"])
            mml.meta_step(net, meta_net, meta_optimizer, out, features, batch["target"], batch["mask"],
                          held["image"].to(out.device), held["target"].to(out.device), held["mask"].to(out.device),
                          stats_on, float(config.optim.lr))
            weights = meta_net(features.detach()).detach()
            return mml.weighted_loss(out, batch["target"], batch["mask"], stats_on, weights)
    else:
        net, outputs = FaceBehaviorNet(backbone), fbn.OUTPUTS
        # validation is scored on the real labels only, never on co-annotated ones
        val_targets, val_masks = fbn.fbn_targets(table[val].reset_index(drop=True))
        groups = fbn.task_groups(masks[train])
        order = GroupedBatchOrder(list(groups.values()), int(t.batch_size), int(t.seed))
        print(f"{STAGE}: each batch of {t.batch_size} joins " + ", ".join(
            f"{k} {n} (of {len(groups[k])} images)" for k, n in zip(groups, order.shares))
              + f"; {order.batches} batches an epoch")
        evaluate_fn, activation = evaluate_fbn, fbn.probabilities
        weights = fbn.FbnWeights(float(lw.au), float(lw.va), float(lw.soft), float(lw.dm))
        prior = fbn.fbn_prior()

        def loss_fn(out: torch.Tensor, batch: dict[str, torch.Tensor], _teacher: torch.Tensor | None
                    ) -> torch.Tensor:
            return fbn.fbn_loss(out, batch["target"], batch["mask"], coupling, weights, prior)
    meta = {"track": STAGE, "method": method, "backbone": info, "img_size": int(m.img_size), "mean": mean,
            "std": std, "outputs": list(outputs), "expression_labels": list(labels.BASIC_EMOTIONS),
            "coupling": vars(coupling) if method == "fbn" else None}

    def export(model: nn.Module, out: Path, result: dict[str, Any], _outputs: dict[str, np.ndarray]) -> None:
        save_export(out, model, {**meta, "source": {
            "stage": STAGE, "run": str(run_dir), "epoch": result["epoch"], "val_score": result["score"]}})

    engine.fit(stage=STAGE, config=config, run_dir=run_dir, model=net,
               train_set=SeededSamples(TableSamples(table[train], targets[train], masks[train]), train_tf, t.seed),
               val_set=SeededSamples(TableSamples(table[val], val_targets, val_masks), eval_tf, t.seed),
               loss_fn=loss_fn, evaluate=evaluate_fn, export=export,
               resume_from=resume_point(run_dir) if resuming else None, activation=activation, train_order=order,
               extra_state=extras)

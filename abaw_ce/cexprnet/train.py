"""Training the C-EXPR-NET track (``finetune/cexprnet.py``) with the kit's engine.

Rows with a basic or compound expression get a KL target (one-hot, or 0.5 on each emotion of the pair);
rows with AU labels get them over the 17 C-EXPR-DB AUs (unlabelled AUs masked); images without any AU label
can be labelled by an AU teacher (``loss.au_teacher``: an AU-stage export), as the paper does. The engine sees
one (B, 6 + 17) output: softmax expression logits, then sigmoid AU logits. The best (EMA) weights are
exported to ``<run>/export``: ``model.safetensors``, ``cexprnet.json`` and the AU description tokenizer.
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
from abaw_ce.cexprnet import EXPORT_META_FILE
from abaw_ce.cexprnet.au_text import encode, load_tokenizer, train_tokenizer
from abaw_ce.cexprnet.model import CExprNet, LossWeights, build_backbone, cexprnet_loss, rebuild_backbone
from abaw_ce.cexprnet.modules import kl_targets
from abaw_ce.data.labelled import FaceTransform, TableSamples
from abaw_ce.data.table import au_arrays
from abaw_ce.errors import InputError
from abaw_ce.train import engine, runs
from abaw_ce.train.finetune import _fold_assignment, _resume_point, load_tables, run_single
from abaw_ce.train.metrics import multilabel_f1
from abaw_ce.train.sampling import SeededSamples

STAGE = "cexprnet"
MODEL_FILE, META_FILE, TOKENIZER_FILE = "model.safetensors", EXPORT_META_FILE, "tokenizer.json"
AU_NAMES = tuple(f"AU{n}" for n in labels.CEXPR_AUS)
N_EXPR = len(labels.BASIC_EMOTIONS)
# A softmax emotion counts as shown at >= 0.25: half of the 0.5 a compound's target gives each of its pair.
EXPRESSION_THRESHOLD = 0.25
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class FlatOutputs(nn.Module):
    """The engine's interface: one (B, 6 + A) tensor, expression logits first."""

    def __init__(self, net: CExprNet):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(images)
        return torch.cat([out["expr_logits"], out["au_logits"]], dim=1)


def to_probabilities(outputs: torch.Tensor) -> torch.Tensor:
    return torch.cat([outputs[:, :N_EXPR].softmax(dim=1), torch.sigmoid(outputs[:, N_EXPR:])], dim=1)


def expression_targets(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(N, 6) KL targets and (N,) mask: rows whose expression is a basic emotion or a compound."""
    kinds = [labels.expression_kind(e) if e else "" for e in table["expression"].fillna("").astype(str)]
    has = np.array([k in ("basic", "compound") for k in kinds])
    targets = np.zeros((len(table), N_EXPR), dtype=np.float32)
    if has.any():
        targets[has] = kl_targets(table["expression"][has].astype(str).tolist())
    return targets, has


def teacher_au_labels(table: pd.DataFrame, values: np.ndarray, mask: np.ndarray, teacher: str | Path,
                      batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, int]:
    """Fill the AUs an AU-stage export predicts, for rows without any AU label (thresholds of its export,
    else 0.5). Returns new values, mask and the number of rows labelled."""
    from abaw_ce.models.export import load_classifier

    model, meta = load_classifier(teacher)
    head = meta.get("head") or {}
    if head.get("task") != "au":
        raise InputError(Path(teacher), f"loss.au_teacher must be an AU-stage export; this one's head is "
                                        f"{head.get('task')!r}")
    columns = [(j, AU_NAMES.index(name)) for j, name in enumerate(head["labels"]) if name in AU_NAMES]
    cuts = np.array([float(head.get("thresholds", {}).get(name, 0.5)) for name in head["labels"]])
    rows = np.flatnonzero(~mask.any(axis=1))
    values, mask = values.copy(), mask.copy()
    if len(rows) == 0 or not columns:
        return values, mask, 0
    transform = FaceTransform(meta["arch"].img_size, meta["mean"], meta["std"], train=False)
    samples = SeededSamples(TableSamples(table.iloc[rows], np.zeros((len(rows), 1))), transform, seed=0)
    loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=False)
    model.eval()
    probs = []
    with torch.no_grad():
        for batch in loader:
            probs.append(torch.sigmoid(model(batch["image"])).numpy())
    on = np.concatenate(probs) >= cuts
    for j, col in columns:
        values[rows, col] = on[:, j]
        mask[rows, col] = True
    return values, mask, len(rows)


def evaluate(probs: np.ndarray, targets: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    expr = multilabel_f1(probs[:, :N_EXPR], targets[:, :N_EXPR], labels.BASIC_EMOTIONS, masks[:, :N_EXPR] > 0,
                         EXPRESSION_THRESHOLD)
    au_mask = masks[:, N_EXPR:] > 0
    labelled = [j for j in range(len(AU_NAMES)) if au_mask[:, j].any()]
    au = multilabel_f1(probs[:, N_EXPR:][:, labelled], targets[:, N_EXPR:][:, labelled],
                       [AU_NAMES[j] for j in labelled], au_mask[:, labelled], 0.5)
    return {"score": expr["mean"], "expr_f1": expr["per_class"], "mean_expr_f1": expr["mean"],
            "au_f1": au["per_class"], "mean_au_f1": au["mean"] if labelled else None,
            "samples": int(len(probs))}


def save_export(out: Path, net: CExprNet, meta: dict[str, Any], tokenizer) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / MODEL_FILE))
    tokenizer.save(str(out / TOKENIZER_FILE))
    runs.atomic_write_json(out / META_FILE, meta)


def load_cexprnet(path: str | Path) -> tuple[CExprNet, dict[str, Any]]:
    """A C-EXPR-NET export folder -> (model in eval mode, its metadata)."""
    path = Path(path)
    if not (path / META_FILE).is_file():
        raise InputError(path, f"not a C-EXPR-NET export (no {META_FILE})")
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(path / TOKENIZER_FILE)
    m = meta["model"]
    net = CExprNet(rebuild_backbone(meta["backbone"]), encode(tokenizer, max_tokens=m["max_tokens"]),
                   tokenizer.get_vocab_size(), m["block_dim"], m["text_dim"], m["text_heads"], m["text_layers"])
    net.load_state_dict(load_file(str(path / MODEL_FILE)))
    return net.eval(), meta


def build(config: DictConfig) -> tuple[CExprNet, Any, dict[str, Any]]:
    """The network, its trained tokenizer and the export metadata (input size and normalisation)."""
    m, d = config.model, config.data
    tokenizer = train_tokenizer(vocab_size=int(m.vocab_size))
    descriptions = encode(tokenizer)
    backbone, info = build_backbone(str(m.backbone), int(m.img_size))
    net = CExprNet(backbone, descriptions, tokenizer.get_vocab_size(), int(m.block_dim), int(m.text_dim),
                   int(m.text_heads), int(m.text_layers))
    default_mean, default_std = ((info["mean"], info["std"]) if info["kind"] == "vit"
                                 else (IMAGENET_MEAN, IMAGENET_STD))
    meta = {"track": STAGE, "backbone": info, "img_size": int(m.img_size),
            "mean": list(d.mean) if d.mean is not None else default_mean,
            "std": list(d.std) if d.std is not None else default_std,
            "expression_labels": list(labels.BASIC_EMOTIONS), "au_labels": list(AU_NAMES),
            "model": {"block_dim": int(m.block_dim), "text_dim": int(m.text_dim), "text_heads": int(m.text_heads),
                      "text_layers": int(m.text_layers), "max_tokens": int(descriptions.ids.shape[1])}}
    return net, tokenizer, meta


def train_cexprnet(config: DictConfig, resume: str | None = None, overrides: Sequence[str] = ()) -> Path:
    run_dir, trained = run_single(STAGE, config, resume, overrides, _train)
    if not trained:
        return run_dir
    best = json.loads((run_dir / engine.VALIDATION_FILE).read_text(encoding="utf-8"))
    au = f", AU F1 {best['mean_au_f1']:.4f}" if best.get("mean_au_f1") is not None else ""
    print(f"C-EXPR-NET expression F1 {best['mean_expr_f1']:.4f}{au} (epoch {best['epoch']}); "
          f"export -> {run_dir / engine.BEST_DIR}")
    return run_dir


def _train(config: DictConfig, run_dir: Path, resuming: bool) -> None:
    d, t, lw = config.data, config.train, config.loss
    table = load_tables(d.datasets, non_basic="zero")
    expr_y, expr_has = expression_targets(table)
    au_values, au_mask = au_arrays(table, "cexpr")
    weights = LossWeights(float(lw.expr), float(lw.au), float(lw.dist))
    if lw.au_teacher:
        au_values, au_mask, taught = teacher_au_labels(table, au_values, au_mask, lw.au_teacher, t.eval_batch_size)
        print(f"{STAGE}: the AU teacher {lw.au_teacher} labelled the AUs of {taught} image(s) without AU labels")
    if weights.au > 0 and not au_mask.any():
        raise ValueError("no image in data.datasets has an AU label; give an AU teacher "
                         "(loss.au_teacher=runs/au-.../export) or switch the AU term off (loss.au=0)")
    keep = expr_has | au_mask.any(axis=1)
    if not keep.any():
        raise ValueError("data.datasets holds no image with an expression or AU label")
    table, expr_y, expr_has = table[keep].reset_index(drop=True), expr_y[keep], expr_has[keep]
    au_values, au_mask = au_values[keep], au_mask[keep]
    targets = np.concatenate([expr_y, au_values], axis=1)
    masks = np.concatenate([np.repeat(expr_has[:, None], N_EXPR, axis=1), au_mask], axis=1).astype(np.float32)
    val = _fold_assignment(table, run_dir, d.folds, d.fold_seed) == d.val_fold

    set_seed(t.seed)
    net, tokenizer, meta = build(config)
    prior = labels.emotion_au_prior("cexpr", observational=str(lw.observational))
    augment = dict(d.augment)
    train_tf = FaceTransform(meta["img_size"], meta["mean"], meta["std"], train=True, **augment)
    eval_tf = FaceTransform(meta["img_size"], meta["mean"], meta["std"], train=False)

    def loss_fn(outputs: torch.Tensor, batch: dict[str, torch.Tensor], _teacher: torch.Tensor | None
                ) -> torch.Tensor:
        split = {"expr_logits": outputs[:, :N_EXPR], "au_logits": outputs[:, N_EXPR:]}
        total, _ = cexprnet_loss(split, batch["target"][:, :N_EXPR], batch["mask"][:, 0],
                                 batch["target"][:, N_EXPR:], batch["mask"][:, N_EXPR:], prior, weights)
        return total

    def export(model: nn.Module, out: Path, result: dict[str, Any], _outputs: dict[str, np.ndarray]) -> None:
        save_export(out, model.net, {**meta, "source": {"stage": STAGE, "run": str(run_dir),
                                                        "epoch": result["epoch"], "val_score": result["score"]},
                                     "loss": {"expr": weights.expr, "au": weights.au, "dist": weights.dist,
                                              "observational": str(lw.observational)}}, tokenizer)

    engine.fit(stage=STAGE, config=config, run_dir=run_dir, model=FlatOutputs(net),
               train_set=SeededSamples(TableSamples(table[~val], targets[~val], masks[~val]), train_tf, t.seed),
               val_set=SeededSamples(TableSamples(table[val], targets[val], masks[val]), eval_tf, t.seed),
               loss_fn=loss_fn, evaluate=evaluate, export=export,
               resume_from=_resume_point(run_dir) if resuming else None, activation=to_probabilities)

"""Fold reports shaped like Table 1 of the seed paper, and ablation tables like its Table 2."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from abaw_ce import labels
from abaw_ce.train import runs

REPORT_NAME = "fold_report"
OOF_NAME = "oof.csv"


def _markdown(frame: pd.DataFrame, first_column: str) -> str:
    columns = [first_column, *frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for index, row in frame.iterrows():
        cells = [f"{v:.4f}" if isinstance(v, (float, np.floating)) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join([str(index), *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_oof(path: Path, table: pd.DataFrame, outputs: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
    """Held-out predictions as ``oof.csv``: each validation row's path, frame, source and group (``table``: the
    validation rows, ``outputs["index"]`` positions in it), its targets ``y_<name>`` and probabilities
    ``p_<name>`` for the first ``len(names)`` output columns."""
    index = np.asarray(outputs["index"]).astype(int)
    frame = table.iloc[index][["path", "frame", "source", "group"]].reset_index(drop=True)
    for prefix, key in (("y", "target"), ("p", "probs")):
        for j, name in enumerate(names):
            frame[f"{prefix}_{name}"] = np.asarray(outputs[key])[:, j]
    frame.to_csv(path, index=False)


def fold_table(run_dir: Path, n_folds: int, tuned: bool = False) -> pd.DataFrame:
    """Rows fold-1..n (finished folds only), columns the six emotions + Average (F1 on the fold's validation)."""
    rows = {}
    for k in range(n_folds):
        path = run_dir / f"fold_{k}" / "validation.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        f1 = result["f1_tuned" if tuned else "f1"]
        row = {name.capitalize(): f1[name] for name in labels.BASIC_EMOTIONS}
        row["Average"] = float(np.mean(list(row.values())))
        rows[f"fold-{k + 1}"] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def write_fold_report(run_dir: Path, n_folds: int) -> Path | None:
    """``fold_report.csv``/``.md``/``.png`` and the pooled out-of-fold probabilities ``oof.csv``."""
    table = fold_table(run_dir, n_folds)
    if table.empty:
        return None
    tuned = fold_table(run_dir, n_folds, tuned=True)
    table.to_csv(run_dir / f"{REPORT_NAME}.csv", index_label="fold")
    tuned.to_csv(run_dir / f"{REPORT_NAME}_tuned.csv", index_label="fold")
    text = (f"F1 of the 6 basic emotions on each fold's validation part (threshold 0.5; EMA weights of the "
            f"best epoch)\n\n{_markdown(table, 'Val. Set')}\nWith per-emotion thresholds tuned on the same "
            f"validation part (optimistic):\n\n{_markdown(tuned, 'Val. Set')}{_curriculum_section(run_dir, n_folds)}")
    md = run_dir / f"{REPORT_NAME}.md"
    md.write_text(text, encoding="utf-8")
    _bar_chart(table, run_dir / f"{REPORT_NAME}.png")
    frames = []
    for k in range(n_folds):
        path = run_dir / f"fold_{k}" / OOF_NAME
        if path.is_file():
            frames.append(pd.read_csv(path).assign(fold=k))
    if frames:
        pd.concat(frames, ignore_index=True).to_csv(run_dir / OOF_NAME, index=False)
    return md


def curriculum_epochs(run_dir: Path, n_folds: int) -> pd.DataFrame:
    """Rows epoch 0.., columns Stage, Compound share and each fold's validation score, from the folds'
    ``metrics.json`` (empty unless a curriculum ran: its epochs' records carry ``curriculum_stage``)."""
    stages: dict[int, tuple[int, float]] = {}
    scores: dict[str, dict[int, float]] = {}
    for k in range(n_folds):
        path = run_dir / f"fold_{k}" / runs.METRICS_FILE
        if not path.is_file():
            continue
        for record in json.loads(path.read_text(encoding="utf-8")):
            if "val_score" in record and "curriculum_stage" in record:
                epoch = int(record["epoch"])
                stages[epoch] = (int(record["curriculum_stage"]), float(record["compound_share"]))
                scores.setdefault(f"fold-{k + 1}", {})[epoch] = float(record["val_score"])
    if not stages:
        return pd.DataFrame()
    epochs = sorted(stages)
    frame = pd.DataFrame({"Stage": [stages[e][0] for e in epochs],
                          "Compound share": [f"{stages[e][1]:g}" for e in epochs]}, index=epochs)
    for fold, by_epoch in scores.items():
        frame[fold] = [by_epoch.get(e, float("nan")) for e in epochs]
    frame.index.name = "epoch"
    return frame


def _curriculum_section(run_dir: Path, n_folds: int) -> str:
    table = curriculum_epochs(run_dir, n_folds)
    if table.empty:
        return ""
    best = []
    for k in range(n_folds):
        path = run_dir / f"fold_{k}" / "validation.json"
        epoch = json.loads(path.read_text(encoding="utf-8")).get("epoch") if path.is_file() else None
        if epoch in table.index:
            best.append(f"fold-{k + 1} epoch {epoch} (stage {table.loc[epoch, 'Stage']})")
    return (f"\nCurriculum (train.curriculum): the stage and compound share of each epoch, and each fold's "
            f"validation score (the score early stopping follows):\n\n{_markdown(table, 'Epoch')}"
            + (f"\nBest epochs: {', '.join(best)}\n" if best else ""))


def _bar_chart(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(table.columns)
    x = np.arange(len(columns))
    width = 0.8 / max(1, len(table))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, (fold, row) in enumerate(table.iterrows()):
        ax.bar(x + i * width - 0.4 + width / 2, row.to_numpy(dtype=float), width, label=fold)
    ax.set_xticks(x, columns)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.legend(fontsize=8, ncol=len(table))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("basic-emotion F1 per validation fold")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_ablation_table(rows: Sequence[Mapping[str, object]], out_dir: Path, note: str = "") -> Path:
    """``ablation.csv``/``.md``: one row per setting with its switches (✓/×) and mean F1 over its folds;
    ``note`` (what all rows share) goes under the title."""
    frame = pd.DataFrame(list(rows))
    frame.to_csv(out_dir / "ablation.csv", index=False)
    header = ("| Method | MAE Pretraining | Distillation | EMA | Mixup | Curriculum | F1 score |\n"
              "|---|---|---|---|---|---|---|\n")
    lines = []
    for row in rows:
        marks = ["✓" if row.get(k) else "×" for k in ("mae", "distillation", "ema", "mixup", "curriculum")]
        lines.append(f"| {row['name']} | " + " | ".join(marks) + f" | {float(row['f1']):.4f} |")
    md = out_dir / "ablation.md"
    title = "Mean basic-emotion F1 over the validation folds" + (f" ({note})" if note else "")
    md.write_text(title + "\n\n" + header + "\n".join(lines) + "\n",
                  encoding="utf-8")
    return md


def table_cell(value: object, digits: int = 4) -> str:
    """A Markdown table cell: the number at ``digits`` decimals, or – when there is none."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "–"
    return f"{float(value):.{digits}f}"

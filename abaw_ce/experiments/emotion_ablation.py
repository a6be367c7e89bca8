"""The seed paper's Table-2 ablation (``finetune/emotion.py --ablation DIR``): one emotion run per row, from the
baseline to MAE + distillation + EMA + mixup, then that row plus the ABAW7 winner's curriculum over compound data
(``train.curriculum`` with the config's stages), and the table of their fold F1s."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from abaw_ce.finetune import train_emotion
from abaw_ce.train import runs
from abaw_ce.train.reports import fold_table, write_ablation_table


ABLATION_ROWS = (
    # name, MAE pretraining, distillation, EMA, mixup (the rows of the seed paper's Table 2), curriculum
    ("baseline", False, False, False, False, False),
    ("+MAE", True, False, False, False, False),
    ("+distillation", True, True, False, False, False),
    ("+EMA", True, True, True, False, False),
    ("+mixup", True, True, True, True, False),
    ("+curriculum", True, True, True, True, True),
)


def run_ablation(config: DictConfig, out_dir: Path, folds: Sequence[int] | None = None) -> Path:
    """Table-2-style ablation: each row an emotion run under ``out_dir``; distillation rows are taught by
    the "+MAE" row's same-fold models. Re-running continues unfinished rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    alpha = config.train.mixup_alpha or 0.2
    # every row as long as the curriculum row: train.epochs null means the curriculum's length
    epochs = config.train.epochs if config.train.epochs is not None else int(sum(config.train.curriculum.epochs))
    rows = []
    for name, mae, distill, ema, mix, curriculum in ABLATION_ROWS:
        variant = OmegaConf.merge(config, OmegaConf.create({
            "model": {"encoder": config.model.encoder if mae else "none"},
            "distill": {"teachers": str(out_dir / "+MAE") if distill else None},
            "train": {"epochs": epochs, "ema": ema, "mixup_alpha": alpha if mix else 0.0,
                      "curriculum": {"enabled": curriculum}},
            "output": {"dir": str(out_dir / name), "overwrite": False}}))
        run_dir = out_dir / name
        resume = str(run_dir) if (run_dir / runs.CONFIG_FILE).is_file() else None
        print(f"ablation row {name}: MAE {mae}, distillation {distill}, EMA {ema}, mixup {mix}, "
              f"curriculum {curriculum}")
        train_emotion(variant, resume=resume, folds=folds)
        table = fold_table(run_dir, variant.data.folds)
        rows.append({"name": name, "mae": mae, "distillation": distill, "ema": ema, "mixup": mix,
                     "curriculum": curriculum,
                     "f1": float(table["Average"].mean()) if not table.empty else float("nan"),
                     "folds": len(table)})
    warmup = "on" if config.train.ema_warmup else "off"
    md = write_ablation_table(rows, out_dir, note=f"EMA warm-up (train.ema_warmup): {warmup}; {epochs} epoch(s) per fold")
    print(md.read_text(encoding="utf-8"))
    return md

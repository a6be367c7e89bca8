"""One command, every method on the same data: the multi-task methods (SJMT, FaceBehaviorNet with all
coupling terms, MML), the C-EXPR-NET track and the basic-emotion track (its first fold, ViT), each trained
under ``<out>/<name>`` with the same datasets, fold seed and validation fold (fold 0 of the grouped 5-fold
split), then scored on labelled videos through make_submission's path (faces found once and cached). The
table (``comparison.md``/``.csv``) gives the compound macro F1 on the videos, and from each run's own
validation part the basic-emotion F1, the 12-compound F1, the AU F1 and the valence-arousal CCC where a
method predicts them, with seconds per epoch. Re-running continues unfinished runs and re-scores finished ones.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from abaw_ce import challenge_file
from abaw_ce.cexprnet.train import train_cexprnet
from abaw_ce.errors import OptionError
from abaw_ce.finetune import train_emotion
from abaw_ce.multitask.train import train_multitask
from abaw_ce.submission.pipeline import make_submission
from abaw_ce.train import runs
from abaw_ce.train.loop import read_status
from abaw_ce.train.reports import table_cell

COMPARISON_FILE = "comparison.md"
# The demo's tiny ViT (randomly initialised here: the comparison has no MAE stage).
DEMO_VIT = {"size": "tiny", "img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}


def _config(stage: str, demo: bool, datasets: Any, run_dir: Path, overrides: dict[str, Any],
            user: Sequence[str] = ()) -> DictConfig:
    """A stage's config: its defaults (and demo settings), the user's ``key=value`` overrides of keys the
    stage has, then the comparison's own settings."""
    config = runs.load_config(stage, [runs.packaged_config(f"{stage}_demo")] if demo else [])
    for item in user:
        if _has_key(config, item.split("=", 1)[0]):
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([item]))
    OmegaConf.update(config, "data.datasets", datasets, merge=False)
    for key, value in {**overrides, "output.dir": str(run_dir), "output.overwrite": False}.items():
        OmegaConf.update(config, key, value, merge=False)
    return config


def _has_key(config: DictConfig, key: str) -> bool:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node[part]
    return True


def check_overrides(user: Sequence[str], demo: bool) -> None:
    """Every ``key=value`` must name a key of at least one compared stage (a typo is an error)."""
    stages = [runs.load_config(s, [runs.packaged_config(f"{s}_demo")] if demo else [])
              for s in ("multitask", "cexprnet", "emotion")]
    unknown = [item for item in user if "=" not in item
               or not any(_has_key(c, item.split("=", 1)[0]) for c in stages)]
    if unknown:
        raise OptionError(f"overrides {unknown} name no key of the multitask, cexprnet or emotion settings")


def run_comparison(datasets: Any, out_dir: Path, videos: Path, ground_truth: Path, template: Path | None = None,
                   detector: str = "auto", crop_size: int = 224, demo: bool = True, epochs: int | None = None,
                   seed: int = 0, overrides: Sequence[str] = ()) -> Path:
    """Train (or continue) every method under ``out_dir``, score each on the labelled videos and write the
    table; ``overrides`` (``key=value``) go to every stage that has the key."""
    check_overrides(overrides, demo)
    out_dir.mkdir(parents=True, exist_ok=True)
    crops = str(out_dir / "frame_crops")
    common = {"data.fold_seed": seed, "data.frame_crops.dir": crops}
    if epochs is not None:
        common["train.epochs"] = int(epochs)
    methods = [
        ("SJMT", "multitask", {"model.method": "sjmt"}),
        ("FaceBehaviorNet", "multitask", {"model.method": "fbn", "loss.co_annotation": True,
                                          "loss.soft_co_annotation": True, "loss.distribution_matching": True}),
        ("MML", "multitask", {"model.method": "mml"}),
        ("C-EXPR-NET", "cexprnet", {}),
        ("basic-emotion ViT (fold 1)", "emotion",
         {"model.encoder": "none", **({"model.arch": DEMO_VIT} if demo else {})}),
    ]
    truth = challenge_file.read_submission(ground_truth)
    timings_path = out_dir / "timings.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    rows = []
    for name, stage, settings in methods:
        run_dir = out_dir / name.split(" ")[0].replace("-", "_").lower()
        config = _config(stage, demo, datasets, run_dir, {**common, **settings}, overrides)
        resume = str(run_dir) if (run_dir / runs.CONFIG_FILE).is_file() else None
        status_dir = run_dir / "fold_0" if stage == "emotion" else run_dir
        before = read_status(status_dir)
        print(f"comparison: {name} -> {run_dir}")
        started = time.perf_counter()
        if stage == "multitask":
            train_multitask(config, resume=resume)
        elif stage == "cexprnet":
            train_cexprnet(config, resume=resume)
        else:
            train_emotion(config, resume=resume, folds=[0])
        after = read_status(status_dir)
        if after.get("state") != "finished":
            raise RuntimeError(f"{name} did not finish ({run_dir}); run the command again")
        trained = int(after.get("epoch", 0)) - int(before.get("epoch", 0) or 0)
        if before.get("state") != "finished" and trained > 0:
            timings[name] = (time.perf_counter() - started) / trained
            runs.atomic_write_json(timings_path, timings)
        out = run_dir / "submission.txt"
        # the emotion run trains fold 0 alone: its export is given, not the run, whose other folds are missing
        model = run_dir if stage != "emotion" else status_dir / "export"
        make_submission(videos, [model], out, template=template, work_dir=out_dir / "eval_work",
                        detector=detector, crop_size=crop_size, overwrite=True, progress=False)
        scored = challenge_file.score(challenge_file.read_submission(out), truth)
        validation = json.loads((status_dir / "validation.json").read_text(encoding="utf-8"))
        rows.append({"method": name, "video_f1": scored.macro_f1,
                     "basic_f1": validation.get("mean_expr_f1", validation.get("mean_f1")),
                     "compound_f1": validation.get("compound_f1"), "au_f1": validation.get("mean_au_f1"),
                     "va_ccc": validation.get("va_ccc"), "seconds_per_epoch": timings.get(name)})
        print(f"  {name}: compound macro F1 {scored.macro_f1:.4f} on the labelled videos")
    return write_table(rows, out_dir)


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    pd.DataFrame(rows).to_csv(out_dir / "comparison.csv", index=False)

    lines = ["Compound macro F1 (7 challenge classes) on the labelled videos; the other columns on each run's own "
             "validation part (fold 1 of the same grouped split); – where a method does not predict it", "",
             "| Method | Video compound F1 | Basic F1 | 12-compound F1 | AU F1 | VA CCC | s / epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {table_cell(r['video_f1'])} | {table_cell(r['basic_f1'])} | {table_cell(r['compound_f1'])} | "
                     f"{table_cell(r['au_f1'])} | {table_cell(r['va_ccc'])} | {table_cell(r['seconds_per_epoch'], 1)} |")
    md = out_dir / COMPARISON_FILE
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md

"""`abaw-ce recipe`: the fold-stage recipes of the ABAW7 issue compared on one synthetic world.

On a world of the given scale and seed, the same labelled sets as the demo (RAF-DB basic and compound,
AffectNet, Aff-Wild2 EXPR) train emotion fold runs under five recipes, every one from random weights and for the
same number of epochs (the curriculum's sum):

- a small ViT, without and with the curriculum;
- a CNN (``timm:<name>``, resnet18d by default), without and with the curriculum;
- the same ViT distilled from the CNN run with the curriculum (the DeiT way), with the curriculum too, its faces
  normalised as the teacher's.

Each run goes through ``make_submission`` on the world's test videos (faces found once and cached) and is
scored against their ground truth: compound macro F1 with the seconds each training epoch took (validation
included). ``recipe.md`` and ``recipe.json`` hold the table. A run already finished under ``out`` is reused and
an unfinished one resumed, so a stopped comparison continues where it was.

``run_recipe_seeds`` repeats the comparison on worlds of several seeds (``out/seed_<s>``) and sums them up in
``out/recipe_seeds.md`` / ``.json`` / ``.png``: each recipe's F1 per seed, their mean and spread, and the mean
seconds per epoch.
"""
from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from abaw_ce import challenge_file
from abaw_ce.files import atomic_write_json, atomic_write_text
from abaw_ce.finetune import train_emotion
from abaw_ce.models.timm_classifier import classifier_meta
from abaw_ce.submission.pipeline import make_submission
from abaw_ce.synth.world import generate_world
from abaw_ce.train import runs
from abaw_ce.train.loop import read_status

VIT_ARCH = {"size": "tiny", "img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
IMG_SIZE = 64  # every recipe sees 64 px faces: the demo's ViT size, and a CNN affordable on a CPU
LABELLED = ("rafdb_basic", "rafdb_compound", "affectnet", "affwild2_expr")


@dataclass(frozen=True)
class Recipe:
    name: str
    backbone: str  # "vit" or "timm:<name>"
    curriculum: bool
    teacher: str | None = None  # name of the recipe whose run teaches this one


def recipes(cnn: str) -> tuple[Recipe, ...]:
    return (
        Recipe("vit", "vit", False),
        Recipe("vit+curriculum", "vit", True),
        Recipe("cnn", cnn, False),
        Recipe("cnn+curriculum", cnn, True),
        Recipe("vit+curriculum<-cnn", "vit", True, teacher="cnn+curriculum"),
    )


def _recipe_config(recipe: Recipe, world: dict, run_dir: Path, seed: int, epochs: Sequence[int],
                   shares: Sequence[float], teacher_dir: Path | None, folds: Sequence[int]) -> DictConfig:
    specs = world["datasets"]
    model = ({"backbone": "vit", "encoder": "none", "arch": VIT_ARCH} if recipe.backbone == "vit"
             else {"backbone": recipe.backbone, "img_size": IMG_SIZE})
    values = {
        "model": model,
        "data": {"datasets": [specs[k] for k in LABELLED], "fold_seed": seed,
                 **_teacher_normalisation(teacher_dir, folds)},
        "distill": {"teachers": str(teacher_dir) if teacher_dir is not None else None},
        "train": {"seed": seed, "epochs": int(sum(epochs)),
                  "curriculum": {"enabled": recipe.curriculum, "epochs": list(epochs),
                                 "compound_share": list(shares)}},
        "output": {"dir": str(run_dir)},
    }
    base = runs.load_config("emotion", [runs.packaged_config("emotion_demo")], [])
    return OmegaConf.merge(base, OmegaConf.create(values))


def _teacher_normalisation(teacher_dir: Path | None, folds: Sequence[int]) -> dict:
    """A student sees its faces normalised as its teacher does (the distillation requires one preprocessing)."""
    if teacher_dir is None:
        return {}
    meta = classifier_meta(teacher_dir / f"fold_{folds[0]}" / "export")
    return {"mean": meta["mean"], "std": meta["std"]}


def _epoch_seconds(run_dir: Path, folds: Sequence[int], seconds: float) -> float | None:
    """Mean wall seconds per trained epoch (validation included) over ``folds``; None when resumed (the
    time of the earlier part is unknown)."""
    epochs = 0
    for k in folds:
        epochs += int(read_status(run_dir / f"fold_{k}").get("epoch", 0))
    return round(seconds / epochs, 2) if epochs else None


def run_recipe_comparison(out: str | Path, seed: int = 0, scale: str = "small", folds: Sequence[int] = (0,),
                          cnn: str = "timm:resnet18d", epochs: Sequence[int] = (5, 5, 3, 3),
                          shares: Sequence[float] = (0.0, 0.2, 0.4, 1.0), only: Sequence[str] | None = None
                          ) -> dict:
    """Train and score the recipes on the world ``out/world`` (rendered if missing); returns the results."""
    out = Path(out)
    world_dir = out / "world"
    if (world_dir / "world.json").is_file():
        world = json.loads((world_dir / "world.json").read_text())
    else:
        print(f"rendering the synthetic world ({scale}, seed {seed}) under {world_dir}")
        world = generate_world(world_dir, seed=seed, scale=scale)
    gt_dir = world_dir / "test_ground_truth"
    truth = challenge_file.read_submission(gt_dir / "ground_truth.txt")
    results_path = out / "recipe.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    chosen = recipes(cnn)
    unknown = sorted(set(only or ()) - {r.name for r in chosen})
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; choose from {[r.name for r in chosen]}")
    for recipe in chosen:
        if only and recipe.name not in only:
            continue
        run_dir = out / "runs" / recipe.name
        teacher_dir = out / "runs" / recipe.teacher if recipe.teacher else None
        if recipe.name in results and results[recipe.name].get("folds") == list(folds):
            print(f"{recipe.name}: done earlier, F1 {results[recipe.name]['compound_f1']:.4f}")
            continue
        print(f"== recipe {recipe.name} (backbone {recipe.backbone}, curriculum {recipe.curriculum}"
              + (f", taught by {recipe.teacher}" if recipe.teacher else "") + f"), folds {list(folds)}")
        config = _recipe_config(recipe, world, run_dir, seed, epochs, shares, teacher_dir, folds)
        resumed = (run_dir / runs.CONFIG_FILE).is_file()
        t0 = time.perf_counter()
        train_emotion(config, resume=str(run_dir) if resumed else None, folds=folds)
        train_seconds = time.perf_counter() - t0
        path = out / "submissions" / f"{recipe.name}.txt"
        make_submission(world_dir / "test", [run_dir], path, template=gt_dir / "template.txt",
                        work_dir=out / "submission_work", detector="opencv", crop_size=112, progress=False,
                        overwrite=True, allow_partial=True)
        scored = challenge_file.score(challenge_file.read_submission(path), truth)
        results[recipe.name] = {
            "backbone": recipe.backbone, "curriculum": recipe.curriculum, "teacher": recipe.teacher,
            "folds": list(folds), "compound_f1": round(float(scored.macro_f1), 4),
            "per_class_f1": {c: round(float(x), 4) for c, x in scored.per_class_f1.items()},
            "seconds_per_epoch": None if resumed else _epoch_seconds(run_dir, folds, train_seconds)}
        print(f"{recipe.name}: compound macro F1 {scored.macro_f1:.4f}")
        atomic_write_json(results_path, results)
    md = out / "recipe.md"
    atomic_write_text(md, recipe_table(results, seed, scale), overwrite=True)
    print(md.read_text(encoding="utf-8"))
    return results


def recipe_table(results: dict, seed: int, scale: str) -> str:
    lines = [f"Compound macro F1 on the test videos of the {scale} world, seed {seed}\n",
             "| recipe | backbone | curriculum | teacher | folds | compound F1 | s/epoch |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        per_epoch = "–" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.1f}"
        lines.append(f"| {name} | {r['backbone']} | {'✓' if r['curriculum'] else '×'} | {r['teacher'] or '–'} | "
                     f"{','.join(map(str, r['folds']))} | {r['compound_f1']:.4f} | {per_epoch} |")
    return "\n".join(lines) + "\n"


def run_recipe_seeds(out: str | Path, seeds: Sequence[int], **kwargs) -> dict[int, dict]:
    """``run_recipe_comparison`` on the world of each seed under ``out/seed_<s>``, then the summary table and
    chart over the seeds; returns {seed: results}."""
    out = Path(out)
    if not seeds:
        raise ValueError("no world seed given")
    by_seed = {}
    for seed in seeds:
        print(f"=== world seed {seed}")
        (out / f"seed_{seed}").mkdir(parents=True, exist_ok=True)
        by_seed[int(seed)] = run_recipe_comparison(out / f"seed_{seed}", seed=seed, **kwargs)
    scale = kwargs.get("scale", "small")
    summary = seeds_summary(by_seed)
    atomic_write_json(out / "recipe_seeds.json", {"scale": scale, "seeds": list(by_seed), "recipes": summary})
    md = out / "recipe_seeds.md"
    atomic_write_text(md, seeds_table(summary, list(by_seed), scale), overwrite=True)
    _seeds_chart(summary, list(by_seed), scale, out / "recipe_seeds.png")
    print(md.read_text(encoding="utf-8"))
    return by_seed


def seeds_summary(by_seed: dict[int, dict]) -> dict[str, dict]:
    """Per recipe (in the order first met): its settings, F1 of each seed that ran it, mean, population
    standard deviation and the mean of the known seconds per epoch."""
    summary: dict[str, dict] = {}
    for seed, results in by_seed.items():
        for name, r in results.items():
            entry = summary.setdefault(name, {"backbone": r["backbone"], "curriculum": r["curriculum"],
                                              "teacher": r["teacher"], "f1": {}, "seconds": []})
            entry["f1"][seed] = r["compound_f1"]
            if r["seconds_per_epoch"] is not None:
                entry["seconds"].append(r["seconds_per_epoch"])
    for entry in summary.values():
        scores = list(entry["f1"].values())
        entry["mean_f1"] = round(statistics.fmean(scores), 4)
        entry["std_f1"] = round(statistics.pstdev(scores), 4)
        seconds = entry.pop("seconds")
        entry["seconds_per_epoch"] = round(statistics.fmean(seconds), 1) if seconds else None
    return summary


def seeds_table(summary: dict[str, dict], seeds: Sequence[int], scale: str) -> str:
    lines = [f"Compound macro F1 on the test videos of the {scale} world, world seeds {', '.join(map(str, seeds))}\n",
             "| recipe | backbone | curriculum | teacher | " + " | ".join(f"seed {s}" for s in seeds)
             + " | mean ± sd | s/epoch |",
             "|---|---|---|---|" + "---|" * len(seeds) + "---|---|"]
    for name, e in summary.items():
        scores = " | ".join(f"{e['f1'][s]:.4f}" if s in e["f1"] else "–" for s in seeds)
        per_epoch = "–" if e["seconds_per_epoch"] is None else f"{e['seconds_per_epoch']:.1f}"
        lines.append(f"| {name} | {e['backbone']} | {'✓' if e['curriculum'] else '×'} | {e['teacher'] or '–'} | "
                     f"{scores} | {e['mean_f1']:.4f} ± {e['std_f1']:.4f} | {per_epoch} |")
    return "\n".join(lines) + "\n"


def _seeds_chart(summary: dict[str, dict], seeds: Sequence[int], scale: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    ax.bar(range(len(names)), [summary[n]["mean_f1"] for n in names], color="#9ecae1", label="mean")
    for i, name in enumerate(names):
        scores = [summary[name]["f1"][s] for s in seeds if s in summary[name]["f1"]]
        ax.scatter([i] * len(scores), scores, color="#08519c", s=14, zorder=3,
                   label="one world seed" if i == 0 else None)
    ax.set_xticks(range(len(names)), names, rotation=15, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("compound macro F1")
    ax.set_title(f"recipes on the {scale} world, seeds {', '.join(map(str, seeds))}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

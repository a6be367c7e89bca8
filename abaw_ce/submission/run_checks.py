"""Checks on trained runs before their models go into a submission (``submit/validate.py RUN ...``, and
``make_submission`` before it decodes anything): fold runs of the emotion stage, one-model runs (C-EXPR-NET,
multi-task) and export folders given directly."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from abaw_ce import labels
from abaw_ce.errors import InputError
from abaw_ce.models.export import input_signature
from abaw_ce.models.registry import is_export
from abaw_ce.models.timm_classifier import classifier_meta

STATUS_FILE = "status.json"


@dataclass
class RunCheck:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # folds or runs missing or not finished (also problems)

    def not_finished(self, where: str, problem: str) -> None:
        self.unfinished.append(where)
        self.problems.append(problem)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        out = list(self.lines)
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"problem: {p}" for p in self.problems]
        out.append("runs: OK" if self.ok else f"runs: {len(self.problems)} problem(s)")
        return "\n".join(out)


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def is_finished(run_or_fold: Path) -> bool:
    return _json(run_or_fold / STATUS_FILE).get("state") == "finished"


def _check_export_folder(export: Path, check: RunCheck) -> None:
    """An export: the run (or fold) it sits in, when it has a status, must have finished."""
    owner = export.parent
    if not (owner / STATUS_FILE).is_file():
        check.warnings.append(f"{export}: no {STATUS_FILE} beside it; cannot tell whether its training finished")
    elif not is_finished(owner):
        check.not_finished(str(owner), f"{owner}: not finished (state "
                                       f"{_json(owner / STATUS_FILE).get('state', 'unknown')!r}; its export is "
                                       f"only the best epoch so far: resume it with --resume {owner})")


def check_runs(runs: Sequence[str | Path], f1_band: float = 0.15) -> RunCheck:
    """Fold runs: every fold present and finished, the basic emotions in the kit's order, one input
    preprocessing across a run's folds, each fold's validation F1 within ``f1_band`` of the median of its run's
    folds. One-model runs and exports: finished. Runs may differ in input size and normalisation (a ViT run
    beside a CNN run): inference prepares each model's input itself, and a line says so."""
    check = RunCheck()
    run_inputs: dict[tuple, list[str]] = {}
    for run in map(Path, runs):
        inputs: dict[tuple, list[str]] = {}
        if is_export(run) or is_export(run / "export"):  # an export, or a one-model run's folder
            _check_export_folder(run if is_export(run) else run / "export", check)
            continue
        config_path = run / "config.yaml"
        if not config_path.is_file():
            raise InputError(config_path, "not a run folder (config.yaml missing); give export folders directly "
                                          "(e.g. RUN/fold_0/export) to use models without their run")
        n_folds = int(OmegaConf.load(config_path).data.folds)
        scores: dict[int, float] = {}
        for k in range(n_folds):
            fold = run / f"fold_{k}"
            status = _json(fold / "status.json")
            if not fold.is_dir():
                check.not_finished(str(fold), f"{run}: fold_{k} (fold-{k + 1} in the tables) is missing "
                                              f"(train it with --resume {run} --folds {k})")
                continue
            if status.get("state") != "finished":
                check.not_finished(str(fold), f"{fold}: not finished (state {status.get('state', 'unknown')!r})")
                continue
            try:  # a ViT or a timm classifier export, read by its kind
                meta = classifier_meta(fold / "export")
            except InputError as err:
                check.problems.append(f"{fold}: unusable export ({err})")
                continue
            names = meta["labels"]
            if list(names or []) != list(labels.BASIC_EMOTIONS):
                check.problems.append(f"{fold}: outputs {names}, not the basic emotions in the kit's order")
            key = input_signature(meta["img_size"], meta["mean"], meta["std"])
            inputs.setdefault(key, []).append(str(fold))
            validation = _json(fold / "validation.json")
            if "mean_f1" in validation:
                scores[k] = float(validation["mean_f1"])
            else:
                check.problems.append(f"{fold}: validation.json missing or incomplete")
        if scores:
            median = float(np.median(list(scores.values())))
            check.lines.append(f"{run}: " + ", ".join(f"fold-{k + 1} {v:.4f}" for k, v in sorted(scores.items()))
                               + f" (median {median:.4f})")
            for k, value in sorted(scores.items()):
                if value < median - f1_band:
                    check.problems.append(f"{run}: fold {k} validation F1 {value:.4f} is more than {f1_band} below "
                                          f"the median {median:.4f} of its folds (a broken fold?)")
        if len(inputs) > 1:
            check.problems.append(f"{run}: its folds expect different inputs ({_describe_inputs(inputs)})")
        for key in inputs:
            run_inputs.setdefault(key, []).append(str(run))
    if len(run_inputs) > 1:
        check.lines.append(f"runs expect different inputs, each model gets its own ({_describe_inputs(run_inputs)})")
    return check


def _describe_inputs(inputs: dict[tuple, list[str]]) -> str:
    return "; ".join(f"{size}px mean {list(mean)} std {list(std)}: {len(where)}, e.g. {where[0]}"
                     for (size, mean, std), where in inputs.items())

"""Checks on trained fold runs before their models go into a submission (``submit/validate.py RUN ...``)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from abaw_ce import labels
from abaw_ce.errors import InputError
from abaw_ce.models.export import input_signature, read_encoder_meta


@dataclass
class RunCheck:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

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


def check_runs(runs: Sequence[str | Path], f1_band: float = 0.15) -> RunCheck:
    """Every fold present and finished; one label order and one input preprocessing across all models; each
    fold's validation F1 within ``f1_band`` of the median of its run's folds."""
    check = RunCheck()
    inputs: dict[tuple, list[str]] = {}
    for run in map(Path, runs):
        config_path = run / "config.yaml"
        if not config_path.is_file():
            raise InputError(config_path, "not a run folder (config.yaml missing)")
        n_folds = int(OmegaConf.load(config_path).data.folds)
        scores: dict[int, float] = {}
        for k in range(n_folds):
            fold = run / f"fold_{k}"
            status = _json(fold / "status.json")
            if not fold.is_dir():
                check.problems.append(f"{run}: fold_{k} (fold-{k + 1} in the tables) is missing "
                                      f"(train it with --resume {run} --folds {k})")
                continue
            if status.get("state") != "finished":
                check.problems.append(f"{fold}: not finished (state {status.get('state', 'unknown')!r})")
                continue
            try:
                meta = read_encoder_meta(fold / "export")
            except InputError as err:
                check.problems.append(f"{fold}: unusable export ({err})")
                continue
            names = (meta.get("head") or {}).get("labels")
            if list(names or []) != list(labels.BASIC_EMOTIONS):
                check.problems.append(f"{fold}: outputs {names}, not the basic emotions in the kit's order")
            key = input_signature(meta["arch"].img_size, meta["mean"], meta["std"])
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
        described = "; ".join(f"{size}px mean {mean} std {std}: {len(folds)} model(s), e.g. {folds[0]}"
                              for (size, mean, std), folds in inputs.items())
        check.problems.append(f"models expect different inputs ({described})")
    return check

"""The seed paper's 5-fold scheme: every source split into parts by group, stratified by label.

Fold k validates on part k of every source and trains on all other parts, so each fold sees every dataset
in both roles and no identity or video crosses between training and validation.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from abaw_ce.errors import InputError, OptionError

FOLD_FILE_COLUMNS = ("path", "frame", "source", "group", "fold")
log = logging.getLogger(__name__)


def _strata(table: pd.DataFrame) -> np.ndarray:
    # The label name stratifies; rows without one (AU-only, unlabeled) form their own stratum.
    return table["expression"].fillna("").replace("", "<none>").to_numpy()


def assign_folds(table: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (0..n_folds-1) of every row: per source, StratifiedGroupKFold by group and label."""
    if n_folds < 2:
        raise OptionError(f"n_folds must be at least 2, got {n_folds}")
    folds = np.full(len(table), -1, dtype=np.int64)
    small: dict[str, int] = {}
    for source, rows in table.groupby("source", sort=True).indices.items():
        part = table.iloc[rows]
        n_groups = part["group"].nunique()
        if n_groups < n_folds:
            # each group whole into its own fold (seeded); the other sources give the rest a validation part
            groups = sorted(part["group"].astype(str).unique())
            chosen = np.random.default_rng(seed).permutation(n_folds)[:n_groups]
            folds[rows] = part["group"].astype(str).map(dict(zip(groups, chosen))).to_numpy(np.int64)
            small[source] = n_groups
            continue
        # One row per group (RAF-DB, AffectNet) makes grouping a no-op: the plain stratified split gives
        # the same guarantee and scales to a million rows.
        singletons = n_groups == len(part)
        splitter = (StratifiedKFold if singletons else StratifiedGroupKFold)(
            n_splits=n_folds, shuffle=True, random_state=seed)
        y = _strata(part)
        # Labels rarer than n_folds make scikit-learn warn; the split is still valid, so stay quiet.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(part)), y, part["group"].to_numpy())):
                folds[rows[val_idx]] = k
    empty = [k for k in range(n_folds) if not (folds == k).any()]
    if small and empty:
        source, n_groups = next(iter(small.items()))
        raise OptionError(f"source {source!r} has {n_groups} group(s); {n_folds} folds need at least {n_folds} "
                          f"distinct identities/videos, and no other source gives fold(s) {empty} a validation part")
    for source, n_groups in small.items():
        log.warning("source %r has %d group(s) for %d folds: each goes whole to one fold, and the other folds "
                    "validate on none of it", source, n_groups, n_folds)
    check_folds(table.assign(fold=folds), n_folds)
    return folds


def check_folds(table: pd.DataFrame, n_folds: int = 5) -> None:
    """Raise unless every row has a fold in range and no group lies in two folds."""
    fold = table["fold"].to_numpy()
    if len(fold) and (fold.min() < 0 or fold.max() >= n_folds):
        raise ValueError(f"fold indices must lie in 0..{n_folds - 1}")
    per_group = table.groupby("group")["fold"].nunique()
    leaking = per_group[per_group > 1]
    if len(leaking):
        raise ValueError(f"{len(leaking)} group(s) appear in more than one fold, e.g. {leaking.index[0]!r}")


def split(table: pd.DataFrame, folds: np.ndarray, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) tables of fold k."""
    val = np.asarray(folds) == k
    return table[~val].reset_index(drop=True), table[val].reset_index(drop=True)


def save_folds(table: pd.DataFrame, folds: np.ndarray, out_dir: str | Path, n_folds: int, seed: int) -> Path:
    """Write ``folds.csv`` (one row per sample) and ``folds.json`` (settings and per-fold counts)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = table[list(FOLD_FILE_COLUMNS[:-1])].assign(fold=folds)
    frame.to_csv(out_dir / "folds.csv", index=False)
    counts = frame.groupby(["source", "fold"]).size().unstack(fill_value=0)
    summary = {"n_folds": n_folds, "seed": seed,
               "rows_per_source_and_fold": {s: [int(v) for v in counts.loc[s]] for s in counts.index}}
    (out_dir / "folds.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir / "folds.csv"


def load_folds(table: pd.DataFrame, path: str | Path) -> np.ndarray:
    """Fold of every row of ``table`` from a saved ``folds.csv``; an error names rows it does not cover."""
    saved = pd.read_csv(path, dtype={"path": str, "group": str, "source": str})
    # Each source is split on its own, so one frame can sit in two sources (Aff-Wild2 EXPR, AU and VA) with a
    # fold in each: the source is part of the key, and a sample listed twice in a source is one sample.
    key = ["source", "path", "frame"]
    saved = saved.drop_duplicates(key)
    merged = table[key].astype({"source": str}).merge(saved[key + ["fold"]], on=key, how="left")
    if merged["fold"].isna().any():
        first = merged[merged["fold"].isna()].iloc[0]
        raise InputError(path, f"{int(merged['fold'].isna().sum())} sample(s) have no saved fold, "
                               f"e.g. {first['path']} frame {first['frame']}")
    return merged["fold"].to_numpy(dtype=np.int64)

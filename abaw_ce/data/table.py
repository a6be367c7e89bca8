"""The sample table every dataset adapter returns, and the helpers that turn it into arrays.

One row per image (or per video frame). Columns:

- ``path``: the image (or the video, for frame rows), ``frame``: 1-based frame number or -1;
- ``source``: which dataset the row came from; ``group``: identity or video, for leakage-free folds;
- ``split``: the dataset's own split name when it has one ('train', 'test', ...), else '';
- ``expression``: canonical label name ('' when unlabeled); ``cexpr_class`` (0..12) and
  ``challenge_class`` (0..6) where the row is a compound, else -1;
- ``has_target`` and ``y_<emotion>`` for the six basic emotions in ``labels.BASIC_EMOTIONS`` order;
- ``valence`` and ``arousal`` in [-1, 1], NaN where not annotated;
- ``AU<n>`` for the 17 C-EXPR-DB AUs, NaN where not annotated (the mask).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from abaw_ce import labels
from abaw_ce.errors import OptionError

TARGET_COLUMNS: tuple[str, ...] = tuple(f"y_{e}" for e in labels.BASIC_EMOTIONS)
BASE_COLUMNS: tuple[str, ...] = ("path", "frame", "source", "group", "split", "expression", "cexpr_class",
                                 "challenge_class", "has_target")
VA_COLUMNS: tuple[str, str] = ("valence", "arousal")
COLUMNS: tuple[str, ...] = BASE_COLUMNS + TARGET_COLUMNS + VA_COLUMNS + labels.AU_COLUMNS

NON_BASIC_POLICIES = ("zero", "drop")


def _canonical(name: str) -> str:
    """Canonical spelling: basic and non-basic states lower case, compounds as in labels.CEXPR_CLASSES."""
    kind = labels.expression_kind(name)
    if kind == "compound":
        return labels.CEXPR_CLASSES[labels.compound_index(name)]
    return labels.normalise_name(name)


def resolve_non_basic(policy: str | Mapping[str, str]) -> dict[str, str]:
    """Per-state policy for neutral / other / contempt: 'zero' (all-zero target) or 'drop'."""
    if isinstance(policy, str):
        policy = {state: policy for state in labels.NON_BASIC_STATES}
    out = {}
    for state in labels.NON_BASIC_STATES:
        choice = policy.get(state, "zero")
        if choice not in NON_BASIC_POLICIES:
            raise OptionError(f"non_basic policy for {state!r} must be one of {NON_BASIC_POLICIES}, got {choice!r}")
        out[state] = choice
    unknown = set(policy) - set(labels.NON_BASIC_STATES)
    if unknown:
        raise OptionError(f"non_basic policy names unknown states {sorted(unknown)}; "
                          f"expected {labels.NON_BASIC_STATES}")
    return out


def make_table(
    path: Sequence[str],
    source: str,
    group: Sequence[str],
    expression: Sequence[str] | None = None,
    frame: Sequence[int] | None = None,
    aus: np.ndarray | None = None,
    au_ids: Sequence[int] = labels.CEXPR_AUS,
    split: Sequence[str] | str = "",
    non_basic: str | Mapping[str, str] = "zero",
    va: np.ndarray | None = None,
) -> pd.DataFrame:
    """Build a sample table from column sequences (vectorised: label names are resolved once each).

    ``expression`` holds label names of any taxonomy in ``labels`` ('' or None = unlabeled); ``aus`` is an
    (N, len(au_ids)) float array with NaN where not annotated; ``va`` an (N, 2) valence-arousal array, NaN
    where not annotated.
    """
    n = len(path)
    policy = resolve_non_basic(non_basic)
    expr = pd.Series(["" if e is None else str(e) for e in expression] if expression is not None else [""] * n,
                     dtype=object)
    uniq = [u for u in expr.unique() if u]
    canon = {u: _canonical(u) for u in uniq}
    canon[""] = ""
    names = expr.map(canon)

    targets = np.full((n, len(labels.BASIC_EMOTIONS)), np.nan, dtype=np.float32)
    cexpr = np.full(n, -1, dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    for name in set(canon.values()) - {""}:
        rows = (names == name).to_numpy()
        kind = labels.expression_kind(name)
        if kind == "non_basic" and policy[name] == "drop":
            keep &= ~rows
            continue
        targets[rows] = labels.multilabel_target(name)
        if kind == "compound" or name == "other":
            cexpr[rows] = labels.compound_index(name)

    table = pd.DataFrame({
        "path": pd.Series(list(map(str, path)), dtype=object),
        "frame": np.asarray(frame, dtype=np.int64) if frame is not None else np.full(n, -1, dtype=np.int64),
        "source": source,
        "group": pd.Series([f"{source}/{g}" for g in group], dtype=object),
        "split": split if isinstance(split, str) else pd.Series(list(split), dtype=object),
        "expression": names,
        "cexpr_class": cexpr,
        "challenge_class": np.where(cexpr < len(labels.CHALLENGE_COMPOUNDS), cexpr, -1),
        "has_target": ~np.isnan(targets[:, 0]),
    })
    for j, col in enumerate(TARGET_COLUMNS):
        table[col] = targets[:, j]
    va_full = (np.full((n, 2), np.nan, dtype=np.float32) if va is None
               else np.asarray(va, dtype=np.float32).reshape(n, 2))
    for j, col in enumerate(VA_COLUMNS):
        table[col] = va_full[:, j]
    au_full = np.full((n, len(labels.CEXPR_AUS)), np.nan, dtype=np.float32)
    if aus is not None:
        aus = np.asarray(aus, dtype=np.float32).reshape(n, len(au_ids))
        for j, au in enumerate(au_ids):
            au_full[:, labels.CEXPR_AUS.index(au)] = aus[:, j]
    for j, col in enumerate(labels.AU_COLUMNS):
        table[col] = au_full[:, j]
    return table[keep].reset_index(drop=True)


def empty_table() -> pd.DataFrame:
    return make_table([], source="", group=[])


def concat_tables(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate sample tables, keeping each one's load report under attrs['reports']."""
    reports = {}
    for t in tables:
        reports.update(t.attrs.get("reports", {}))
    out = pd.concat(list(tables), ignore_index=True) if tables else empty_table()
    out.attrs["reports"] = reports
    return out


def targets(table: pd.DataFrame) -> np.ndarray:
    """(N, 6) float32 multi-label targets; rows without a label are NaN (check ``has_target``)."""
    return table[list(TARGET_COLUMNS)].to_numpy(dtype=np.float32)


def au_arrays(table: pd.DataFrame, au_set: str = "cexpr") -> tuple[np.ndarray, np.ndarray]:
    """AU values (0 where masked) and the boolean mask of annotated entries over an AU set of labels."""
    cols = [f"AU{n}" for n in labels.AU_SETS[au_set]]
    values = table[cols].to_numpy(dtype=np.float32)
    mask = ~np.isnan(values)
    return np.where(mask, values, 0.0).astype(np.float32), mask


def va_arrays(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) valence-arousal (0 where missing) and the (N,) mask of rows that have both."""
    values = table[list(VA_COLUMNS)].to_numpy(dtype=np.float32)
    mask = ~np.isnan(values).any(axis=1)
    return np.where(np.isnan(values), 0.0, values).astype(np.float32), mask


def check_table(table: pd.DataFrame) -> None:
    """Raise when a table does not have the sample-table columns (a guard for hand-built tables)."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"sample table is missing columns {missing}")

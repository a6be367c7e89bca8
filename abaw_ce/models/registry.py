"""Model exports by kind: every export folder holds its weights and one JSON metadata file whose ``kind`` field
says what it is ("vit", "timm", "cexprnet", "multitask"); each kind's module registers how to load it.

``load_export(folder)`` returns ``(module, meta)``: ``module`` maps a normalised image batch (for an audio
C-EXPR-NET, a batch of normalised log-mel windows) to its six basic-emotion scores in the kit's order, and
``meta`` carries at least ``kind``, ``img_size``, ``mean``, ``std``, ``modality`` ("visual" or "audio"),
``audio`` (the audio input settings, or None) and ``scores``: how the outputs are read, ``"sigmoid_logits"``
(a classifier's logits, one sigmoid per emotion) or ``"probabilities"`` (already probabilities).

Exports written before the ``kind`` field existed are recognised by the name of their metadata file.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from abaw_ce.errors import InputError

KIND_FIELD = "kind"
SCORES = ("sigmoid_logits", "probabilities")
REQUIRED_META = ("kind", "img_size", "mean", "std", "modality", "audio", "scores")

Loader = Callable[[Path], tuple[nn.Module, dict[str, Any]]]


@dataclass(frozen=True)
class ExportKind:
    kind: str
    loader: Loader  # export folder -> (module returning the six basic-emotion scores, meta)
    meta_file: str  # the metadata file that marks this kind's exports


_KINDS: dict[str, ExportKind] = {}


def register_kind(kind: str, loader: Loader, meta_file: str) -> None:
    """Make ``load_export`` read exports of ``kind``, marked by ``meta_file``, with ``loader``."""
    known = _KINDS.get(kind)
    if known is not None and (known.meta_file, known.loader.__module__, known.loader.__qualname__) != (
            meta_file, loader.__module__, loader.__qualname__):
        raise ValueError(f"export kind {kind!r} is already registered (by {known.loader.__module__})")
    taken = [k.kind for k in _KINDS.values() if k.meta_file == meta_file and k.kind != kind]
    if taken:
        raise ValueError(f"metadata file {meta_file!r} already marks exports of kind {taken[0]!r}")
    _KINDS[kind] = ExportKind(kind, loader, meta_file)


def kinds() -> tuple[str, ...]:
    return tuple(_KINDS)


def export_meta_files() -> tuple[str, ...]:
    """The metadata file names that mark an export folder, one per kind."""
    return tuple(k.meta_file for k in _KINDS.values())


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an export folder (it holds the metadata file of some kind)."""
    path = Path(path)
    return any((path / name).is_file() for name in export_meta_files())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None


def export_kind(path: str | Path) -> str:
    """The kind of the export folder ``path``: its metadata's ``kind`` field, or for an export written before
    that field existed, the kind whose metadata file it holds."""
    path = Path(path)
    present = [k for k in _KINDS.values() if (path / k.meta_file).is_file()]
    if not present:
        raise InputError(path, f"not a model export (none of {', '.join(export_meta_files())} here)")
    if len(present) > 1:
        raise InputError(path, f"holds the metadata of several export kinds "
                               f"({', '.join(k.meta_file for k in present)}); expected one")
    meta = _read_json(path / present[0].meta_file)
    kind = meta.get(KIND_FIELD, present[0].kind) if isinstance(meta, dict) else present[0].kind
    if kind not in _KINDS:
        raise InputError(path, f"unknown export kind {kind!r} in {present[0].meta_file}; this kit reads "
                               f"{', '.join(kinds())}")
    return kind


def load_export(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """An export folder -> (module giving its six basic-emotion scores, in eval mode; meta), see above."""
    path = Path(path)
    kind = export_kind(path)
    module, meta = _KINDS[kind].loader(path)
    meta = {**meta, KIND_FIELD: kind}
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing or meta["scores"] not in SCORES:
        raise ValueError(f"the {kind!r} loader gave incomplete metadata (missing {missing}, scores "
                         f"{meta.get('scores')!r})")
    return module.eval(), meta


def read_versioned_meta(export_dir: str | Path, meta_file: str, fmt: str, version: int, what: str) -> dict[str, Any]:
    """An export's metadata JSON, checked to be ``fmt`` at ``version``; InputError names the file otherwise."""
    meta_path = Path(export_dir) / meta_file
    if not meta_path.is_file():
        raise InputError(meta_path, f"file not found; not {what} folder")
    meta = _read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise InputError(meta_path, f"format is {meta.get('format') if isinstance(meta, dict) else None!r}, "
                                    f"expected {fmt!r}")
    if meta.get("version") != version:
        raise InputError(meta_path, f"version {meta.get('version')!r}; this kit reads version {version}")
    return meta

"""Atomic file writes: through a temporary sibling and a rename, so a reader (or a killed run) never sees half a
file. Every JSON and text file the kit writes for another stage goes through here."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path``; refuse to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, replacing any earlier file (status files, metadata, reports)."""
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n", overwrite=True)

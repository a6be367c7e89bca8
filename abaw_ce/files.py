"""Atomic file writes: through a temporary sibling and a rename, so a reader (or a killed run) never sees half a
file. Every JSON and text file the kit writes for another stage goes through here."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
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
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; give it an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask can only be read by setting it


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, replacing any earlier file (status files, metadata, reports)."""
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n", overwrite=True)


def write_folder_atomically(out_dir: str | Path, fill: Callable[[Path], None], overwrite: bool,
                            what: str, marker_files: Sequence[str]) -> Path:
    """Let ``fill`` write a fresh sibling folder, then rename it to ``out_dir``: a reader sees the old folder or
    the whole new one. A non-empty ``out_dir`` is replaced only with ``overwrite``, and only when it holds one of
    ``marker_files`` (it is ``what``, e.g. "an encoder export"), so nothing else of the user's is deleted."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists; pass --overwrite to replace it")
        if not any((out_dir / name).is_file() for name in marker_files):
            raise FileExistsError(f"{out_dir} is not {what} ({' or '.join(marker_files)} missing); refusing to "
                                  f"replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        fill(partial)
        umask = os.umask(0)  # mkdtemp makes the folder private; give it the permissions of any new folder
        os.umask(umask)
        partial.chmod(0o777 & ~umask)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir

"""Writers of the real on-disk dataset formats (the inverse of ``adapters``).

The synthetic world and the demo write their data through these, so what they produce is read back by
the very adapters users run on licensed data.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from abaw_ce import labels

# Layout of an Aff-Wild2-style root as the kit writes it (users point the adapters at their own folders).
AFFWILD2_IMAGES = "cropped_aligned"
AFFWILD2_EXPR_DIR = "annotations/EXPR"
AFFWILD2_AU_DIR = "annotations/AU"
AFFWILD2_VA_DIR = "annotations/VA"


def save_image(path: str | Path, image: np.ndarray, quality: int = 90) -> Path:
    """Save an HxWx3 uint8 RGB array (JPEG for .jpg/.jpeg, else by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if path.suffix.lower() in (".jpg", ".jpeg"):
        pil.save(path, quality=int(quality))
    else:
        pil.save(path)
    return path


def _inverse(mapping: dict[int, str]) -> dict[str, int]:
    return {name: value for value, name in mapping.items()}


def write_affwild2_video(root: str | Path, video: str, frames: Sequence[np.ndarray | None],
                         expressions: Sequence[str | None] | None = None,
                         aus: np.ndarray | None = None, quality: int = 90, va: np.ndarray | None = None) -> None:
    """One Aff-Wild2 video: frame images (None = no image), EXPR names (None = -1), AU rows (NaN = -1) and
    valence-arousal rows (NaN = -5)."""
    root = Path(root)
    for k, frame in enumerate(frames, start=1):
        if frame is not None:
            save_image(root / AFFWILD2_IMAGES / video / f"{k:05d}.jpg", frame, quality)
    if expressions is not None:
        code = _inverse(labels.AFFWILD2_EXPR)
        rows = ["-1" if e is None else str(code[e]) for e in expressions]
        _write_lines(root / AFFWILD2_EXPR_DIR / f"{video}.txt", [",".join(labels.AFFWILD2_EXPR_HEADER), *rows])
    if aus is not None:
        aus = np.asarray(aus, dtype=np.float32).reshape(len(frames), len(labels.AFFWILD2_AUS))
        rows = [",".join("-1" if np.isnan(v) else str(int(v)) for v in row) for row in aus]
        _write_lines(root / AFFWILD2_AU_DIR / f"{video}.txt", [",".join(labels.AFFWILD2_AU_HEADER), *rows])
    if va is not None:
        va = np.asarray(va, dtype=np.float32).reshape(len(frames), 2)
        rows = ["-5,-5" if np.isnan(row).any() else f"{row[0]:.3f},{row[1]:.3f}" for row in va]
        _write_lines(root / AFFWILD2_VA_DIR / f"{video}.txt", [",".join(labels.AFFWILD2_VA_HEADER), *rows])


def write_rafdb(root: str | Path, items: Iterable[tuple[str, np.ndarray, str]], kind: str = "basic",
                quality: int = 90) -> None:
    """RAF-DB basic or compound: items of (name like 'train_00001', image, expression name)."""
    mapping = labels.RAFDB_BASIC if kind == "basic" else labels.RAFDB_COMPOUND
    code = {labels.normalise_name(n): v for v, n in mapping.items()}
    root = Path(root)
    lines = []
    for name, image, expression in items:
        save_image(root / "Image" / "aligned" / f"{name}_aligned.jpg", image, quality)
        lines.append(f"{name}.jpg {code[labels.normalise_name(expression)]}")
    _write_lines(root / "EmoLabel" / "list_patition_label.txt", lines)


def write_affectnet(csv_path: str | Path, image_root: str | Path, items: Iterable[tuple], quality: int = 90) -> None:
    """AffectNet CSV + images: items of (relative path, image, expression name[, (valence, arousal)]); the face
    box is the image; without a valence-arousal pair the row carries AffectNet's -2 (none)."""
    code = _inverse(labels.AFFECTNET)
    csv_path, image_root = Path(csv_path), Path(image_root)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                         "facial_landmarks", "expression", "valence", "arousal"])
        for rel, image, expression, *rest in items:
            save_image(image_root / rel, image, quality)
            h, w = np.asarray(image).shape[:2]
            va = [f"{v:.3f}" for v in rest[0]] if rest and rest[0] is not None else ["-2", "-2"]
            writer.writerow([rel, 0, 0, w, h, "", code[expression], *va])


def format_time(seconds: float) -> str:
    """hh:mm:ss.ms as C-EXPR-DB writes its segment times."""
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def write_cexpr_annotation(path: str | Path, segments: Iterable[tuple[float, float, str]]) -> None:
    """C-EXPR-DB segment CSV from (begin s, end s, class name in labels.CEXPR_CLASSES)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*labels.CEXPR_TIME_COLUMNS, *labels.CEXPR_CSV_CLASS_COLUMNS])
        for begin, end, name in segments:
            marks = [""] * len(labels.CEXPR_CLASSES)
            marks[labels.compound_index(name)] = "1"
            writer.writerow([format_time(begin), format_time(end), *marks])


def write_manifest(csv_path: str | Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Generic manifest CSV with the given columns (``path`` first, relative to the CSV's folder)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

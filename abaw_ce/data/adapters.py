"""Dataset adapters: one per real on-disk format (shared/DESIGN.md section 5), each returning a sample table.

Every adapter checks its input line by line and stops with an ``InputError`` naming the file, the line and
what was expected. Per-frame gaps (an annotated frame without an image, an unannotated row) are skipped and
counted in ``table.attrs['reports'][source]``.
"""
from __future__ import annotations

import csv
import inspect
import io
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abaw_ce import labels
from abaw_ce.data.table import TARGET_COLUMNS, make_table
from abaw_ce.errors import InputError, OptionError, read_text_lines
from abaw_ce.video import video_info

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
NonBasic = str | Mapping[str, str]


def _attach_report(table: pd.DataFrame, source: str, **counts: int) -> pd.DataFrame:
    counts = {"rows": len(table), **counts}
    table.attrs["reports"] = {source: counts}
    skipped = {k: v for k, v in counts.items() if k.startswith("skipped") and v}
    if skipped:
        log.warning("%s: %s", source, ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in skipped.items()))
    return table


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(path, f"{what} folder not found")
    return path


def _parse_int(path: Path, line_no: int, text: str, allowed: range | set, what: str) -> int:
    """An integer field of a label file; ``what`` names it ('expression label') for the error."""
    expected = (f"{min(allowed)}..{max(allowed)}" if isinstance(allowed, range)
                else "one of " + ", ".join(map(str, sorted(allowed))))
    try:
        value = int(text.strip())
    except ValueError:
        raise InputError(path, f"expected an integer {what} ({expected}), got {text.strip()!r}", line_no) from None
    if value not in allowed:
        raise InputError(path, f"{what} {value} is out of range (expected {expected})", line_no)
    return value


# --- Aff-Wild2 (ABAW) --------------------------------------------------------------------------------

def _affwild2_files(annotation_dir: Path) -> list[Path]:
    files = sorted(_require_dir(annotation_dir, "annotation").glob("*.txt"))
    if not files:
        raise InputError(annotation_dir, "no annotation .txt files in this folder")
    return files


def _video_group(video: str) -> str:
    # Both people of a two-person video share one group, so folds cannot split the video.
    return re.sub(r"_(left|right)$", "", video)


def _affwild2_rows(path: Path, header: tuple[str, ...]) -> list[str]:
    lines = read_text_lines(path)
    got = lines[0].strip()
    if [h.strip() for h in got.split(",")] != list(header):
        raise InputError(path, f"wrong header {got!r}; expected {','.join(header)!r}", 1)
    return lines[1:]


@dataclass
class _LabelledFrames:
    paths: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    values: list = field(default_factory=list)
    unannotated: int = 0
    missing: int = 0


def _affwild2_frames(images: Path, annotations: Path, header: tuple[str, ...],
                     parse: Callable[[Path, int, str], Any]) -> _LabelledFrames:
    """Every annotated Aff-Wild2 frame that has an image. ``parse(txt, line_no, row)`` returns the row's
    labels, or None when the frame is not annotated; frames without an image are counted, not kept."""
    _require_dir(images, "cropped_aligned image")
    out = _LabelledFrames()
    for txt in _affwild2_files(annotations):
        video = txt.stem
        present = _frames_present(images / video)
        for k, row in enumerate(_affwild2_rows(txt, header), start=1):
            value = parse(txt, k + 1, row)
            if value is None:
                out.unannotated += 1
                continue
            if k not in present:
                out.missing += 1
                continue
            out.paths.append(str(images / video / f"{k:05d}.jpg"))
            out.groups.append(_video_group(video))
            out.frames.append(k)
            out.values.append(value)
    return out


def load_affwild2_expr(images: str | Path, annotations: str | Path, non_basic: NonBasic = "zero",
                       source: str = "affwild2_expr") -> pd.DataFrame:
    """Aff-Wild2 EXPR: ``images/<video>/<k:05d>.jpg`` (the cropped_aligned folder) + ``<video>.txt`` files."""

    def parse(txt: Path, line_no: int, row: str) -> str | None:
        if not row.strip():
            raise InputError(txt, "empty line (expected one integer label, -1..7)", line_no)
        value = _parse_int(txt, line_no, row, range(-1, 8), "expression label")
        return None if value == -1 else labels.AFFWILD2_EXPR[value]

    got = _affwild2_frames(Path(images), Path(annotations), labels.AFFWILD2_EXPR_HEADER, parse)
    table = make_table(got.paths, source, got.groups, got.values, frame=got.frames, non_basic=non_basic)
    return _attach_report(table, source, skipped_unannotated=got.unannotated, skipped_missing_image=got.missing,
                          dropped_by_policy=len(got.paths) - len(table))


def load_affwild2_au(images: str | Path, annotations: str | Path, source: str = "affwild2_au") -> pd.DataFrame:
    """Aff-Wild2 AU: twelve 0/1 values a line; -1 masks that AU (never a negative); all -1 skips the frame."""
    n_aus = len(labels.AFFWILD2_AUS)

    def parse(txt: Path, line_no: int, row: str) -> list[int] | None:
        fields = row.split(",")
        if len(fields) != n_aus:
            raise InputError(txt, f"expected {n_aus} comma-separated AU values, got {len(fields)}", line_no)
        values = [_parse_int(txt, line_no, f, {-1, 0, 1}, "AU value") for f in fields]
        return None if all(v == -1 for v in values) else values

    got = _affwild2_frames(Path(images), Path(annotations), labels.AFFWILD2_AU_HEADER, parse)
    aus = np.asarray(got.values, dtype=np.float32).reshape(-1, n_aus)
    aus[aus < 0] = np.nan
    table = make_table(got.paths, source, got.groups, frame=got.frames, aus=aus, au_ids=labels.AFFWILD2_AUS)
    return _attach_report(table, source, skipped_unannotated=got.unannotated, skipped_missing_image=got.missing)


def _parse_va(path: Path, line_no: int, text: str, what: str, invalid: float) -> float:
    """A valence or arousal value in [-1, 1], or NaN for the dataset's 'not annotated' code."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, f"{what} {text.strip()!r} is not a number", line_no) from None
    if value == invalid:
        return float("nan")
    if not -1.0 <= value <= 1.0:
        raise InputError(path, f"{what} {value} is outside [-1, 1] (and is not the {invalid:g} of 'none')", line_no)
    return value


def load_affwild2_va(images: str | Path, annotations: str | Path, source: str = "affwild2_va") -> pd.DataFrame:
    """Aff-Wild2 VA: ``valence,arousal`` a line in [-1, 1]; -5 marks a frame as not annotated (skipped)."""

    def parse(txt: Path, line_no: int, row: str) -> list[float] | None:
        fields = row.split(",")
        if len(fields) != 2:
            raise InputError(txt, f"expected 2 comma-separated values (valence,arousal), got {len(fields)}",
                             line_no)
        va = [_parse_va(txt, line_no, f, name, labels.AFFWILD2_VA_INVALID)
              for f, name in zip(fields, labels.AFFWILD2_VA_HEADER)]
        return None if np.isnan(va).any() else va

    got = _affwild2_frames(Path(images), Path(annotations), labels.AFFWILD2_VA_HEADER, parse)
    table = make_table(got.paths, source, got.groups, frame=got.frames,
                       va=np.asarray(got.values, np.float32).reshape(-1, 2))
    return _attach_report(table, source, skipped_unannotated=got.unannotated, skipped_missing_image=got.missing)


def _frames_present(folder: Path) -> set[int]:
    """Frame numbers with an image in a cropped_aligned video folder (one listing, no per-frame stat)."""
    if not folder.is_dir():
        return set()
    out = set()
    for name in (p.name for p in folder.iterdir()):
        stem, _, suffix = name.partition(".")
        if stem.isdigit() and "." + suffix.lower() in IMAGE_SUFFIXES:
            out.add(int(stem))
    return out


# --- RAF-DB ------------------------------------------------------------------------------------------

def load_rafdb(root: str | Path, kind: str = "basic", non_basic: NonBasic = "zero",
               source: str | None = None) -> pd.DataFrame:
    """RAF-DB basic or compound: ``EmoLabel/list_patition_label.txt`` + ``Image/aligned/<name>_aligned.jpg``."""
    if kind not in ("basic", "compound"):
        raise OptionError(f"RAF-DB kind must be 'basic' or 'compound', got {kind!r}")
    root = Path(root)
    source = source or f"rafdb_{kind}"
    mapping = labels.RAFDB_BASIC if kind == "basic" else labels.RAFDB_COMPOUND
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    image_dir = _require_dir(root / "Image" / "aligned", "RAF-DB aligned image")
    present = {p.name for p in image_dir.iterdir()}
    paths, groups, exprs, splits = [], [], [], []
    missing = 0
    for line_no, line in enumerate(read_text_lines(label_file), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise InputError(label_file, f"expected '<image name> <label>', got {line.strip()!r}", line_no)
        name, value = fields
        label = _parse_int(label_file, line_no, value, range(1, len(mapping) + 1), f"RAF-DB {kind} label")
        stem = Path(name).stem
        image_name = f"{stem}_aligned{Path(name).suffix or '.jpg'}"
        if image_name not in present:
            missing += 1
            continue
        paths.append(str(image_dir / image_name))
        groups.append(stem)  # RAF-DB has no identity labels: each image is its own group
        exprs.append(mapping[label])
        splits.append(stem.split("_")[0])
    table = make_table(paths, source, groups, exprs, split=splits, non_basic=non_basic)
    return _attach_report(table, source, skipped_missing_image=missing, dropped_by_policy=len(paths) - len(table))


# --- AffectNet ---------------------------------------------------------------------------------------

AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                     "facial_landmarks", "expression", "valence", "arousal")


def _csv_records(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of a CSV, checking every row's width against the header."""
    lines = read_text_lines(path)
    reader = csv.reader(io.StringIO("\n".join(lines)))
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as err:
        raise InputError(path, f"malformed CSV header ({err})", 1) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(path, f"header lacks column(s) {missing}; expected at least {list(required)}", 1)
    records = []
    try:
        for fields in reader:
            line_no = reader.line_num
            if not fields or not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise InputError(path, f"expected {len(header)} fields as in the header, got {len(fields)}", line_no)
            records.append((line_no, fields))
    except csv.Error as err:
        raise InputError(path, f"malformed CSV ({err})", reader.line_num) from None
    return header, records


def load_affectnet(csv_path: str | Path, images: str | Path, non_basic: NonBasic = "zero",
                   source: str = "affectnet") -> pd.DataFrame:
    """AffectNet's CSV; expressions 8-10 (None, Uncertain, No-Face) are dropped and counted."""
    csv_path, images = Path(csv_path), Path(images)
    _require_dir(images, "AffectNet image")
    header, records = _csv_records(csv_path, AFFECTNET_COLUMNS)
    col = {name: header.index(name) for name in AFFECTNET_COLUMNS}
    paths, groups, exprs, vas = [], [], [], []
    unusable = missing = 0
    for line_no, fields in records:
        value = _parse_int(csv_path, line_no, fields[col["expression"]], range(0, 11), "AffectNet expression")
        if value in labels.AFFECTNET_UNUSABLE:
            unusable += 1
            continue
        rel = fields[col["subDirectory_filePath"]].strip()
        image = images / rel
        if not image.is_file():
            missing += 1
            continue
        va = [_parse_va(csv_path, line_no, fields[col[name]], name, labels.AFFECTNET_VA_INVALID)
              for name in ("valence", "arousal")]
        paths.append(str(image))
        groups.append(rel)  # no identity labels in AffectNet
        exprs.append(labels.AFFECTNET[value])
        vas.append(va if not np.isnan(va).any() else [np.nan, np.nan])
    table = make_table(paths, source, groups, exprs, non_basic=non_basic,
                       va=np.asarray(vas, np.float32).reshape(-1, 2))
    return _attach_report(table, source, skipped_unusable_label=unusable, skipped_missing_image=missing,
                          dropped_by_policy=len(paths) - len(table))


# --- C-EXPR-DB ---------------------------------------------------------------------------------------

_TIME = re.compile(r"^\s*(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")


def _parse_time(path: Path, line_no: int, text: str, column: str) -> float:
    m = _TIME.match(text)
    if not m:
        raise InputError(path, f"{column}: expected a time hh:mm:ss.ms, got {text.strip()!r}", line_no)
    hours, minutes, seconds = int(m.group(1) or 0), int(m.group(2)), float(m.group(3))
    return hours * 3600 + minutes * 60 + seconds


def cexpr_segments(csv_path: str | Path) -> list[tuple[int, float, float, str]]:
    """(line, begin s, end s, class name) of each row of a C-EXPR-DB annotation CSV, checked."""
    csv_path = Path(csv_path)
    header, records = _csv_records(csv_path, labels.CEXPR_TIME_COLUMNS)
    by_name = {labels.normalise_name(h): i for i, h in enumerate(header)}
    class_cols = []
    for name in labels.CEXPR_CSV_CLASS_COLUMNS:
        if labels.normalise_name(name) not in by_name:
            raise InputError(csv_path, f"header lacks the class column {name!r}", 1)
        class_cols.append(by_name[labels.normalise_name(name)])
    begin_col, end_col = (header.index(c) for c in labels.CEXPR_TIME_COLUMNS)
    segments = []
    for line_no, fields in records:
        begin = _parse_time(csv_path, line_no, fields[begin_col], labels.CEXPR_TIME_COLUMNS[0])
        end = _parse_time(csv_path, line_no, fields[end_col], labels.CEXPR_TIME_COLUMNS[1])
        if end <= begin:
            raise InputError(csv_path, f"end time {end:.3f}s is not after begin time {begin:.3f}s", line_no)
        marks = [fields[c].strip() for c in class_cols]
        bad = [m for m in marks if m not in ("", "0", "1")]
        if bad:
            raise InputError(csv_path, f"class cells must be '1' or empty, got {bad[0]!r}", line_no)
        hits = [i for i, m in enumerate(marks) if m == "1"]
        if len(hits) != 1:
            raise InputError(csv_path, f"expected exactly one '1' among the class columns, got {len(hits)}", line_no)
        segments.append((line_no, begin, end, labels.CEXPR_CLASSES[hits[0]]))
    return segments


def segments_to_frames(csv_path: Path, segments: list[tuple[int, float, float, str]], fps: float,
                       n_frames: int) -> dict[int, str]:
    """Frame k (1-based, time (k-1)/fps) takes the label of the segment [begin, end) containing it."""
    out: dict[int, str] = {}
    origin: dict[int, int] = {}
    for line_no, begin, end, name in segments:
        first = max(1, int(np.ceil(begin * fps - 1e-6)) + 1)
        last = min(n_frames, int(np.ceil(end * fps - 1e-6)))
        for k in range(first, last + 1):
            if k in out and out[k] != name:
                raise InputError(csv_path, f"segment overlaps line {origin[k]} with a different class "
                                 f"({name} vs {out[k]}) at frame {k}", line_no)
            out[k], origin[k] = name, line_no
    return out


def load_cexpr(root: str | Path, non_basic: NonBasic = "zero", fps: Mapping[str, float] | None = None,
               source: str = "cexpr") -> pd.DataFrame:
    """C-EXPR-DB: ``videos/<id>.mp4`` + ``annotation/<id>.csv`` segments → one row per labelled frame.

    Rows point at the video (``path``) and carry the 1-based ``frame``; unlabelled gaps get no row. ``fps``
    overrides the frame rate read from a video.
    """
    root = Path(root)
    annotation_dir = _require_dir(root / "annotation", "C-EXPR-DB annotation")
    files = sorted(annotation_dir.glob("*.csv"))
    if not files:
        raise InputError(annotation_dir, "no annotation .csv files in this folder")
    paths, groups, frames, exprs = [], [], [], []
    for csv_path in files:
        vid = csv_path.stem
        candidates = sorted((root / "videos").glob(f"{vid}.*"))
        if not candidates:
            raise InputError(csv_path, f"no video {vid}.* in {root / 'videos'} for this annotation")
        info = video_info(candidates[0])
        rate = float((fps or {}).get(vid, info.fps))
        labelled = segments_to_frames(csv_path, cexpr_segments(csv_path), rate, info.frames)
        for k in sorted(labelled):
            paths.append(str(candidates[0]))
            groups.append(vid)
            frames.append(k)
            exprs.append(labelled[k])
    table = make_table(paths, source, groups, exprs, frame=frames, non_basic=non_basic)
    return _attach_report(table, source, dropped_by_policy=len(paths) - len(table))


# --- generic manifest and unlabeled folders -------------------------------------------------------------

def load_manifest(csv_path: str | Path, non_basic: NonBasic = "zero", source: str | None = None) -> pd.DataFrame:
    """A CSV ``path,<label columns>``; paths relative to the CSV's folder.

    Optional columns: ``group``; ``expression`` (any label name of ``abaw_ce.labels``, empty = unlabeled);
    the six basic emotions as 0/1 columns (a multi-label target, exclusive with ``expression``);
    ``AU<n>`` columns (0/1, -1 or empty = not annotated). A row must name an existing image.
    """
    csv_path = Path(csv_path)
    source = source or csv_path.stem
    header, records = _csv_records(csv_path, ("path",))
    col = {h: i for i, h in enumerate(header)}
    emotion_cols = [e for e in labels.BASIC_EMOTIONS if e in col]
    if emotion_cols and "expression" in col:
        raise InputError(csv_path, "give either an 'expression' column or basic-emotion columns, not both", 1)
    if emotion_cols and len(emotion_cols) != len(labels.BASIC_EMOTIONS):
        raise InputError(csv_path, f"basic-emotion columns must be all six {labels.BASIC_EMOTIONS}", 1)
    au_ids = [int(h[2:]) for h in header if re.fullmatch(r"AU\d+", h)]
    unknown_aus = [a for a in au_ids if a not in labels.CEXPR_AUS]
    if unknown_aus:
        raise InputError(csv_path, f"AU columns {unknown_aus} are not among the 17 AUs {labels.CEXPR_AUS}", 1)
    paths, groups, exprs, au_rows, targets = [], [], [], [], []
    for line_no, fields in records:
        rel = fields[col["path"]].strip()
        if not rel:
            raise InputError(csv_path, "empty path", line_no)
        image = (csv_path.parent / rel)
        if not image.is_file():
            raise InputError(csv_path, f"image {rel!r} not found (paths are relative to the CSV's folder)", line_no)
        paths.append(str(image))
        groups.append(fields[col["group"]].strip() if "group" in col else rel)
        if "expression" in col:
            name = fields[col["expression"]].strip()
            if name:
                try:
                    labels.expression_kind(name)
                except KeyError:
                    raise InputError(csv_path, f"unknown expression {name!r}", line_no) from None
            exprs.append(name)
        if emotion_cols:
            targets.append([float(_parse_int(csv_path, line_no, fields[col[e]], {0, 1}, f"{e} value"))
                            for e in labels.BASIC_EMOTIONS])
        au_rows.append([np.nan if fields[col[f"AU{a}"]].strip() in ("", "-1") else
                        float(_parse_int(csv_path, line_no, fields[col[f"AU{a}"]], {-1, 0, 1}, f"AU{a} value"))
                        for a in au_ids])
    aus = np.asarray(au_rows, dtype=np.float32).reshape(len(paths), len(au_ids)) if au_ids else None
    table = make_table(paths, source, groups, exprs if "expression" in col else None, aus=aus,
                       au_ids=au_ids or labels.CEXPR_AUS, non_basic=non_basic)
    if emotion_cols:
        table[list(TARGET_COLUMNS)] = np.asarray(targets, dtype=np.float32).reshape(-1, len(TARGET_COLUMNS))
        table["has_target"] = True
    return _attach_report(table, source, dropped_by_policy=len(paths) - len(table))


def load_image_folder(root: str | Path, source: str | None = None) -> pd.DataFrame:
    """Unlabeled face images found recursively under a folder; the group is the image's parent folder."""
    root = _require_dir(Path(root), "image")
    source = source or root.name
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise InputError(root, f"no images ({', '.join(IMAGE_SUFFIXES)}) under this folder")
    groups = [str(p.parent.relative_to(root)) for p in images]
    return _attach_report(make_table([str(p) for p in images], source, groups), source)


ADAPTERS = {
    "affwild2_expr": load_affwild2_expr,
    "affwild2_au": load_affwild2_au,
    "affwild2_va": load_affwild2_va,
    "rafdb_basic": partial(load_rafdb, kind="basic"),
    "rafdb_compound": partial(load_rafdb, kind="compound"),
    "affectnet": load_affectnet,
    "cexpr": load_cexpr,
    "manifest": load_manifest,
    "image_folder": load_image_folder,
}


def load_dataset(spec: Mapping) -> pd.DataFrame:
    """Load one dataset from a config entry ``{format: <name>, <adapter arguments>...}``."""
    spec = dict(spec)
    fmt = spec.pop("format", None)
    if fmt not in ADAPTERS:
        raise OptionError(f"dataset format must be one of {sorted(ADAPTERS)}, got {fmt!r}")
    adapter = ADAPTERS[fmt]
    accepted = inspect.signature(adapter)
    try:
        accepted.bind(**spec)
    except TypeError as err:  # a key of the user's entry missing or misspelt, not a defect of the kit
        raise OptionError(f"data.datasets entry of format {fmt}: {err}; it takes "
                          f"{', '.join(accepted.parameters)}") from None
    return adapter(**spec)

"""Packed storage of face crops: one raw uint8 array on disk, read through ``numpy.memmap``.

Training reads hundreds of thousands of small aligned crops; opening and JPEG-decoding each file costs far
more than copying its pixels, so crops are decoded once into a store and read back as array slices.

A store is a folder with three files:

* ``faces.u8``  -- raw uint8 pixels, shape (count, height, width, 3), C order, no header;
* ``index.csv`` -- one row per crop: ``row`` (0..count-1), ``key`` (unique string), then any extra columns;
* ``meta.json`` -- ``{"format": "abaw-ce-packed", "version": 1, "count", "height", "width", "channels": 3,
  "dtype": "uint8", "extra": {...}}``.

Stores are written into a ``<out_dir>.partial-XXXX`` sibling and renamed into place when complete, so a
folder at ``out_dir`` is always a whole store.
"""
from __future__ import annotations

import concurrent.futures
import csv
import json
import numbers
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from abaw_ce.data.image_file import UnreadableImage, read_rgb_array
from abaw_ce.errors import InputError
from abaw_ce.progress import progress_bar

FORMAT_NAME = "abaw-ce-packed"
FORMAT_VERSION = 1
CHANNELS = 3
FACES_FILE = "faces.u8"
INDEX_FILE = "index.csv"
META_FILE = "meta.json"
RESERVED_COLUMNS = ("row", "key")

# Images decoded per thread-pool round in pack_image_files: bounds memory while keeping decoders busy.
PACK_CHUNK = 256


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _cell(key: str, column: str, value: Any) -> Any:
    """One index cell as a plain Python scalar (CSV can only hold scalars)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(f"crop {key!r}: column {column!r} must be a string or number, got {type(value).__name__}")


def is_store(path: Path) -> bool:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME


def _check_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber data: only an empty folder, or an existing store with overwrite=True, may be replaced."""
    if not os.path.lexists(out_dir):
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output folder")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out_dir} already exists and is not empty; pass --overwrite (overwrite=True) "
                              f"to replace it")
    if not is_store(out_dir):
        # overwrite=True deletes the folder, so only do it to something this module wrote.
        raise FileExistsError(f"{out_dir} is not empty and is not a packed store ({META_FILE} missing or foreign); "
                              f"refusing to delete it even with --overwrite")


class PackedWriter:
    """Append HxWx3 uint8 crops and their index rows, then ``close()`` to publish the store at ``out_dir``.

    Every crop has the same extra columns (fixed by the first ``add``); ``None`` is written as an empty cell.
    Used as a context manager, an exception inside the block discards everything written so far.
    """

    def __init__(self, out_dir: str | Path, height: int, width: int, overwrite: bool = False,
                 extra_meta: Mapping[str, Any] | None = None):
        self.out_dir = Path(out_dir)
        self.height = _check_size("height", height)
        self.width = _check_size("width", width)
        self.overwrite = bool(overwrite)
        self.extra_meta = dict(extra_meta or {})
        json.dumps(self.extra_meta)  # fail now, not after packing everything, if it cannot be saved
        _check_destination(self.out_dir, self.overwrite)

        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.partial_dir = Path(tempfile.mkdtemp(prefix=f"{self.out_dir.name}.partial-", dir=self.out_dir.parent))
        # mkdtemp makes a private (0700) folder; the published store gets the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        self.partial_dir.chmod(0o777 & ~umask)
        self._faces_file = open(self.partial_dir / FACES_FILE, "wb")
        self._keys: list[str] = []
        self._seen_keys: set[str] = set()
        self._column_names: tuple[str, ...] | None = None
        self._columns: dict[str, list[Any]] = {}
        self._state = "open"

    @property
    def count(self) -> int:
        return len(self._keys)

    def __enter__(self) -> PackedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _require_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(f"PackedWriter for {self.out_dir} is already {self._state}")

    def _check_key(self, key: Any, pending: set[str]) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"crop key must be a non-empty string, got {key!r}")
        if key in self._seen_keys or key in pending:
            raise ValueError(f"crop key {key!r} was already added; keys must be unique")
        return key

    def _check_columns(self, key: str, names: Iterable[str]) -> tuple[str, ...]:
        names = tuple(names)
        for name in names:
            if name in RESERVED_COLUMNS:
                raise ValueError(f"crop {key!r}: column name {name!r} is reserved")
        if self._column_names is not None and set(names) != set(self._column_names):
            raise ValueError(f"crop {key!r}: columns {sorted(names)} differ from the first crop's "
                             f"{list(self._column_names)}")
        return names if self._column_names is None else self._column_names

    def _check_image(self, key: str, image: Any, shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != shape:
            got = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                   else type(image).__name__)
            raise ValueError(f"crop {key!r}: expected a uint8 array of shape {shape}, got {got}")
        return np.ascontiguousarray(image)

    def add(self, image: np.ndarray, key: str, **columns: Any) -> None:
        """Append one HxWx3 uint8 RGB crop with its unique key and extra index columns."""
        self._require_open()
        key = self._check_key(key, set())
        image = self._check_image(key, image, (self.height, self.width, CHANNELS))
        names = self._check_columns(key, columns)
        cells = {name: _cell(key, name, columns[name]) for name in names}
        self._faces_file.write(memoryview(image).cast("B"))
        self._record(names, [key], {name: [value] for name, value in cells.items()})

    def add_batch(self, images: np.ndarray, keys: Sequence[str], **columns: Sequence[Any]) -> None:
        """Append B crops (B,H,W,3 uint8) with B keys and, per extra column, a sequence of B values."""
        self._require_open()
        keys = list(keys)
        pending: set[str] = set()
        for key in keys:
            pending.add(self._check_key(key, pending))
        first = keys[0] if keys else "<empty batch>"
        images = self._check_image(first, images, (len(keys), self.height, self.width, CHANNELS))
        if not keys:
            return
        names = self._check_columns(first, columns)
        cells: dict[str, list[Any]] = {}
        for name in names:
            values = list(columns[name])
            if len(values) != len(keys):
                raise ValueError(f"column {name!r} has {len(values)} values for {len(keys)} crops")
            cells[name] = [_cell(key, name, value) for key, value in zip(keys, values)]
        # Everything is validated before writing, so a rejected batch leaves the writer unchanged.
        self._faces_file.write(memoryview(images).cast("B"))
        self._record(names, keys, cells)

    def _record(self, names: tuple[str, ...], keys: list[str], cells: dict[str, list[Any]]) -> None:
        if self._column_names is None:
            self._column_names = names
            self._columns = {name: [] for name in names}
        self._keys.extend(keys)
        self._seen_keys.update(keys)
        for name in names:
            self._columns[name].extend(cells[name])

    def close(self) -> Path:
        """Write the index and meta, then move the finished store to ``out_dir``; returns ``out_dir``."""
        if self._state == "closed":
            return self.out_dir
        self._require_open()
        try:
            self._faces_file.flush()
            os.fsync(self._faces_file.fileno())
            self._faces_file.close()
            index = pd.DataFrame({"row": np.arange(self.count, dtype=np.int64), "key": self._keys,
                                  **self._columns})
            index.to_csv(self.partial_dir / INDEX_FILE, index=False)
            meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "count": self.count,
                    "height": self.height, "width": self.width, "channels": CHANNELS, "dtype": "uint8",
                    "extra": self.extra_meta}
            (self.partial_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        return self.out_dir

    def _publish(self) -> None:
        # Checked again: the folder may have appeared while we were packing.
        _check_destination(self.out_dir, self.overwrite)
        replaced = None
        if self.out_dir.is_dir():
            if any(self.out_dir.iterdir()):
                replaced = Path(tempfile.mkdtemp(prefix=f"{self.out_dir.name}.old-", dir=self.out_dir.parent))
                os.replace(self.out_dir, replaced / "store")
            else:
                self.out_dir.rmdir()
        os.replace(self.partial_dir, self.out_dir)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)

    def abort(self) -> None:
        """Discard everything written; ``out_dir`` is left as it was."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._faces_file.close()
        shutil.rmtree(self.partial_dir, ignore_errors=True)


def read_meta(store_dir: str | Path) -> dict:
    """The validated ``meta.json`` of a store; also checks that ``faces.u8`` holds exactly count crops."""
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        raise InputError(store_dir, "packed store folder not found" if not store_dir.exists() else
                         "expected a packed store folder, found a file")
    meta_path = store_dir / META_FILE
    if not meta_path.is_file():
        raise InputError(meta_path, f"file not found; {store_dir} is not a complete packed store")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(meta_path, f"not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(meta_path, f"format is {found!r}, expected {FORMAT_NAME!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise InputError(meta_path, f"version is {meta.get('version')!r}, this kit reads version {FORMAT_VERSION}")
    for field in ("count", "height", "width"):
        value = meta.get(field)
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if field == "count" else 1):
            raise InputError(meta_path, f"{field} is {value!r}, expected a "
                             f"{'non-negative' if field == 'count' else 'positive'} integer")
    if meta.get("channels") != CHANNELS or meta.get("dtype") != "uint8":
        raise InputError(meta_path, f"channels/dtype are {meta.get('channels')!r}/{meta.get('dtype')!r}, "
                         f"expected {CHANNELS}/'uint8'")
    faces_path = store_dir / FACES_FILE
    if not faces_path.is_file():
        raise InputError(faces_path, "file not found; the packed store is incomplete")
    expected = meta["count"] * meta["height"] * meta["width"] * CHANNELS
    actual = faces_path.stat().st_size
    if actual != expected:
        raise InputError(faces_path, f"size is {actual} bytes, expected {expected} bytes "
                         f"(count {meta['count']} x {meta['height']} x {meta['width']} x {CHANNELS} from "
                         f"{META_FILE}); the store is truncated or damaged, pack it again")
    meta.setdefault("extra", {})
    return meta


def read_index(store_dir: str | Path) -> pd.DataFrame:
    """The validated ``index.csv`` of a store: ``row`` == 0..count-1, unique string ``key``, extra columns."""
    store_dir = Path(store_dir)
    meta = read_meta(store_dir)
    index_path = store_dir / INDEX_FILE
    if not index_path.is_file():
        raise InputError(index_path, "file not found; the packed store is incomplete")
    with open(index_path, newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    if header[:2] != list(RESERVED_COLUMNS):
        raise InputError(index_path, f"header starts with {header[:2]}, expected {list(RESERVED_COLUMNS)}", 1)
    # Keys, and the names of videos and files, stay verbatim strings ("001", "NA": a video named 007 is not 7);
    # in other columns only an empty cell (None at write) is missing.
    names = {column: str for column in ("key", "video", "path") if column in header}
    index = pd.read_csv(index_path, dtype=names, keep_default_na=False,
                        na_values={name: [""] for name in header[2:]})
    if len(index) != meta["count"]:
        raise InputError(index_path, f"has {len(index)} rows, {META_FILE} says count is {meta['count']}")
    expected_rows = np.arange(len(index))
    if not np.array_equal(index["row"].to_numpy(), expected_rows):
        bad = int(np.flatnonzero(index["row"].to_numpy() != expected_rows)[0])
        raise InputError(index_path, f"row is {index['row'].iloc[bad]!r}, expected {bad}", bad + 2)
    empty = index["key"] == ""
    if empty.any():
        raise InputError(index_path, "key is empty", int(np.flatnonzero(empty.to_numpy())[0]) + 2)
    duplicated = index["key"].duplicated()
    if duplicated.any():
        bad = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise InputError(index_path, f"key {index['key'].iloc[bad]!r} appears more than once", bad + 2)
    return index


class PackedFaces(Dataset):
    """Crops of a packed store as ``torch.uint8`` tensors of shape (3, H, W), like ``torchvision.io.decode_image``.

    ``rows`` restricts the dataset to those store rows (e.g. one fold); item ``i`` is store row ``rows[i]``.
    The memmap is opened lazily in each process (and never pickled), so DataLoader workers started by fork
    or spawn each map the file themselves.
    """

    def __init__(self, store_dir: str | Path, transform: Callable[[torch.Tensor], Any] | None = None,
                 rows: Sequence[int] | np.ndarray | None = None):
        self.store_dir = Path(store_dir)
        self.meta = read_meta(self.store_dir)
        self.count = self.meta["count"]
        self.shape = (self.meta["height"], self.meta["width"], CHANNELS)
        self.transform = transform
        self.rows = self._check_rows(rows)
        self._faces: np.ndarray | None = None
        self._faces_pid: int | None = None
        self._index: pd.DataFrame | None = None

    def _check_rows(self, rows: Any) -> np.ndarray:
        if rows is None:
            return np.arange(self.count, dtype=np.int64)
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"rows must be a 1-D sequence of integer row numbers, got {rows.dtype} "
                             f"array of shape {rows.shape}")
        rows = rows.astype(np.int64)
        outside = (rows < 0) | (rows >= self.count)
        if outside.any():
            raise ValueError(f"row {int(rows[outside][0])} is outside the store {self.store_dir} "
                             f"(rows 0..{self.count - 1})")
        return rows

    def _pixels(self) -> np.ndarray:
        # Keyed by pid: a forked worker inherits the parent's map and must open its own.
        if self._faces is None or self._faces_pid != os.getpid():
            if self.count == 0:
                self._faces = np.zeros((0, *self.shape), dtype=np.uint8)  # mmap cannot map an empty file
            else:
                self._faces = np.memmap(self.store_dir / FACES_FILE, dtype=np.uint8, mode="r",
                                        shape=(self.count, *self.shape))
            self._faces_pid = os.getpid()
        return self._faces

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_faces"] = None  # pickling a memmap would copy the whole array
        state["_faces_pid"] = None
        state["_index"] = None
        return state

    @property
    def index(self) -> pd.DataFrame:
        """Index rows of this dataset's crops, in dataset order (``row`` column = store row)."""
        if self._index is None:
            self._index = read_index(self.store_dir)
        return self._index.iloc[self.rows].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rows)

    def _store_rows(self, indices: Any) -> np.ndarray:
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        size = len(self.rows)
        if positions.size and (positions.min() < -size or positions.max() >= size):
            raise IndexError(f"index out of range for PackedFaces of length {size}")
        return self.rows[positions]

    def __getitem__(self, i: int) -> Any:
        if not isinstance(i, (numbers.Integral, np.integer)):
            raise TypeError(f"PackedFaces indices must be integers, got {type(i).__name__}; use get_batch")
        row = int(self._store_rows(i)[0])
        # One copy straight from the page cache into a contiguous CHW array.
        image = torch.from_numpy(np.ascontiguousarray(self._pixels()[row].transpose(2, 0, 1)))
        return self.transform(image) if self.transform is not None else image

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Items ``indices`` stacked into (B, 3, H, W), read with one sorted slice of the memmap."""
        rows = self._store_rows(indices)
        pixels = self._pixels()
        # Ascending rows turn random access into a forward sweep over the file.
        images = torch.from_numpy(_channels_first(pixels, rows, np.argsort(rows, kind="stable")))
        if self.transform is None:
            return images
        return torch.stack([self.transform(image) for image in images.unbind(0)])

    def read_range(self, start: int, count: int) -> torch.Tensor:
        """Store rows ``start`` .. ``start + count - 1`` as (count, 3, H, W) uint8, read from the file instead of
        through the memmap: one pass over a large store (inference) then holds no page of it in this process's
        memory, where mapped pages stay resident and counted until the map is dropped."""
        if start < 0 or count < 0 or start + count > self.count:
            raise ValueError(f"rows {start}..{start + count - 1} are outside the store {self.store_dir} "
                             f"(rows 0..{self.count - 1})")
        item = int(np.prod(self.shape))
        with open(self.store_dir / FACES_FILE, "rb") as handle:
            handle.seek(start * item)
            data = handle.read(count * item)
        crops = np.frombuffer(data, dtype=np.uint8).reshape(count, *self.shape)
        return torch.from_numpy(_channels_first(crops, np.arange(count), range(count)))

    def __getitems__(self, indices: list[int]) -> list[Any]:
        # DataLoader's batched fetch: one sorted read per batch instead of one read per crop.
        if self.transform is not None:
            return [self[i] for i in indices]
        return list(self.get_batch(indices).unbind(0))


def _channels_first(pixels: np.ndarray, rows: np.ndarray, order: Iterable[int]) -> np.ndarray:
    """(len(rows), 3, H, W) uint8 from HWC crops ``pixels[rows]``, filled in ``order`` (positions into rows).
    Crop by crop, each HWC->CHW shuffle stays inside the CPU cache (a whole-batch transpose is about twice as
    slow)."""
    batch = np.empty((len(rows), CHANNELS, *pixels.shape[1:3]), dtype=np.uint8)
    for position in order:
        batch[position] = pixels[rows[position]].transpose(2, 0, 1)
    return batch


def _read_image(path: Path, height: int, width: int) -> np.ndarray:
    try:
        array = read_rgb_array(path)
    except UnreadableImage as err:
        raise InputError(path, f"cannot read image: {err.reason}") from None
    if array.shape[:2] != (height, width):
        array = np.asarray(Image.fromarray(array).resize((width, height), Image.Resampling.BILINEAR))
    return array


def pack_image_files(paths: Sequence[str | Path], out_dir: str | Path, height: int, width: int,
                     keys: Sequence[str] | None = None, overwrite: bool = False,
                     extra_columns: Mapping[str, Sequence[Any]] | None = None) -> Path:
    """Decode image files (RGB, bilinear resize to height x width when needed) into a packed store.

    Keys default to the paths as given; a ``path`` column is added unless ``extra_columns`` has one.
    An unreadable image raises InputError naming it and leaves no store behind. Returns ``out_dir``.
    """
    paths = [Path(path) for path in paths]
    keys = [str(path) for path in paths] if keys is None else list(keys)
    if len(keys) != len(paths):
        raise ValueError(f"{len(keys)} keys for {len(paths)} image paths")
    columns = {name: list(values) for name, values in (extra_columns or {}).items()}
    for name, values in columns.items():
        if len(values) != len(paths):
            raise ValueError(f"extra column {name!r} has {len(values)} values for {len(paths)} image paths")
    columns.setdefault("path", [str(path) for path in paths])

    threads = max(1, min(8, os.cpu_count() or 1))  # PIL decodes without holding the GIL
    with PackedWriter(out_dir, height, width, overwrite=overwrite,
                      extra_meta={"packed_from": "image files", "resize": "PIL bilinear"}) as writer, \
            concurrent.futures.ThreadPoolExecutor(threads) as pool, \
            progress_bar(total=len(paths), unit="img", desc=f"packing {Path(out_dir).name}") as progress:
        for start in range(0, len(paths), PACK_CHUNK):
            stop = min(start + PACK_CHUNK, len(paths))
            images = list(pool.map(_read_image, paths[start:stop], [height] * (stop - start),
                                   [width] * (stop - start)))
            writer.add_batch(np.stack(images), keys[start:stop],
                             **{name: values[start:stop] for name, values in columns.items()})
            progress.update(stop - start)
    return writer.out_dir

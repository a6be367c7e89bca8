"""Per-file face results on disk (``<key>.npz``), keyed by the input file's bytes and the crop settings.

An entry holds every frame of one input file (one "frame", numbered -1, for an image): ``frames``,
``face_found``, ``boxes`` (N, 4), ``scores`` (N,), ``landmarks`` (N, 5, 2) (NaN where no face), ``crops``
(K, S, S, 3) uint8 for the K frames with a face, in frame order, plus ``fps``, ``size``, ``settings`` and
``error`` (why decoding stopped early, '' when it did not). It is a plain ``.npz`` (``numpy.load`` reads it),
written so that crops never have to sit in memory all at once: they are spooled to a raw file while a video
is processed, then copied into the archive, which is renamed into place only when complete.
"""
from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from abaw_ce.errors import InputError

# Bump when the entry layout or the meaning of its arrays changes: old entries then simply miss.
CACHE_FORMAT_VERSION = 1
_HASH_CHUNK = 1 << 20
_CROPS = "crops"
_METADATA = ("frames", "face_found", "boxes", "scores", "landmarks", "fps", "size", "settings", "error")


@dataclass(eq=False)
class FrameFaces:
    """The chosen face of one frame (frame = 1-based number, or -1 for an image); None fields when no face."""

    frame: int
    face_found: bool
    box: tuple[float, float, float, float] | None = None
    score: float | None = None
    landmarks: np.ndarray | None = None
    crop: np.ndarray | None = None


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(digest: str, settings: str, size: int) -> str:
    """Entry name for a file digest and the settings that change its crops (detector, crop size)."""
    tag = hashlib.blake2b(f"{settings}|size={size}|v{CACHE_FORMAT_VERSION}".encode(), digest_size=6).hexdigest()
    return f"{digest}-{tag}"


def _temp_sibling(path: Path, what: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{what}")


def _write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


class FaceEntry:
    """One file's results: metadata arrays in memory, crops in memory or read from the entry in chunks."""

    def __init__(self, frames: np.ndarray, face_found: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                 landmarks: np.ndarray, size: int, fps: float = 0.0, settings: str = "", error: str = "",
                 crops: np.ndarray | None = None, path: Path | None = None):
        self.frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        self.face_found = np.asarray(face_found, dtype=bool).reshape(-1)
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        self.landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
        self.size = int(size)
        self.fps = float(fps)
        self.settings = str(settings)
        self.error = str(error)
        self.crops = crops
        self.path = path
        if crops is not None and len(crops) != self.face_count:
            raise ValueError(f"{len(crops)} crops for {self.face_count} frames with a face")

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    @property
    def face_count(self) -> int:
        return int(self.face_found.sum())

    @classmethod
    def from_frames(cls, faces: list[FrameFaces], size: int, fps: float = 0.0, settings: str = "",
                    error: str = "") -> FaceEntry:
        """An in-memory entry (for images and tests; videos go through EntryBuilder)."""
        builder = _Columns()
        crops = []
        for item in faces:
            builder.add(item)
            if item.face_found:
                crops.append(item.crop)
        stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), dtype=np.uint8)
        return cls(*builder.arrays(), size=size, fps=fps, settings=settings, error=error, crops=stacked)

    def iter_crops(self, chunk: int = 64) -> Iterator[np.ndarray]:
        """Crops of the frames with a face, in frame order, as (<=chunk, S, S, 3) uint8 arrays."""
        if self.crops is not None:
            for start in range(0, len(self.crops), chunk):
                yield self.crops[start:start + chunk]
            return
        if self.path is None:
            raise ValueError("this entry has neither crops in memory nor a file")
        crop_bytes = self.size * self.size * 3
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{_CROPS}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _fortran, dtype = read_header(member)
            if dtype != np.uint8 or tuple(shape[1:]) != (self.size, self.size, 3):
                raise InputError(self.path, f"crops are {dtype} {shape}, expected uint8 (K, {self.size}, "
                                            f"{self.size}, 3)")
            remaining = shape[0]
            while remaining:
                count = min(chunk, remaining)
                data = member.read(count * crop_bytes)
                if len(data) != count * crop_bytes:
                    raise InputError(self.path, "crops end early; the cache entry is damaged")
                yield np.frombuffer(data, dtype=np.uint8).reshape(count, self.size, self.size, 3)
                remaining -= count

    @classmethod
    def load(cls, path: str | Path) -> FaceEntry:
        """Read an entry's metadata (crops stay on disk until ``iter_crops``); InputError when damaged."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [name for name in (*_METADATA, _CROPS) if name not in archive.files]
                if missing:
                    raise InputError(path, f"not a face cache entry (missing {', '.join(missing)})")
                values = {name: archive[name] for name in _METADATA}
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            raise InputError(path, f"unreadable cache entry ({err})") from None
        entry = cls(values["frames"], values["face_found"], values["boxes"], values["scores"],
                    values["landmarks"], size=int(values["size"]), fps=float(values["fps"]),
                    settings=str(values["settings"]), error=str(values["error"]), path=path)
        if not (len(entry.face_found) == len(entry.boxes) == len(entry.scores) == len(entry.landmarks)
                == entry.frame_count):
            raise InputError(path, "arrays of different lengths; the cache entry is damaged")
        return entry

    def save(self, path: str | Path) -> Path:
        """Write this entry to path atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = _temp_sibling(path, "tmp")
        try:
            with zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                self._write_metadata(archive)
                if self.crops is not None:
                    _write_member(archive, _CROPS, np.asarray(self.crops, dtype=np.uint8).reshape(
                        -1, self.size, self.size, 3))
                else:  # crops still in another entry file: copy them across chunk by chunk
                    with archive.open(f"{_CROPS}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array_header_1_0(member, _crops_header(self.face_count, self.size))
                        for block in self.iter_crops():
                            member.write(block.tobytes())
            os.replace(temp, path)
        finally:
            if temp.exists():
                temp.unlink()
        return path

    def _write_metadata(self, archive: zipfile.ZipFile) -> None:
        for name, value in (("frames", self.frames), ("face_found", self.face_found), ("boxes", self.boxes),
                            ("scores", self.scores), ("landmarks", self.landmarks),
                            ("fps", np.float64(self.fps)), ("size", np.int64(self.size)),
                            ("settings", np.str_(self.settings)), ("error", np.str_(self.error))):
            _write_member(archive, name, value)


def _crops_header(count: int, size: int) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
            "shape": (count, size, size, 3)}


class _Columns:
    """Per-frame metadata gathered while frames stream by."""

    def __init__(self) -> None:
        self.frames: list[int] = []
        self.face_found: list[bool] = []
        self.boxes: list[tuple[float, ...]] = []
        self.scores: list[float] = []
        self.landmarks: list[np.ndarray] = []

    def add(self, item: FrameFaces) -> None:
        self.frames.append(int(item.frame))
        self.face_found.append(bool(item.face_found))
        if item.face_found:
            self.boxes.append(tuple(item.box))
            self.scores.append(float(item.score))
            self.landmarks.append(np.asarray(item.landmarks, dtype=np.float32).reshape(5, 2))
        else:
            self.boxes.append((np.nan,) * 4)
            self.scores.append(np.nan)
            self.landmarks.append(np.full((5, 2), np.nan, dtype=np.float32))

    def arrays(self) -> tuple[np.ndarray, ...]:
        count = len(self.frames)
        return (np.array(self.frames, dtype=np.int64), np.array(self.face_found, dtype=bool),
                np.array(self.boxes, dtype=np.float32).reshape(count, 4),
                np.array(self.scores, dtype=np.float32).reshape(count),
                np.array(self.landmarks, dtype=np.float32).reshape(count, 5, 2))


class EntryBuilder:
    """Collects one video's frames into an entry at ``path`` with bounded memory.

    ``add`` each frame's result, then ``commit``; crops go to a raw spool file next to the entry meanwhile.
    Used as a context manager, leaving the block without ``commit`` (or with an exception) removes the spool.
    """

    def __init__(self, path: str | Path, size: int, settings: str = ""):
        self.path = Path(path)
        self.size = int(size)
        self.settings = settings
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._columns = _Columns()
        self._spool_path = _temp_sibling(self.path, "crops")
        self._spool = open(self._spool_path, "wb")
        self._crop_count = 0

    def __enter__(self) -> EntryBuilder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()

    @property
    def frame_count(self) -> int:
        return len(self._columns.frames)

    @property
    def face_count(self) -> int:
        return self._crop_count

    def add(self, item: FrameFaces) -> None:
        if item.face_found:
            crop = np.ascontiguousarray(item.crop, dtype=np.uint8)
            if crop.shape != (self.size, self.size, 3):
                raise ValueError(f"frame {item.frame}: crop shape {crop.shape}, expected ({self.size}, "
                                 f"{self.size}, 3)")
            self._spool.write(crop.tobytes())
            self._crop_count += 1
        self._columns.add(item)

    def commit(self, fps: float = 0.0, error: str = "") -> FaceEntry:
        """Write the entry atomically and return it (crops read back from disk on demand)."""
        self._spool.close()
        entry = FaceEntry(*self._columns.arrays(), size=self.size, fps=fps, settings=self.settings, error=error)
        temp = _temp_sibling(self.path, "tmp")
        try:
            with zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                entry._write_metadata(archive)
                with archive.open(f"{_CROPS}.npy", "w", force_zip64=True) as member, \
                        open(self._spool_path, "rb") as spool:
                    np.lib.format.write_array_header_1_0(member, _crops_header(self._crop_count, self.size))
                    for block in iter(lambda: spool.read(_HASH_CHUNK), b""):
                        member.write(block)
            os.replace(temp, self.path)
        finally:
            if temp.exists():
                temp.unlink()
            self.discard()
        entry.path = self.path
        return entry

    def discard(self) -> None:
        """Drop the spool file (after commit, or when giving up on this file)."""
        if not self._spool.closed:
            self._spool.close()
        if self._spool_path.exists():
            self._spool_path.unlink()

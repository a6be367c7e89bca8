"""Videos and images in, aligned face crops out: detection, main-face tracking, alignment, crop cache.

``run_faces`` turns a folder into ``<out>/crops`` (a packed store, see ``abaw_ce.data.packed``),
``<out>/frames.csv`` (every video frame: video, frame, face_found) and ``<out>/faces_report.json``.
Bad files are reported with a reason and skipped; the rest of the run goes on.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections import deque
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from abaw_ce.data.image_file import UnreadableImage, read_rgb_array
from abaw_ce.data.packed import PackedWriter
from abaw_ce.data.processes import cores_per_process, launched_processes, mark_done, wait_for_marks
from abaw_ce.errors import InputError, OptionError, require_file
from abaw_ce.faces.align import align_face
from abaw_ce.faces.cache import EntryBuilder, FaceEntry, FrameFaces, cache_key, file_digest
from abaw_ce.faces.detectors import Detection, FaceDetector, OpenCVDetector, make_detector
from abaw_ce.faces.tracking import MAIN_FACE_RULE, MainFaceTracker, TrackedSearch, main_face_index
from abaw_ce.progress import progress_bar
from abaw_ce.video import VIDEO_SUFFIXES, VideoReader, open_video

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
STORE_DIR = "crops"
FRAMES_CSV = "frames.csv"
REPORT_JSON = "faces_report.json"
DEFAULT_BATCH = 32
# Videos at least this long get their own frame progress bar.
FRAME_BAR_MIN_FRAMES = 300
# Under several processes without a cache folder, per-file results are kept here (inside --out) until the run
# ends, so that a killed run restarts only the files it had not finished.
SHARD_WORK_DIR = ".faces-work"
STATUSES = ("ok", "partial", "no_face", "error", "skipped")


# --- reading inputs ----------------------------------------------------------------------------------------

def load_image(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB through the kit's one image reader (any mode, 16-bit included; EXIF
    rotation applied); InputError names the file when it cannot be read."""
    path = Path(path)
    require_file(path, "image")
    try:
        return read_rgb_array(path)
    except UnreadableImage as err:
        raise InputError(path, f"cannot read image: {err.reason}") from None


# --- faces of frames ---------------------------------------------------------------------------------------

def _frame_faces(frame: int, image: np.ndarray, detection: Detection | None, size: int) -> FrameFaces:
    if detection is None:
        return FrameFaces(frame=frame, face_found=False)
    return FrameFaces(frame=frame, face_found=True, box=detection.box, score=detection.score,
                      landmarks=detection.landmarks, crop=align_face(image, detection.landmarks, size))


def process_video(video: str | Path | VideoReader, detector: FaceDetector, size: int = 224,
                  batch_size: int = DEFAULT_BATCH, tracker: MainFaceTracker | None = None,
                  redetect_every: int = 1) -> Iterator[FrameFaces]:
    """Per-frame results (1-based frame numbers) of the main face of a video, decoded batch by batch; with
    ``redetect_every`` > 1, frames after a tracked face are searched near it (``TrackedSearch``).

    When decoding fails part-way, the frames decoded before the failure are yielded first, then the
    InputError is raised.
    """
    if not isinstance(video, VideoReader):
        with open_video(video) as reader:
            yield from process_video(reader, detector, size, batch_size, tracker, redetect_every)
        return
    search = TrackedSearch(detector, redetect_every, tracker)
    batch: list[np.ndarray] = []
    next_frame = 1
    failure: InputError | None = None
    frames = iter(video)
    while True:
        try:
            batch.append(next(frames))
        except StopIteration:
            break
        except InputError as err:
            failure = err
            break
        if len(batch) >= batch_size:
            yield from _track_batch(batch, next_frame, search, size)
            next_frame += len(batch)
            batch = []
    if batch:
        yield from _track_batch(batch, next_frame, search, size)
    if failure is not None:
        raise failure


def _track_batch(images: list[np.ndarray], first_frame: int, search: TrackedSearch, size: int
                 ) -> list[FrameFaces]:
    return [_frame_faces(first_frame + offset, image, chosen, size)
            for offset, (image, chosen) in enumerate(zip(images, search.faces(images)))]


def search_options(search_side: int | None, detector: str | FaceDetector = "auto") -> dict[str, Any]:
    """Detector options for a full search on frames scaled to at most ``search_side`` px on the longer side (the
    OpenCV detector's ``max_side``; "auto" passes it on only when it picks OpenCV); none when not given."""
    if search_side is None:
        return {}
    if not (detector in ("auto", "opencv") or isinstance(detector, OpenCVDetector)):
        raise OptionError(f"a search side applies to the opencv detector, not {detector!r} (insightface scales "
                          "frames to its own input size)")
    if isinstance(search_side, bool) or not isinstance(search_side, (int, np.integer)) or search_side < 32:
        raise OptionError(f"search side must be a whole number of pixels >= 32, got {search_side!r}")
    return {"max_side": int(search_side)}


def image_settings(detector_settings: str) -> str:
    """What decides an image's face: the detector's settings and the rule that picks the main face (part of the
    cache key and of the report)."""
    return f"{detector_settings}:{MAIN_FACE_RULE}"


def video_settings(detector_settings: str, redetect_every: int) -> str:
    """What decides a video's faces: an image's settings, and how often the tracked search re-runs the full
    one (part of the cache key and of the report)."""
    # Eyes followed between frames (where the detector can) changed the tracked search's landmarks, and still
    # faceless scenes are no longer searched again: each made a new key.
    tracked = f":redetect_every={int(redetect_every)}:follow_eyes:still_scenes" if redetect_every != 1 else ""
    return image_settings(detector_settings) + tracked


@dataclass(eq=False)
class ImageFaces:
    """The main face of one image file (``faces`` is None and ``error`` says why when it was unreadable)."""

    path: Path
    faces: FrameFaces | None
    error: str = ""


def process_images(paths: Iterable[str | Path], detector: FaceDetector, size: int = 224,
                   batch_size: int = DEFAULT_BATCH) -> Iterator[ImageFaces]:
    """The largest / most central face of each image, aligned; unreadable images come back with an error."""
    paths = [Path(p) for p in paths]
    for start in range(0, len(paths), batch_size):
        loaded: list[tuple[Path, np.ndarray | None, str]] = []
        for path in paths[start:start + batch_size]:
            try:
                loaded.append((path, load_image(path), ""))
            except InputError as err:
                loaded.append((path, None, err.problem))
        detections = iter(detector.detect_batch([image for _, image, _ in loaded if image is not None]))
        for path, image, error in loaded:
            if image is None:
                yield ImageFaces(path, None, error)
                continue
            found = next(detections)
            index = main_face_index(found, image.shape)
            yield ImageFaces(path, _frame_faces(-1, image, None if index is None else found[index], size))


# --- reports ------------------------------------------------------------------------------------------------

@dataclass
class FileReport:
    """What happened to one input file. status: ok, partial, no_face, error or skipped."""

    path: str
    kind: str  # video, image or other
    status: str = "ok"
    reason: str = ""
    frames: int = 0
    faces_found: int = 0
    detection_rate: float | None = None
    cached: bool = False
    fps: float | None = None


@dataclass
class FacesReport:
    input: str
    output: str
    detector: str
    size: int
    cache_dir: str | None = None
    complete: bool = False
    files: list[FileReport] = field(default_factory=list)

    @property
    def store(self) -> str:
        return str(Path(self.output) / STORE_DIR)

    @property
    def totals(self) -> dict[str, Any]:
        frames = sum(f.frames for f in self.files)
        faces = sum(f.faces_found for f in self.files)
        counts = {status: sum(f.status == status for f in self.files) for status in STATUSES}
        return {"files": len(self.files), **counts,
                "videos": sum(f.kind == "video" for f in self.files),
                "images": sum(f.kind == "image" for f in self.files),
                "cached": sum(f.cached for f in self.files),
                "frames": frames, "faces_found": faces,
                "detection_rate": round(faces / frames, 4) if frames else None}

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "store": self.store,
                "frames_csv": str(Path(self.output) / FRAMES_CSV), "detector": self.detector, "size": self.size,
                "cache_dir": self.cache_dir, "complete": self.complete, "totals": self.totals,
                "files": [asdict(f) for f in self.files]}

    def summary(self) -> str:
        t = self.totals
        rate = "n/a" if t["detection_rate"] is None else f"{100 * t['detection_rate']:.1f}%"
        counts = ", ".join(f"{t[s]} {s.replace('_', ' ')}" for s in STATUSES if t[s] or s == "ok")
        lines = [f"faces: {t['files']} files ({t['videos']} videos, {t['images']} images): {counts}",
                 f"frames: {t['frames']}, face found in {t['faces_found']} ({rate}); {t['cached']} files from cache",
                 f"crops: {self.store}  frames: {Path(self.output) / FRAMES_CSV}  "
                 f"report: {Path(self.output) / REPORT_JSON}"]
        if not self.complete:
            lines.append("the run stopped early: outputs hold the files finished before it stopped")
        for item in self.files:
            if item.status != "ok":
                lines.append(f"  {item.status}: {item.path}: {item.reason}")
        return "\n".join(lines)


# --- the folder run -------------------------------------------------------------------------------------

def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return "other"


def list_inputs(input_path: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Files under input_path (recursively, sorted, hidden ones and excluded folders left out)."""
    if input_path.is_file():
        return [input_path]
    excluded = [p.resolve() for p in exclude]
    found = []
    for path in sorted(input_path.rglob("*")):
        relative = path.relative_to(input_path)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        resolved = path.resolve()
        if any(resolved == e or e in resolved.parents for e in excluded):
            continue
        found.append(path)
    return found


def entry_names(files: Sequence[Path], root: Path) -> dict[Path, str]:
    """Key prefix per file: the relative path without suffix, keeping the suffix where two would clash."""
    def relative(path: Path) -> str:
        return path.name if root.is_file() else path.relative_to(root).as_posix()

    stems = [relative(p).rsplit(".", 1)[0] if "." in p.name else relative(p) for p in files]
    clashes = {s for s in stems if stems.count(s) > 1}
    return {p: (relative(p) if s in clashes else s) for p, s in zip(files, stems)}


def _check_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output folder")
    existing = [name for name in (STORE_DIR, FRAMES_CSV, REPORT_JSON) if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds face outputs ({', '.join(existing)}); pass --overwrite "
                              f"(overwrite=True) to replace them")


def _write_json_atomic(path: Path, data: Any) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)


class _FaceRun:
    """State of one run_faces call: detector, destinations, and per-file processing."""

    def __init__(self, root: Path, detector: FaceDetector, size: int, work_dir: Path, use_cache: bool,
                 batch_size: int, progress: bool, writer: Any, frames_csv: Any, redetect_every: int = 1):
        self.root = root
        self.detector = detector
        self.settings = image_settings(detector.settings)
        self.redetect_every = redetect_every
        self.video_settings = video_settings(detector.settings, redetect_every)
        self.size = size
        self.work_dir = work_dir
        self.use_cache = use_cache
        self.batch_size = batch_size
        self.progress = progress
        self.writer = writer
        self.frames_csv = frames_csv
        # Entries built by several threads: one lock per entry file, so a file seen twice is built once.
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def relative(self, path: Path) -> str:
        return path.name if self.root.is_file() else path.relative_to(self.root).as_posix()

    def process(self, path: Path, name: str, prepared: Callable[[], tuple[FaceEntry, bool]] | None = None
                ) -> FileReport:
        """The file's entry (``prepared``'s, when another thread builds it) stored in the outputs; its report."""
        record = FileReport(path=self.relative(path), kind=file_kind(path))
        if record.kind == "other":
            record.status = "skipped"
            record.reason = f"not an image or video file (suffix {path.suffix or '(none)'!r})"
            log.warning("%s: skipped: %s", record.path, record.reason)
            return record
        entry = None
        try:
            entry, record.cached = prepared() if prepared is not None else self._entry(path, record.kind)
            self._store(entry, record, name)
        except InputError as err:
            record.status, record.reason = "error", err.problem
        except Exception as err:  # one bad file must not end the run; keep its reason
            log.debug("failure on %s", path, exc_info=True)
            record.status, record.reason = "error", f"{type(err).__name__}: {err}"
        finally:
            if not self.use_cache and entry is not None and entry.path is not None:
                entry.path.unlink(missing_ok=True)  # without a cache, entries only stage crops for the store
        if record.status != "ok":
            log.warning("%s: %s: %s", record.path, record.status, record.reason)
        return record

    def entry_path(self, path: Path) -> Path:
        if not self.use_cache:  # a staging file only: no need to hash the input
            return self.work_dir / f"{uuid.uuid4().hex}.npz"
        settings = self.video_settings if file_kind(path) == "video" else self.settings
        return self.work_dir / f"{cache_key(file_digest(path), settings, self.size)}.npz"

    def _entry(self, path: Path, kind: str, entry_path: Path | None = None, detector: FaceDetector | None = None,
               bars: bool = True) -> tuple[FaceEntry, bool]:
        require_file(path, kind)
        entry_path = entry_path or self.entry_path(path)
        with self._locks_guard:
            lock = self._locks.setdefault(entry_path, threading.Lock())
        with lock:
            return self._locked_entry(path, kind, entry_path, detector or self.detector, bars)

    def _locked_entry(self, path: Path, kind: str, entry_path: Path, detector: FaceDetector, bars: bool
                      ) -> tuple[FaceEntry, bool]:
        if self.use_cache and entry_path.is_file():
            try:
                return FaceEntry.load(entry_path), True
            except ValueError as err:
                log.warning("ignoring a damaged cache entry: %s", err)
        if kind == "video":
            return self._video_entry(path, entry_path, detector, bars), False
        result = next(process_images([path], detector, self.size))
        if result.faces is None:
            raise InputError(path, result.error)
        entry = FaceEntry.from_frames([result.faces], self.size, settings=self.settings)
        if self.use_cache:
            entry.save(entry_path)
        return entry, False

    def _video_entry(self, path: Path, entry_path: Path, detector: FaceDetector, bars: bool) -> FaceEntry:
        with open_video(path) as video, EntryBuilder(entry_path, self.size, self.video_settings) as builder:
            error = ""
            show_bar = bars and self.progress and video.expected_frames >= FRAME_BAR_MIN_FRAMES
            with progress_bar(total=video.expected_frames or None, desc=path.name, unit="frame", leave=False,
                              disable=not show_bar) as bar:
                try:
                    for item in process_video(video, detector, self.size, self.batch_size,
                                              redetect_every=self.redetect_every):
                        builder.add(item)
                        bar.update(1)
                except InputError as err:
                    if builder.frame_count == 0:
                        raise
                    error = err.problem  # keep the frames decoded before the damage
            if builder.frame_count == 0:
                raise InputError(path, "no frames could be decoded (truncated or damaged file?)")
            if not error and builder.frame_count < video.expected_frames:
                # Truncated files often just end early, without a decoding error.
                error = (f"the container lists {video.expected_frames} frames but only {builder.frame_count} "
                         f"could be decoded (truncated or damaged file?)")
            return builder.commit(fps=video.fps, error=error)

    def _store(self, entry: FaceEntry, record: FileReport, name: str) -> None:
        record.frames = entry.frame_count
        record.faces_found = entry.face_count
        record.detection_rate = round(entry.face_count / entry.frame_count, 4) if entry.frame_count else None
        face_rows = np.flatnonzero(entry.face_found)
        start = 0
        for crops in entry.iter_crops():
            rows = face_rows[start:start + len(crops)]
            start += len(crops)
            frames = entry.frames[rows]
            keys = [f"{name}/{int(f):05d}" for f in frames] if record.kind == "video" else [name] * len(rows)
            boxes = entry.boxes[rows].astype(np.float64).round(2)
            self.writer.add_batch(
                np.ascontiguousarray(crops), keys, path=[record.path] * len(rows),
                video=[name if record.kind == "video" else ""] * len(rows), frame=frames.tolist(),
                x1=boxes[:, 0].tolist(), y1=boxes[:, 1].tolist(), x2=boxes[:, 2].tolist(),
                y2=boxes[:, 3].tolist(), score=entry.scores[rows].astype(np.float64).round(4).tolist())
        if record.kind == "video":
            record.fps = round(entry.fps, 4)
            self.frames_csv.writerows((name, int(f), int(found)) for f, found in zip(entry.frames, entry.face_found))
        if entry.error:
            record.status = "partial"
            record.reason = entry.error
        elif entry.face_count == 0:
            record.status = "no_face"
            record.reason = (f"no face found in any of the {entry.frame_count} frames" if record.kind == "video"
                             else "no face found")


MAX_FACE_THREADS = 8


def face_threads(threads: int | None, detector: FaceDetector) -> int:
    """Threads building file entries side by side: ``threads``, or by default this process's share of the cores
    (at most MAX_FACE_THREADS); 1 for a detector that cannot give a copy per thread."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise OptionError(f"face threads must be a whole number >= 1, got {threads!r}")
    wanted = int(threads) if threads is not None else min(MAX_FACE_THREADS, cores_per_process(1))
    # Asking for a copy is the only way to know whether there is one (it costs a detector's loading).
    return wanted if wanted > 1 and detector.thread_copy() is not None else 1


def _entries_ahead(run: _FaceRun, files: Sequence[Path], threads: int
                   ) -> Iterator[Callable[[], tuple[FaceEntry, bool]] | None]:
    """For each file in order, what gives its entry: built by ``threads`` threads (each with its own copy of the
    detector), a few files ahead of the caller so that finished entries do not pile up; None where one thread
    is asked for. Leaving early cancels the files not started and waits for the running ones."""
    if threads <= 1:
        yield from (None for _ in files)
        return
    local = threading.local()

    def build(path: Path, kind: str) -> tuple[FaceEntry, bool]:
        if not hasattr(local, "detector"):
            local.detector = run.detector.thread_copy()
        return run._entry(path, kind, detector=local.detector, bars=False)

    pending = deque()
    upcoming = iter(files)
    with ThreadPoolExecutor(threads, thread_name_prefix="faces") as pool:
        try:
            def submit_next() -> None:
                path = next(upcoming, None)
                if path is not None:
                    kind = file_kind(path)
                    pending.append(pool.submit(build, path, kind) if kind in ("video", "image") else None)

            for _ in range(2 * threads):
                submit_next()
            while pending:
                future = pending.popleft()
                submit_next()
                yield future.result if future is not None else None
        finally:
            for future in pending:
                if future is not None:
                    future.cancel()


def share_files(files: Sequence[Path], processes: int) -> list[list[Path]]:
    """Files dealt to processes by size, largest first, each to the process with the fewest bytes so far (a
    long video does not leave one process working alone); each share keeps the input order."""
    sizes = {path: (path.stat().st_size if path.is_file() else 0) for path in files}
    loads, shares = [0] * processes, [[] for _ in range(processes)]
    order = {path: i for i, path in enumerate(files)}
    for path in sorted(files, key=lambda p: (-sizes[p], order[p])):
        chosen = min(range(processes), key=lambda r: (loads[r], r))
        loads[chosen] += sizes[path]
        shares[chosen].append(path)
    return [sorted(share, key=order.__getitem__) for share in shares]


def _faces_of_share(input_path: Path, files: Sequence[Path], rank: int, processes: int, detector: FaceDetector,
                    size: int, work_dir: Path, batch_size: int, progress: bool, redetect_every: int = 1) -> None:
    """One process's share: each file's entry built into ``work_dir`` (files already there are skipped), then
    a marker that this share is done. A file that fails is left to the merging process, which reports it."""
    run = _FaceRun(input_path, detector, size, work_dir, True, batch_size, progress, None, None, redetect_every)
    mine = share_files(files, processes)[rank]
    with progress_bar(mine, desc=f"faces, process {rank + 1}/{processes}", unit="file", disable=not progress) as bar:
        for path in bar:
            if file_kind(path) == "other":
                continue
            try:
                entry_path = run.entry_path(path)
                if entry_path.is_file():
                    continue  # done before this launch (a killed run, or the cache)
                run._entry(path, file_kind(path), entry_path)
            except Exception as err:  # reported by the merge, which meets the same file again
                log.debug("process %d: %s failed (%s); the merge will report it", rank, path, err)
    mark_done(work_dir, "share", rank, f"{len(mine)} files")


def run_faces(input_dir: str | Path, out_dir: str | Path, detector: str | FaceDetector = "auto", size: int = 224,
              cache_dir: str | Path | None = None, overwrite: bool = False, batch_size: int = DEFAULT_BATCH,
              progress: bool = True, detector_options: dict[str, Any] | None = None,
              distributed: bool = False, redetect_every: int = 1, threads: int | None = None
              ) -> FacesReport | None:
    """Aligned main-face crops of every video and image under input_dir, written to out_dir.

    Writes ``out_dir/crops`` (packed store; index columns path, video, frame (-1 for images), x1, y1, x2, y2,
    score), ``out_dir/frames.csv`` and ``out_dir/faces_report.json``; returns the report. With cache_dir,
    each file's results are kept there under its content hash, so a rerun decodes nothing it has seen.

    ``distributed`` and several launched processes (torchrun, ``accelerate launch``): the files are dealt to
    the processes, each builds its files' results in the cache folder (``out_dir/.faces-work`` without one,
    removed at the end), and the main process then writes the outputs from them, in input order: the same
    frames table and byte-identical crops as one process. A killed run, started again, redoes only the files
    without a result. Only the main process returns the report; the others return None.

    ``redetect_every`` k > 1: in a video, a frame after one with the tracked face is searched only near that face,
    with a full search at least every k frames and wherever the local search finds nothing (``TrackedSearch``).

    ``threads``: files whose entries are built side by side in one process, each thread with its own copy of the
    detector (``face_threads``: by default this process's share of the cores); outputs do not depend on it. A
    multi-process launch builds each process's share in one thread.
    """
    input_path = Path(input_dir)
    out_dir = Path(out_dir)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise OptionError(f"crop size must be a positive integer, got {size!r}")
    size = int(size)
    if isinstance(redetect_every, bool) or not isinstance(redetect_every, (int, np.integer)) or redetect_every < 1:
        raise OptionError(f"redetect_every must be a whole number >= 1, got {redetect_every!r}")
    if not input_path.exists():
        raise InputError(input_path, "input folder not found")
    _check_output(out_dir, overwrite)
    files = list_inputs(input_path, exclude=[out_dir] + ([Path(cache_dir)] if cache_dir else []))
    if not files:
        raise InputError(input_path, "no files in this folder")
    face_detector = detector if isinstance(detector, FaceDetector) else make_detector(
        detector, **(detector_options or {}))
    rank, processes = launched_processes() if distributed else (0, 1)
    if processes > 1:
        cv2.setNumThreads(cores_per_process(processes))  # OpenCV would start a thread per core in every process
        shard_dir = Path(cache_dir) if cache_dir is not None else out_dir / SHARD_WORK_DIR
        shard_dir.mkdir(parents=True, exist_ok=True)
        _faces_of_share(input_path, files, rank, processes, face_detector, size, shard_dir, batch_size,
                        progress and rank == 0, redetect_every)
        if rank != 0:
            return None
        wait_for_marks(shard_dir, "share", range(processes))
        report = run_faces(input_path, out_dir, face_detector, size, shard_dir, overwrite, batch_size, progress,
                           redetect_every=redetect_every)
        if cache_dir is None:
            shutil.rmtree(shard_dir, ignore_errors=True)
        report.cache_dir = str(Path(cache_dir).resolve()) if cache_dir else None
        return report

    out_dir.mkdir(parents=True, exist_ok=True)
    report = FacesReport(input=str(input_path.resolve()), output=str(out_dir.resolve()),
                         detector=video_settings(face_detector.settings, redetect_every), size=size,
                         cache_dir=str(Path(cache_dir).resolve()) if cache_dir else None)
    names = entry_names(files, input_path)
    writer = PackedWriter(out_dir / STORE_DIR, size, size, overwrite=overwrite,
                          extra_meta={"made_by": "abaw_ce.faces", "input": report.input,
                                      "detector": report.detector, "template": "arcface 5-point", "size": size})
    frames_temp = out_dir / f".{FRAMES_CSV}.partial"
    work_dir = None
    try:
        if cache_dir is not None:
            work_dir = Path(cache_dir)
            work_dir.mkdir(parents=True, exist_ok=True)
        else:  # entries are still built on disk (bounded memory), then thrown away
            work_dir = Path(tempfile.mkdtemp(prefix=".faces-work-", dir=out_dir))
        with open(frames_temp, "w", newline="", encoding="utf-8") as frames_handle:
            frames_csv = csv.writer(frames_handle)
            frames_csv.writerow(["video", "frame", "face_found"])
            run = _FaceRun(input_path, face_detector, size, work_dir, cache_dir is not None, batch_size,
                           progress, writer, frames_csv, redetect_every)
            with closing(_entries_ahead(run, files, face_threads(threads, face_detector))) as entries, \
                    progress_bar(files, desc="faces", unit="file", disable=not progress) as bar:
                for path, prepared in zip(bar, entries):
                    bar.set_postfix_str(path.name, refresh=False)
                    report.files.append(run.process(path, names[path], prepared))
        report.complete = True
    finally:
        # Publish whatever was finished, even when interrupted: cached entries make a rerun cheap anyway.
        try:
            writer.close()
            if frames_temp.exists():
                os.replace(frames_temp, out_dir / FRAMES_CSV)
            _write_json_atomic(out_dir / REPORT_JSON, report.to_dict())
        finally:
            if cache_dir is None and work_dir is not None:
                shutil.rmtree(work_dir, ignore_errors=True)
    return report

"""Sample-table rows that point at video frames (C-EXPR-DB) turned into rows that point at face crops.

The training datasets read image files; a frame row (``path`` a video, ``frame`` >= 1) gets the aligned crop
of its frame's main face, found by the faces pipeline (detection, tracking, alignment) and saved as a PNG
under ``<out_dir>/<video>-<hash>/<frame>.png``. A video is decoded once; a finished video folder (its
``done.json`` names the video's size, modification time, detector and crop size) is reused by later runs.
Frame rows whose frame shows no face are dropped and counted. Other caches (the C-EXPR-NET AU teacher's
labels) use the same stamped-folder helpers: ``finished_record``, ``fresh_partial``, ``publish_cache``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from abaw_ce.data.processes import process_state
from abaw_ce.data.writers import save_image
from abaw_ce.errors import InputError
from abaw_ce.faces.detectors import make_detector
from abaw_ce.faces.pipeline import process_video, video_settings
from abaw_ce.progress import progress_bar
from abaw_ce.video import VIDEO_SUFFIXES

DONE_FILE = "done.json"


@dataclass
class FrameCropReport:
    videos: int = 0
    reused: int = 0
    frame_rows: int = 0
    without_face: int = 0

    def summary(self) -> str:
        return (f"{self.frame_rows} video-frame row(s) of {self.videos} video(s) ({self.reused} reused from the "
                f"crop folder); {self.without_face} dropped: no face found in their frame")


def is_frame_row(table: pd.DataFrame) -> np.ndarray:
    """Rows whose path is a video and whose frame is a frame number (Aff-Wild2 rows name frame images)."""
    is_video = table["path"].astype(str).str.lower().str.endswith(VIDEO_SUFFIXES).to_numpy(bool)
    return is_video & (table["frame"].to_numpy(np.int64) >= 1)


def _video_dir(out_dir: Path, video: Path) -> Path:
    tag = hashlib.blake2b(str(video.resolve()).encode(), digest_size=4).hexdigest()
    return out_dir / f"{video.stem}-{tag}"


def _stamp(video: Path, detector: str, size: int) -> dict:
    stat = video.stat()
    return {"video": str(video.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "detector": detector, "size": int(size)}


def finished_record(folder: Path, stamp: dict) -> dict | None:
    """The ``done.json`` record of a finished cache folder made from ``stamp`` (JSON types only); None when the
    folder is unfinished, absent or made from something else."""
    done = folder / DONE_FILE
    if not done.is_file():
        return None
    saved = json.loads(done.read_text(encoding="utf-8"))
    return saved if saved.get("stamp") == stamp else None


def fresh_partial(folder: Path) -> Path:
    """An empty ``<folder>.partial`` to build a cache folder in (what a crashed attempt left is removed)."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def publish_cache(partial: Path, folder: Path, record: dict) -> None:
    """Write ``partial``'s ``done.json`` (``record`` holds its ``stamp``) last, then put it in place of
    ``folder``: a folder with a ``done.json`` is always complete."""
    (partial / DONE_FILE).write_text(json.dumps(record) + "\n", encoding="utf-8")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def extract_video_crops(video: Path, folder: Path, detector, detector_name: str, size: int
                        ) -> tuple[set[int], bool]:
    """Save every frame's face crop of one video; returns the frames that have one and whether an earlier
    extraction was reused. ``detector_name``: what made the crops (``video_settings``), part of the folder's
    stamp. Written to a temporary folder, renamed into place when complete."""
    stamp = _stamp(video, detector_name, size)
    saved = finished_record(folder, stamp)
    if saved is not None:
        return set(saved["frames"]), True
    partial = fresh_partial(folder)
    found = []
    for face in process_video(video, detector, size=size):
        if face.face_found:
            save_image(partial / f"{face.frame:06d}.png", face.crop)
            found.append(face.frame)
    publish_cache(partial, folder, {"stamp": stamp, "frames": found})
    return set(found), False


def crop_path(out_dir: Path, video: str | Path, frame: int) -> Path:
    return _video_dir(out_dir, Path(video)) / f"{int(frame):06d}.png"


def frames_to_crops(table: pd.DataFrame, out_dir: str | Path, detector: str = "auto", size: int = 224,
                    progress: bool = True) -> tuple[pd.DataFrame, FrameCropReport]:
    """The table with every frame row pointing at its face crop (``frame`` kept), frame rows without a face
    dropped, other rows untouched (same order)."""
    out_dir = Path(out_dir)
    rows = is_frame_row(table)
    report = FrameCropReport(frame_rows=int(rows.sum()))
    if not rows.any():
        return table, report
    videos = sorted(set(table.loc[rows, "path"].astype(str)))
    report.videos = len(videos)
    face_detector = make_detector(detector)
    # Every setting that changes the crops (detector, main-face rule) stamps the folder: a change re-crops
    detector_name = video_settings(face_detector.settings, 1)
    with_face: dict[str, set[int]] = {}
    for video in progress_bar(videos, desc="video-frame crops", unit="video", disable=not progress):
        path = Path(video)
        if not path.is_file():
            raise InputError(path, "video of labelled frames not found")
        with_face[video], reused = extract_video_crops(path, _video_dir(out_dir, path), face_detector,
                                                       detector_name, size)
        report.reused += int(reused)
    out = table.copy()
    keep = np.ones(len(out), dtype=bool)
    paths = out["path"].astype(str).to_numpy(object)
    frames = out["frame"].to_numpy(np.int64)
    for i in np.flatnonzero(rows):
        if int(frames[i]) in with_face[paths[i]]:
            paths[i] = str(crop_path(out_dir, paths[i], frames[i]))
        else:
            keep[i] = False
    out["path"] = paths
    report.without_face = int((~keep).sum())
    return out[keep].reset_index(drop=True), report


def crop_frame_rows(table: pd.DataFrame, settings, default_dir: Path, stage: str) -> pd.DataFrame:
    """A training stage's call: video-frame rows -> face-crop rows with its ``data.frame_crops`` settings
    (dir, detector, size; the crops go to ``default_dir`` when dir is unset), the outcome printed."""
    if not is_frame_row(table).any():
        return table
    settings = dict(settings or {})  # a run saved before these settings existed has none: the defaults
    out_dir = Path(settings["dir"]) if settings.get("dir") else Path(default_dir)
    with process_state().main_process_first():  # the main process crops, the others reuse its crops
        table, report = frames_to_crops(table, out_dir, detector=str(settings.get("detector", "auto")),
                                        size=int(settings.get("size", 224)))
    print(f"{stage}: {report.summary()}")
    return table

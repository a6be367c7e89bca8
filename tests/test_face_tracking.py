"""The tracked search: a frame after a tracked face is searched near it, with the full search as the fallback."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from abaw_ce.errors import OptionError
from abaw_ce.faces import run_faces
from abaw_ce.faces.detectors import OpenCVDetector
from abaw_ce.faces.pipeline import load_image
from abaw_ce.faces.tracking import TrackedSearch, box_iou
from tests.test_faces import PHOTOS, _background, _face_clip_frames, _paste, _write_video


@pytest.fixture(scope="module")
def detector():
    return OpenCVDetector()


@pytest.fixture(scope="module")
def clip():
    tom = load_image(PHOTOS / "Tom_Hanks_54745.png")
    return _face_clip_frames(tom), tom


def test_the_local_search_finds_the_face_near_its_box_only(detector, clip):
    (frames, _), tom = clip
    frame = frames[0]
    (full,) = detector.detect(frame)
    (near,) = detector.detect_near(frame, full.box)
    assert box_iou(near.box, full.box) > 0.8
    assert np.abs(near.landmarks - full.landmarks).max() < 0.1 * (full.box[2] - full.box[0])
    # Elsewhere in the frame, or a box of another size at the same place: nothing.
    assert detector.detect_near(frame, (200, 150, 260, 210)) == []
    x1, y1, x2, y2 = full.box
    side = x2 - x1
    assert detector.detect_near(frame, (x1 + 0.3 * side, y1 + 0.3 * side, x1 + 0.6 * side, y1 + 0.6 * side)) == []
    # A face touching the frame's edge is still found near its box (the border is padded there too).
    edge = _paste(_background(240, 320), cv2.resize(tom, (128, 128)), 0, 60)
    (at_edge,) = detector.detect(edge)
    assert len(detector.detect_near(edge, at_edge.box)) == 1


def test_tracked_search_keeps_every_face_with_fewer_full_searches(detector, clip):
    (frames, has_face), _ = clip
    every = TrackedSearch(detector, redetect_every=1)
    tracked = TrackedSearch(detector, redetect_every=10)
    full, fast = every.faces(frames), tracked.faces(frames)
    assert [f is not None for f in fast] == [f is not None for f in full]
    assert [f is not None for f in fast] == has_face  # the 4 blank frames: no face, in both
    assert all(box_iou(a.box, b.box) > 0.7 for a, b in zip(full, fast) if a is not None)
    # Full searches: the first frame, the 10th after it, each blank frame, the first face after them.
    assert every.full_searches == 20 and tracked.full_searches == 7
    with pytest.raises(ValueError, match="whole number"):
        TrackedSearch(detector, redetect_every=0)


def test_run_faces_with_the_tracked_search(tmp_path, clip):
    (frames, has_face), _ = clip
    (tmp_path / "in").mkdir()
    _write_video(tmp_path / "in" / "clip.mp4", frames)
    full = run_faces(tmp_path / "in", tmp_path / "full", detector="opencv", size=64, progress=False,
                     cache_dir=tmp_path / "cache")
    fast = run_faces(tmp_path / "in", tmp_path / "fast", detector="opencv", size=64, progress=False,
                     cache_dir=tmp_path / "cache", redetect_every=8)
    assert not fast.files[0].cached  # another setting: its own cache entry
    assert "redetect_every=8" in fast.detector and "redetect_every" not in full.detector
    assert json.loads((tmp_path / "fast" / "faces_report.json").read_text())["detector"] == fast.detector
    found = [pd.read_csv(tmp_path / out / "frames.csv")["face_found"].astype(bool).tolist() for out in ("full", "fast")]
    assert found[0] == found[1] and sum(found[1]) >= 14
    with pytest.raises(OptionError, match="redetect_every"):
        run_faces(tmp_path / "in", tmp_path / "bad", detector="opencv", progress=False, redetect_every=0)

"""The tracked search: a frame after a tracked face is searched near it, with the full search as the fallback."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from abaw_ce.errors import OptionError
from abaw_ce.faces import run_faces
from abaw_ce.faces.detectors import Detection, OpenCVDetector, PreviousFace, _follow_eye_pair
from abaw_ce.faces.pipeline import load_image
from abaw_ce.faces.tracking import TrackedSearch, box_iou, scene_still, scene_thumbnail
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
    # Full searches: the first frame, the 10th after it, the first blank frame (the 3 after it show the same
    # still scene), the first face after them.
    assert every.full_searches == 20 and tracked.full_searches == 4
    with pytest.raises(ValueError, match="whole number"):
        TrackedSearch(detector, redetect_every=0)


def test_a_still_faceless_scene_is_not_searched_again_until_it_changes(detector, clip):
    (frames, _), tom = clip
    rng = np.random.default_rng(0)
    blank = frames[12]

    def noisy(image: np.ndarray) -> np.ndarray:  # sensor noise and compression: the same scene
        return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)

    assert scene_still(scene_thumbnail(blank), scene_thumbnail(noisy(blank)))
    # A small face (the smallest searched for: 5 % of the shorter side, 12 px here) changes the scene.
    small = _paste(blank, cv2.resize(tom, (12, 12), interpolation=cv2.INTER_AREA), 150, 100)
    assert not scene_still(scene_thumbnail(blank), scene_thumbnail(small))
    # 25 still faceless frames, then the face: full searches on the first blank frame, every 10th after it
    # (a face the scene test missed is found within k frames), and the face's first frame, which is found.
    video = [frames[0]] + [noisy(blank) for _ in range(25)] + frames[16:18]
    search = TrackedSearch(detector, redetect_every=10)
    found = search.faces(video)
    assert [f is not None for f in found] == [True] + [False] * 25 + [True, True]
    assert search.full_searches == 1 + 3 + 1
    # Without the still-scene test every blank frame would be searched.
    assert TrackedSearch(detector, redetect_every=1).faces(video)[1:26] == [None] * 25


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


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    return cv2.warpAffine(image, np.float32([[1, 0, dx], [0, 1, dy]]), image.shape[1::-1], flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def test_eyes_found_on_one_frame_are_followed_to_the_next(detector, clip):
    (frames, _), _ = clip
    frame = frames[0]
    (before,) = detector.detect(frame)
    assert before.eyes_found
    for dx, dy in ((3, 2), (-1.5, 0.5)):
        moved = _shifted(frame, dx, dy)
        (near,) = detector.detect_near(moved, before.box, PreviousFace(frame, before))
        assert near.eyes_found
        # The eyes move with the face, to a fraction of a pixel; the cascade's own eyes move by whole pixels.
        assert np.abs(near.landmarks[:2] - before.landmarks[:2] - [dx, dy]).max() < 0.35
    # The previous frame does not show these eyes (another picture there): the eye search runs instead.
    (searched,) = detector.detect_near(frame, before.box)
    other = np.full_like(frame, 128)
    (fallback,) = detector.detect_near(frame, before.box, PreviousFace(other, before))
    np.testing.assert_array_equal(fallback.landmarks, searched.landmarks)
    # A previous face without found eyes gives nothing to follow.
    guessed = Detection(box=before.box, score=before.score, landmarks=before.landmarks, eyes_found=False)
    (unfollowed,) = detector.detect_near(_shifted(frame, 3, 2), before.box, PreviousFace(frame, guessed))
    (plain,) = detector.detect_near(_shifted(frame, 3, 2), before.box)
    np.testing.assert_array_equal(unfollowed.landmarks, plain.landmarks)


def test_tracked_search_follows_the_eyes_between_full_searches(detector, clip):
    (frames, _), _ = clip
    every, tracked = TrackedSearch(detector, redetect_every=1).faces(frames), \
        TrackedSearch(detector, redetect_every=10).faces(frames)
    pairs = [(a, b) for a, b in zip(every, tracked) if a is not None]
    assert all(b.eyes_found for _, b in pairs)
    distance = np.mean([np.hypot(*(a.landmarks[1] - a.landmarks[0])) for a, _ in pairs])
    assert max(np.abs(a.landmarks[:2] - b.landmarks[:2]).max() for a, b in pairs) < 0.1 * distance


def test_followed_eyes_must_sit_in_the_box(detector, clip):
    (frames, _), _ = clip
    (face,) = detector.detect(frames[0])
    gray = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    box = np.array(face.box)
    same = _follow_eye_pair(gray, gray, face.landmarks[:2], box)
    np.testing.assert_allclose(same, face.landmarks[:2], atol=0.05)  # a frame matched with itself: no motion
    side = box[2] - box[0]
    assert _follow_eye_pair(gray, gray, face.landmarks[:2], box + [side, 0, side, 0]) is None  # another face's box
    assert _follow_eye_pair(gray, gray, face.landmarks[:2], box + [0, -side, 0, -side]) is None

"""Which face is "the" face: the most prominent one in an image, and the same person across video frames."""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from abaw_ce.faces.detectors import Detection, FaceDetector, PreviousFace

# A face at the image corner keeps this share of its area as prominence; one at the centre keeps all of it.
CORNER_WEIGHT = 0.25
# A scene "still" since a faceless full search: every cell of STILL_CELL x the shorter side moved its mean grey
# level by at most STILL_MAX_CHANGE. The smallest face searched for (5 % of the shorter side) covers whole cells.
# On the synthetic test videos still faceless stretches changed cells by <= 8 levels (noise), and a face coming
# back changed some cell by >= 80.
STILL_CELL = 0.025
STILL_MAX_CHANGE = 10
# The rule that picks the main face, part of the faces cache key (abaw_ce.faces.pipeline): a face whose eyes the
# detector found comes before one without. Haar cascades fire on background blobs, which show no eye pair; on a
# synthetic test video such a blob, larger and more central, had been tracked instead of the face in every frame.
MAIN_FACE_RULE = "main_face=eyes_first"


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def prominence(detection: Detection, image_shape: Sequence[int]) -> float:
    """Box area weighted by closeness to the image centre (1 at the centre, CORNER_WEIGHT at a corner)."""
    height, width = image_shape[:2]
    cx, cy = detection.center
    half_diagonal = math.hypot(width / 2, height / 2) or 1.0
    distance = min(1.0, math.hypot(cx - width / 2, cy - height / 2) / half_diagonal)
    return detection.area * (1.0 - (1.0 - CORNER_WEIGHT) * distance)


def main_face_index(detections: Sequence[Detection], image_shape: Sequence[int]) -> int | None:
    """Index of the main face, or None when there are none: faces with found eyes first (``MAIN_FACE_RULE``),
    then the largest / most central (detectors that do not look for eyes are ranked by prominence alone)."""
    if not detections:
        return None
    return max(range(len(detections)), key=lambda i: (detections[i].eyes_found, prominence(detections[i], image_shape)))


class MainFaceTracker:
    """Follows one face through a video.

    The first frame with faces picks the main one (``main_face_index``); every later frame picks the detection
    that overlaps the last tracked box most (IoU >= iou_threshold). Frames where none does return None (no face
    for this frame, even when other people are visible); after ``max_missed`` such frames in a row the track
    is considered lost and the main face is picked again. A track that has never shown eyes gives way to a face
    with found eyes as soon as one is detected: it was likely a false face picked when the real one was missed.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5):
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.reset()

    def reset(self) -> None:
        self.last_box: tuple[float, float, float, float] | None = None
        self.missed = 0
        self.eyes_seen = False  # whether the current track has shown eyes in any frame

    @property
    def lost(self) -> bool:
        return self.last_box is None or self.missed >= self.max_missed

    def update(self, detections: Sequence[Detection], image_shape: Sequence[int]) -> Detection | None:
        """The tracked face among this frame's detections, or None."""
        chosen: Detection | None = None
        if detections:
            repick = self.lost or (not self.eyes_seen and any(d.eyes_found for d in detections))
            if repick:
                chosen = detections[main_face_index(detections, image_shape)]
                if self.last_box is not None and box_iou(self.last_box, chosen.box) < self.iou_threshold:
                    self.eyes_seen = False  # a new track
            else:
                overlaps = [box_iou(self.last_box, d.box) for d in detections]
                best = int(np.argmax(overlaps))
                if overlaps[best] >= self.iou_threshold:
                    chosen = detections[best]
        if chosen is None:
            if self.last_box is not None:
                self.missed += 1
            return None
        self.last_box = chosen.box
        self.missed = 0
        self.eyes_seen = self.eyes_seen or chosen.eyes_found
        return chosen


def scene_thumbnail(image: np.ndarray) -> np.ndarray:
    """Mean grey level of each cell (STILL_CELL of the shorter side) of an RGB image, as int16."""
    height, width = image.shape[:2]
    cell = max(1.0, STILL_CELL * min(height, width))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    size = (max(1, round(width / cell)), max(1, round(height / cell)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.int16)


def scene_still(before: np.ndarray, now: np.ndarray) -> bool:
    """Whether two ``scene_thumbnail``s show the same scene (no cell changed by more than STILL_MAX_CHANGE)."""
    return before.shape == now.shape and int(np.abs(now - before).max()) <= STILL_MAX_CHANGE


class TrackedSearch:
    """The tracked face of each frame of a video, found with less detection work.

    With ``redetect_every`` k > 1, a frame that follows one where the face was tracked is searched only near that
    face (``FaceDetector.detect_near``), and a full search runs at least every k frames (a new, more prominent face
    is then seen) and on every frame the local search leaves without a face, so a face that moved far or came
    back is looked for on the whole frame as before. k = 1 runs the full search on every frame.

    With k > 1, a full search that finds no face at all also skips the following frames while their scene stays
    still (``scene_still``), up to the next forced full search: a face coming in changes the scene, and nothing
    else could make a search of the same scene answer differently.
    """

    def __init__(self, detector: FaceDetector, redetect_every: int = 1, tracker: MainFaceTracker | None = None):
        if isinstance(redetect_every, bool) or int(redetect_every) != redetect_every or redetect_every < 1:
            raise ValueError(f"redetect_every must be a whole number >= 1, got {redetect_every!r}")
        self.detector = detector
        self.redetect_every = int(redetect_every)
        self.tracker = tracker if tracker is not None else MainFaceTracker()
        self.since_full = 0  # frames since the last full search
        self.previous: PreviousFace | None = None
        self.faceless_scene: np.ndarray | None = None  # thumbnail of the last full search that found nothing
        self.full_searches = 0

    def faces(self, images: Sequence[np.ndarray]) -> list[Detection | None]:
        """The tracked face (or None) of each of these consecutive frames."""
        if self.redetect_every == 1:
            self.full_searches += len(images)
            return [self.tracker.update(found, image.shape)
                    for image, found in zip(images, self.detector.detect_batch(images))]
        chosen = []
        for image in images:
            found: list[Detection] = []
            scene = None
            if self.previous is not None and self.since_full < self.redetect_every:
                found = self.detector.detect_near(image, self.previous.face.box, self.previous)
            if found:
                self.since_full += 1
            elif (self.faceless_scene is not None and self.since_full < self.redetect_every
                  and scene_still(self.faceless_scene, scene := scene_thumbnail(image))):
                self.since_full += 1  # the same faceless scene: the search would find nothing again
            else:
                found = self.detector.detect(image)
                self.since_full, self.full_searches = 1, self.full_searches + 1
                self.faceless_scene = None if found else (scene if scene is not None else scene_thumbnail(image))
            face = self.tracker.update(found, image.shape)
            # Only a face of the frame just before is searched near (and its eyes followed).
            self.previous = PreviousFace(image, face) if face is not None else None
            chosen.append(face)
        return chosen

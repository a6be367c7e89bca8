"""Which face is "the" face: the most prominent one in an image, and the same person across video frames."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from abaw_ce.faces.detectors import Detection, FaceDetector, PreviousFace

# A face at the image corner keeps this share of its area as prominence; one at the centre keeps all of it.
CORNER_WEIGHT = 0.25


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
    """Index of the largest / most central detection, or None when there are none."""
    if not detections:
        return None
    return int(np.argmax([prominence(d, image_shape) for d in detections]))


class MainFaceTracker:
    """Follows one face through a video.

    The first frame with faces picks the most prominent one; every later frame picks the detection that
    overlaps the last tracked box most (IoU >= iou_threshold). Frames where none does return None (no face
    for this frame, even when other people are visible); after ``max_missed`` such frames in a row the track
    is considered lost and the most prominent face is picked again.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5):
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.reset()

    def reset(self) -> None:
        self.last_box: tuple[float, float, float, float] | None = None
        self.missed = 0

    @property
    def lost(self) -> bool:
        return self.last_box is None or self.missed >= self.max_missed

    def update(self, detections: Sequence[Detection], image_shape: Sequence[int]) -> Detection | None:
        """The tracked face among this frame's detections, or None."""
        chosen: Detection | None = None
        if detections:
            if self.lost:
                chosen = detections[main_face_index(detections, image_shape)]
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
        return chosen


class TrackedSearch:
    """The tracked face of each frame of a video, found with less detection work.

    With ``redetect_every`` k > 1, a frame that follows one where the face was tracked is searched only near that
    face (``FaceDetector.detect_near``), and a full search runs at least every k frames (a new, more prominent face
    is then seen) and on every frame the local search leaves without a face, so a face that moved far or came
    back is looked for on the whole frame as before. k = 1 runs the full search on every frame.
    """

    def __init__(self, detector: FaceDetector, redetect_every: int = 1, tracker: MainFaceTracker | None = None):
        if isinstance(redetect_every, bool) or int(redetect_every) != redetect_every or redetect_every < 1:
            raise ValueError(f"redetect_every must be a whole number >= 1, got {redetect_every!r}")
        self.detector = detector
        self.redetect_every = int(redetect_every)
        self.tracker = tracker if tracker is not None else MainFaceTracker()
        self.since_full = 0  # frames since the last full search
        self.previous: PreviousFace | None = None
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
            if self.previous is not None and self.since_full < self.redetect_every:
                found = self.detector.detect_near(image, self.previous.face.box, self.previous)
            if found:
                self.since_full += 1
            else:
                found = self.detector.detect(image)
                self.since_full, self.full_searches = 1, self.full_searches + 1
            face = self.tracker.update(found, image.shape)
            # Only a face of the frame just before is searched near (and its eyes followed).
            self.previous = PreviousFace(image, face) if face is not None else None
            chosen.append(face)
        return chosen

"""Face detectors behind one interface: insightface SCRFD (ONNX), an offline OpenCV Haar fallback, or none.

Every detector returns ``Detection`` objects with a box and 5 landmarks (left eye, right eye, nose tip, left
mouth corner, right mouth corner; "left" = image-left) in the coordinates of the RGB image it was given.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from abaw_ce.errors import OptionError
from abaw_ce.faces.align import TEMPLATE_SIZE, arcface_template

log = logging.getLogger(__name__)

DETECTOR_NAMES = ("auto", "insightface", "opencv", "none")
INSIGHTFACE_DIR_ENV = "ABAW_CE_INSIGHTFACE_DIR"
DEFAULT_INSIGHTFACE_DIR = "~/.insightface/models/buffalo_l"
INSIGHTFACE_MODEL_FILE = "det_10g.onnx"
INSIGHTFACE_MODEL_PREFIXES = ("det_", "scrfd")

# Where the ArcFace template sits inside an OpenCV Haar frontal-face box: landmarks =
# box origin + box size * (SCALE * template/112 + (SHIFT_X, SHIFT_Y)). Measured on insightface's shipped
# photos: Tom_Hanks_54745.png (an ArcFace-aligned crop, so its landmarks are the template itself; detected
# with 20 px of replicated border) and the three near-frontal faces of t1.jpg (landmarks marked by hand on
# a 10% grid). Per-face scales were 1.04-1.13 and vertical shifts -0.08..-0.14 of the box; the mean is
# used, centred horizontally because the Haar cascade is trained on left-right symmetric faces.
HAAR_TEMPLATE_SCALE = 1.08
HAAR_TEMPLATE_SHIFT_Y = -0.11


class DetectorUnavailable(OptionError, RuntimeError):
    """The requested detector cannot run here (model file missing, cascade unreadable, ...): the user fixes it
    by installing the model or choosing another --detector. Still a RuntimeError for code that catches one."""


class DetectorModelNotFound(DetectorUnavailable):
    """No detector model file where the kit looked (as opposed to a file that is there but unusable)."""


@dataclass(eq=False)
class Detection:
    """One face: box (x1, y1, x2, y2), score, and (5, 2) float32 landmarks, all in image pixels; ``eyes_found``:
    the two eye points were located on the image (not only estimated from the box)."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    eyes_found: bool = False

    def __post_init__(self) -> None:
        self.box = tuple(float(v) for v in np.asarray(self.box, dtype=np.float64).reshape(4))
        self.score = float(self.score)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(5, 2)

    @property
    def width(self) -> float:
        return max(0.0, self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return max(0.0, self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {got}")
    return image


@dataclass(frozen=True, eq=False)
class PreviousFace:
    """The tracked face of the frame before, with that frame (RGB): what a local search may reuse."""

    image: np.ndarray
    face: Detection


class FaceDetector:
    """Base class: ``detect`` one RGB image, ``detect_batch`` several; ``settings`` names what changes output."""

    name = "base"

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        raise NotImplementedError

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        return [self.detect(image) for image in images]

    def detect_near(self, image_rgb: np.ndarray, box: Sequence[float], previous: PreviousFace | None = None
                    ) -> list[Detection]:
        """Faces of about the size of ``box`` (x1, y1, x2, y2) around it, as a video tracker needs from one frame
        to the next (``previous``: that frame and its face, when the caller has them). Detectors without a
        cheaper local search run the full one."""
        return self.detect(image_rgb)

    def thread_copy(self) -> FaceDetector | None:
        """A detector giving the same detections that another thread may use alongside this one, or None when
        this detector cannot say (it then runs in one thread)."""
        return None

    @property
    def settings(self) -> str:
        """Every option that changes detections, as one string (part of the crop cache key)."""
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.settings}>"


# --- insightface ------------------------------------------------------------------------------------------

def insightface_model_dir(model_dir: str | Path | None = None) -> tuple[Path, str]:
    """The one folder searched for the detector model, and why it was chosen (option, env var or default)."""
    if model_dir is not None:
        return Path(model_dir).expanduser(), "the model_dir option"
    if os.environ.get(INSIGHTFACE_DIR_ENV):
        return Path(os.environ[INSIGHTFACE_DIR_ENV]).expanduser(), f"${INSIGHTFACE_DIR_ENV}"
    return Path(DEFAULT_INSIGHTFACE_DIR).expanduser(), "the default location"


def find_insightface_model(model_dir: str | Path | None = None) -> Path:
    """Path of the SCRFD/RetinaFace ONNX file, or DetectorUnavailable saying where it was looked for."""
    directory, origin = insightface_model_dir(model_dir)
    if directory.is_file() and directory.suffix.lower() == ".onnx":  # a model file named directly
        return directory
    if (directory / INSIGHTFACE_MODEL_FILE).is_file():
        return directory / INSIGHTFACE_MODEL_FILE
    if directory.is_dir():
        candidates = sorted(p for p in directory.glob("*.onnx")
                            if p.is_file() and p.name.lower().startswith(INSIGHTFACE_MODEL_PREFIXES))
        if candidates:
            return candidates[0]
    state = "is empty of detector models" if directory.is_dir() else "does not exist"
    raise DetectorModelNotFound(
        f"insightface face detector model not found: searched {directory} (from {origin}; it {state}) for "
        f"{INSIGHTFACE_MODEL_FILE} or *.onnx files named det_* / scrfd*. Nothing is downloaded: get "
        f"buffalo_l.zip from the insightface model zoo (https://github.com/deepinsight/insightface/tree/master/"
        f"model_zoo), put its {INSIGHTFACE_MODEL_FILE} into {directory} (or into a folder named by "
        f"${INSIGHTFACE_DIR_ENV} or the model_dir option), or use --detector opencv.")


# What insightface's SCRFD decoder reads from each stride's outputs: one row per anchor of these values.
SCRFD_OUTPUT_KINDS = (("scores", 1), ("box distances", 4), ("keypoints", 10))


def _probe_size(model: Any, input_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) the model will run at: its own when the file fixes it, else the detector's option."""
    shape = model.session.get_inputs()[0].shape
    fixed = [dim for dim in shape[2:4] if isinstance(dim, int) and dim > 0]
    return (shape[3], shape[2]) if len(shape) == 4 and len(fixed) == 2 else input_size


def check_scrfd_outputs(model: Any, model_path: Path, input_size: tuple[int, int]) -> None:
    """DetectorUnavailable naming the file unless its outputs are what insightface's SCRFD decoder reads.

    The model runs once on a blank input: a foreign file otherwise loads fine and fails deep inside insightface
    at the first frame, once per input file. Uses the decoder's own table (strides, anchors per location).
    """
    if not hasattr(model, "fmc"):  # insightface leaves its stride table unset for other output counts
        raise DetectorUnavailable(
            f"{model_path} has {len(model.session.get_outputs())} outputs; insightface's SCRFD decodes 6, 9, 10 "
            f"or 15 (scores, box distances and optionally 5 keypoints, at 3 or 5 strides)")
    width, height = _probe_size(model, input_size)
    blank = np.zeros((1, 3, height, width), dtype=getattr(model, "input_dtype", np.float32))
    try:
        values = model.session.run(None, {model.input_name: blank})
    except Exception as err:  # onnxruntime's errors have no common base class
        raise DetectorUnavailable(f"cannot run the insightface detector {model_path} on a 1x3x{height}x{width} "
                                  f"input: {type(err).__name__}: {err}") from err
    for index, (output, value) in enumerate(zip(model.session.get_outputs(), values)):
        kind, per_anchor = SCRFD_OUTPUT_KINDS[index // model.fmc]
        stride = model._feat_stride_fpn[index % model.fmc]
        rows = (height // stride) * (width // stride) * model._num_anchors
        shape = tuple(np.shape(value[0] if model.batched else value))
        if shape != (rows, per_anchor):
            raise DetectorUnavailable(
                f"{model_path}: output {index} ({output.name!r}, {kind} at stride {stride}) has shape {shape}; "
                f"insightface's SCRFD expected ({rows}, {per_anchor}) for a {width}x{height} input: {per_anchor} "
                f"value(s) for each of {model._num_anchors} anchors at each of its "
                f"{height // stride}x{width // stride} locations")


class InsightFaceDetector(FaceDetector):
    """SCRFD (or RetinaFace) ONNX model through insightface's model zoo; the accurate detector."""

    name = "insightface"

    def __init__(self, model_dir: str | Path | None = None, ctx_id: int | None = None,
                 input_size: tuple[int, int] = (640, 640), det_thresh: float = 0.5):
        self.model_path = find_insightface_model(model_dir)
        import onnxruntime
        from insightface.model_zoo import get_model
        from insightface.model_zoo.scrfd import SCRFD

        if ctx_id is None:  # first GPU when onnxruntime can use one, else CPU
            ctx_id = 0 if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else -1
        self.ctx_id = int(ctx_id)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.det_thresh = float(det_thresh)
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.ctx_id >= 0:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.ctx_id}))
        try:
            model = get_model(str(self.model_path), providers=providers)
        except Exception as err:  # a damaged or foreign ONNX file: say which one, not a deep traceback
            raise DetectorUnavailable(f"cannot load the insightface detector {self.model_path}: "
                                      f"{type(err).__name__}: {err}") from err
        if model is None or not hasattr(model, "detect"):
            raise DetectorUnavailable(f"{self.model_path} is not a face detection model (expected SCRFD or "
                                      f"RetinaFace, e.g. buffalo_l's {INSIGHTFACE_MODEL_FILE})")
        model.prepare(ctx_id=self.ctx_id, input_size=self.input_size, det_thresh=self.det_thresh)
        if isinstance(model, SCRFD):  # what insightface's model zoo makes of every detector file it routes
            check_scrfd_outputs(model, self.model_path, self.input_size)
        self.model = model

    @property
    def settings(self) -> str:
        size = self.model_path.stat().st_size if self.model_path.exists() else 0
        return (f"insightface:{self.model_path.name}:{size}:input={self.input_size[0]}x{self.input_size[1]}"
                f":thresh={self.det_thresh}")

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        image_rgb = check_image(image_rgb)
        # insightface models take OpenCV's BGR order.
        bgr = np.ascontiguousarray(image_rgb[..., ::-1])
        boxes, keypoints = self.model.detect(bgr, input_size=self.input_size)
        detections = []
        for i, row in enumerate(np.asarray(boxes).reshape(-1, 5)):
            if keypoints is not None and len(keypoints) > i:
                landmarks = np.asarray(keypoints[i], dtype=np.float32).reshape(5, 2)
            else:  # a model without keypoints: place the template in the box
                landmarks = landmarks_in_box(row[:4])
            detections.append(Detection(box=row[:4], score=row[4], landmarks=landmarks))
        return detections


# --- OpenCV Haar cascades -----------------------------------------------------------------------------

_HAAR_FACE_FILES = {"default": "haarcascade_frontalface_default.xml", "alt2": "haarcascade_frontalface_alt2.xml",
                    "alt": "haarcascade_frontalface_alt.xml"}
_HAAR_EYE_FILE = "haarcascade_eye.xml"
# Cascades see 24x24 (faces) and 20x20 (eyes) windows; smaller faces are unlikely to be found at all.
_MIN_HAAR_FACE = 24
# Eye search: upscale small faces to this width so eyes exceed the eye cascade's 20 px window.
_EYE_SEARCH_FACE_WIDTH = 120
# Search near a tracked face: the region is the box grown by this share of its side on every side (faces move
# less than that between frames), and faces between 1/ratio and ratio times its side are looked for.
NEAR_MARGIN = 0.5
NEAR_SIZE_RATIO = 1.3
# Following eyes between frames: the matched patch's side and how far an eye may move, in eye distances, and
# the normalised correlation below which the eye search runs instead.
EYE_FOLLOW_PATCH = 0.6
EYE_FOLLOW_REACH = 0.3
EYE_FOLLOW_MIN_MATCH = 0.7


@lru_cache(maxsize=1)
def _unit_box_landmarks() -> np.ndarray:
    template = arcface_template(TEMPLATE_SIZE) / TEMPLATE_SIZE
    shift_x = 0.5 - HAAR_TEMPLATE_SCALE * 0.5  # template centred on x = 0.5 (it is symmetric about 56/112)
    return (HAAR_TEMPLATE_SCALE * template + np.array([shift_x, HAAR_TEMPLATE_SHIFT_Y])).astype(np.float32)


def landmarks_in_box(box: Sequence[float]) -> np.ndarray:
    """Average-face 5 landmarks for a Haar-style face box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (np.array([x1, y1]) + _unit_box_landmarks() * np.array([x2 - x1, y2 - y1])).astype(np.float32)


def _move_to_eyes(landmarks: np.ndarray, eyes: np.ndarray) -> np.ndarray:
    """The similarity transform that takes the estimated eyes onto the found eyes, applied to all 5 points."""
    # Points as complex numbers: a two-point similarity is z -> a*z + b.
    estimated = landmarks[:2, 0] + 1j * landmarks[:2, 1]
    found = eyes[:, 0] + 1j * eyes[:, 1]
    a = (found[1] - found[0]) / (estimated[1] - estimated[0])
    b = found[0] - a * estimated[0]
    moved = a * (landmarks[:, 0] + 1j * landmarks[:, 1]) + b
    return np.stack([moved.real, moved.imag], axis=1).astype(np.float32)


def _load_cascade(file_name: str) -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, file_name)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise DetectorUnavailable(f"cannot load the OpenCV cascade {path}; reinstall opencv-python")
    return cascade


class OpenCVDetector(FaceDetector):
    """Haar frontal-face cascade plus an eye cascade: offline, CPU-only, frontal faces only.

    Landmarks come from the box (average face proportions); when both eyes are found inside the upper part
    of the box, all 5 points are moved by the similarity that puts the estimated eyes on the found ones,
    which recovers in-plane head roll (it halved the landmark error on rotated test faces). Scores are the
    cascade's stage weight through a sigmoid: ordinal only.

    Defaults (scaleFactor 1.1, minNeighbors 5, frames searched at <= 800 px): on insightface's t1.jpg and on
    pastes of its Tom Hanks crop they found as many faces, with as few false ones, as a finer 1.05 / 6 search
    at about 1.5x its speed; fewer neighbours let hands and fabric through.

    The search runs on the globally equalised frame; when it finds nothing, it runs once more on a locally
    equalised one (CLAHE). A dark face before a bright or similar-toned background keeps little contrast under
    global equalisation: on one synthetic world the first search alone found 79 % of the visible faces, missing
    whole videos of dark-skinned identities, and the second search brought that to 98 % with no false face.
    """

    name = "opencv"

    def __init__(self, cascade: str = "default", scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_face_fraction: float = 0.05, max_side: int | None = 800, pad_fraction: float = 0.1,
                 find_eyes: bool = True, local_contrast: bool = True):
        if cascade not in _HAAR_FACE_FILES:
            raise ValueError(f"unknown cascade {cascade!r}; expected one of {', '.join(_HAAR_FACE_FILES)}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        self.cascade = cascade
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_face_fraction = float(min_face_fraction)
        self.max_side = int(max_side) if max_side else None
        self.pad_fraction = float(pad_fraction)
        self.find_eyes = bool(find_eyes)
        self.local_contrast = bool(local_contrast)
        self._clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)) if self.local_contrast else None
        self._faces = _load_cascade(_HAAR_FACE_FILES[cascade])
        self._eyes = _load_cascade(_HAAR_EYE_FILE) if self.find_eyes else None

    def thread_copy(self) -> OpenCVDetector:
        # A cascade keeps per-search buffers: each thread gets its own.
        return OpenCVDetector(self.cascade, self.scale_factor, self.min_neighbors, self.min_face_fraction,
                              self.max_side, self.pad_fraction, self.find_eyes, self.local_contrast)

    @property
    def settings(self) -> str:
        return (f"opencv:{self.cascade}:sf={self.scale_factor}:mn={self.min_neighbors}:"
                f"min={self.min_face_fraction}:max_side={self.max_side}:pad={self.pad_fraction}:"
                f"eyes={self.find_eyes}:box={HAAR_TEMPLATE_SCALE},{HAAR_TEMPLATE_SHIFT_Y}"
                + (":clahe=2,8" if self.local_contrast else ""))

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        image_rgb = check_image(image_rgb)
        height, width = image_rgb.shape[:2]
        gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)
        # Large frames are searched downscaled: Haar cost grows with pixels, faces stay findable.
        scale = 1.0
        if self.max_side and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            gray = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                              interpolation=cv2.INTER_AREA)
        short_side = min(gray.shape)
        min_face = max(_MIN_HAAR_FACE, round(self.min_face_fraction * short_side))
        # A replicated border lets the cascade frame faces that touch the image edge (tight crops).
        pad = round(self.pad_fraction * short_side)
        if min(gray.shape) + 2 * pad < min_face:
            return []
        return self._faces_in(gray, (pad,) * 4, (min_face, 0), np.array([pad, pad], np.float64), scale)

    def detect_near(self, image_rgb: np.ndarray, box: Sequence[float], previous: PreviousFace | None = None
                    ) -> list[Detection]:
        """The search restricted to a region around ``box`` and to faces within NEAR_SIZE_RATIO of its size.

        The full search scans every window size from the smallest face up on the whole frame; near a known face
        only a few sizes over a small region are left, about an order of magnitude less work. The region is
        searched at full resolution, equalised on its own. When ``previous`` has found eyes, each is followed
        from that frame by matching its surroundings (``_follow_eye_pair``) instead of searching for eyes
        again, which cost most of a local search; the eye search runs where that match fails.
        """
        image_rgb = check_image(image_rgb)
        height, width = image_rgb.shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box)
        side = max(x2 - x1, y2 - y1)
        if not side > 0:
            return self.detect(image_rgb)
        margin = NEAR_MARGIN * side
        left, top = max(0, math.floor(x1 - margin)), max(0, math.floor(y1 - margin))
        right, bottom = min(width, math.ceil(x2 + margin)), min(height, math.ceil(y2 + margin))
        if right - left < _MIN_HAAR_FACE or bottom - top < _MIN_HAAR_FACE:
            return self.detect(image_rgb)

        def region_gray(rgb: np.ndarray) -> np.ndarray:
            return cv2.cvtColor(np.ascontiguousarray(rgb[top:bottom, left:right]), cv2.COLOR_RGB2GRAY)

        # Replicated border only where the region meets the frame's edge, as the full search pads the frame.
        pad = round(self.pad_fraction * min(height, width))
        sides = tuple(pad if touches else 0 for touches in (top == 0, bottom == height, left == 0, right == width))
        min_face = max(_MIN_HAAR_FACE, math.floor(side / NEAR_SIZE_RATIO))
        max_face = max(min_face + 1, math.ceil(side * NEAR_SIZE_RATIO))
        origin = np.array([sides[2] - left, sides[0] - top], np.float64)
        eyes_before = None
        if (self._eyes is not None and previous is not None and previous.face.eyes_found
                and previous.image.shape == image_rgb.shape):
            eyes_before = (region_gray(previous.image), previous.face.landmarks[:2] + origin)
        return self._faces_in(region_gray(image_rgb), sides, (min_face, max_face), origin, 1.0, eyes_before)

    def _faces_in(self, gray: np.ndarray, pads: tuple[int, int, int, int], sizes: tuple[int, int],
                  origin: np.ndarray, scale: float, eyes_before: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> list[Detection]:
        """Faces of a grey search image, equalised then given a replicated border of ``pads`` (top, bottom, left,
        right); ``sizes``: smallest and largest face side (0: no largest). A point p of the padded image is
        (p - origin) / scale in the caller's pixels. ``eyes_before``: the previous frame's search image (same
        region, unpadded) and its face's two eye points in padded coordinates, for eyes to be followed."""
        def padded(image: np.ndarray) -> np.ndarray:
            return cv2.copyMakeBorder(image, *pads, cv2.BORDER_REPLICATE) if any(pads) else image

        # Evens out exposure: the cascades were trained on contrast-normalised faces.
        boxes, weights = self._search(padded(cv2.equalizeHist(gray)), sizes)
        if not len(boxes) and self._clahe is not None:
            boxes, weights = self._search(padded(self._clahe.apply(gray)), sizes)
        gray = padded(gray)
        before = (padded(eyes_before[0]), eyes_before[1]) if eyes_before is not None and len(boxes) else None
        detections = []
        for (x, y, w, h), weight in zip(boxes, weights):
            box = np.array([x, y, x + w, y + h], dtype=np.float64)
            landmarks = landmarks_in_box(box)
            eyes = _follow_eye_pair(before[0], gray, before[1], box) if before is not None else None
            if eyes is None and self._eyes is not None:
                eyes = self._find_eye_pair(gray, box, landmarks[:2])
            if eyes is not None:
                landmarks = _move_to_eyes(landmarks, eyes)
            score = 1.0 / (1.0 + math.exp(-float(weight)))
            # Back from the padded (and downscaled) search image to the caller's pixels.
            box = ((box.reshape(2, 2) - origin) / scale).ravel()
            landmarks = (landmarks - origin) / scale
            detections.append(Detection(box=box, score=score, landmarks=landmarks, eyes_found=eyes is not None))
        return detections

    def _search(self, image: np.ndarray, sizes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        smallest, largest = sizes
        boxes, _levels, weights = self._faces.detectMultiScale3(
            image, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(smallest, smallest),
            maxSize=(largest, largest) if largest else (0, 0), outputRejectLevels=True)
        return np.asarray(boxes).reshape(-1, 4), np.asarray(weights).reshape(-1)

    def _find_eye_pair(self, gray: np.ndarray, box: np.ndarray, expected: np.ndarray) -> np.ndarray | None:
        """Centres of (left, right) eyes found in the upper face, or None when no plausible pair is found."""
        x1, y1, x2, y2 = box
        face_width = x2 - x1
        top, bottom = int(y1 + 0.15 * face_width), int(y1 + 0.6 * face_width)
        left, right = int(max(0, x1)), int(min(gray.shape[1], x2))
        top, bottom = max(0, top), min(gray.shape[0], bottom)
        if bottom - top < 4 or right - left < 4:
            return None
        # Equalised within the face: after whole-image equalisation a face on a bright or dark backdrop
        # keeps too little contrast for the eye cascade (found almost no eyes on test pastes; now nearly all).
        region = cv2.equalizeHist(np.ascontiguousarray(gray[top:bottom, left:right]))
        zoom = max(1.0, _EYE_SEARCH_FACE_WIDTH / face_width)
        if zoom > 1.0:
            region = cv2.resize(region, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
        scaled_width = face_width * zoom
        found = self._eyes.detectMultiScale(
            region, scaleFactor=1.05, minNeighbors=3, minSize=(max(20, int(0.12 * scaled_width)),) * 2,
            maxSize=(int(0.4 * scaled_width),) * 2)
        centres = [np.array([left + (ex + ew / 2) / zoom, top + (ey + eh / 2) / zoom])
                   for ex, ey, ew, eh in np.asarray(found).reshape(-1, 4)]
        middle = (x1 + x2) / 2
        best, best_cost = None, math.inf
        for left_eye in (c for c in centres if c[0] < middle):
            for right_eye in (c for c in centres if c[0] >= middle):
                if not _plausible_eye_pair(left_eye, right_eye, face_width):
                    continue
                cost = float(np.sum((left_eye - expected[0]) ** 2) + np.sum((right_eye - expected[1]) ** 2))
                if cost < best_cost:
                    best, best_cost = np.stack([left_eye, right_eye]), cost
        return best


def _plausible_eye_pair(left_eye: np.ndarray, right_eye: np.ndarray, face_width: float) -> bool:
    """Eyes of a face this size are 0.22-0.6 box widths apart, with under ~30 degrees of roll."""
    step = right_eye - left_eye
    return 0.22 * face_width <= float(np.hypot(*step)) <= 0.6 * face_width and abs(step[1]) <= 0.6 * step[0]


def _peak_offset(below: float, peak: float, above: float) -> float:
    """Sub-pixel offset of a maximum from the parabola through it and its two neighbours."""
    curvature = below - 2 * peak + above
    return 0.0 if curvature >= 0 else float(np.clip(0.5 * (below - above) / curvature, -0.5, 0.5))


def _follow_eye_pair(before: np.ndarray, now: np.ndarray, eyes: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The two eye points of frame ``before`` found again in frame ``now`` (same grey search region), or None.

    Each eye's surroundings (a square of 0.6 eye distances, brow included) are matched by normalised
    correlation within EYE_FOLLOW_REACH eye distances of where the eye was, to a sub-pixel peak. A weak match
    (blink, occlusion, a cut) or a pair no eye search would accept gives None, and the caller searches instead.
    Following drifts a little each frame; the tracked search re-anchors it with a full search every k frames.
    """
    distance = float(np.hypot(*(eyes[1] - eyes[0])))
    half = max(3, round(EYE_FOLLOW_PATCH / 2 * distance))
    reach = max(2, round(EYE_FOLLOW_REACH * distance))
    followed = []
    for eye in eyes:
        cx, cy = (int(round(float(v))) for v in eye)
        x0, y0, x1, y1 = cx - half - reach, cy - half - reach, cx + half + reach + 1, cy + half + reach + 1
        if x0 < 0 or y0 < 0 or x1 > now.shape[1] or y1 > now.shape[0]:
            return None
        template = before[cy - half:cy + half + 1, cx - half:cx + half + 1]
        if float(template.std()) < 1.0:  # a flat patch matches anywhere
            return None
        scores = cv2.matchTemplate(now[y0:y1, x0:x1], template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(scores)
        if best < EYE_FOLLOW_MIN_MATCH:
            return None
        dx = _peak_offset(*scores[by, bx - 1:bx + 2]) if 0 < bx < scores.shape[1] - 1 else 0.0
        dy = _peak_offset(*scores[by - 1:by + 2, bx]) if 0 < by < scores.shape[0] - 1 else 0.0
        followed.append(eye + np.array([bx - reach + dx, by - reach + dy]))
    left_eye, right_eye = followed
    x1, y1, x2, _ = box
    # Within the band of the box the eye search looks in (another face in the region keeps its own eyes).
    inside = all(x1 <= x <= x2 and y1 + 0.1 * (x2 - x1) <= y <= y1 + 0.65 * (x2 - x1) for x, y in followed)
    return np.stack(followed) if inside and _plausible_eye_pair(left_eye, right_eye, x2 - x1) else None


# --- inputs that are already aligned crops -------------------------------------------------------------

class WholeImageDetector(FaceDetector):
    """For already aligned crops: one face covering the whole image, landmarks on the scaled template."""

    name = "none"

    def thread_copy(self) -> WholeImageDetector:
        return self  # no state

    def detect(self, image_rgb: np.ndarray) -> list[Detection]:
        height, width = check_image(image_rgb).shape[:2]
        landmarks = arcface_template(TEMPLATE_SIZE) * np.array([width / TEMPLATE_SIZE, height / TEMPLATE_SIZE])
        return [Detection(box=(0.0, 0.0, float(width), float(height)), score=1.0, landmarks=landmarks)]


# --- factory ---------------------------------------------------------------------------------------------

def _accepted(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    names = inspect.signature(cls.__init__).parameters
    return {key: value for key, value in options.items() if key in names}


def make_detector(name: str = "auto", **opts: Any) -> FaceDetector:
    """A detector by name: "insightface", "opencv", "none", or "auto" (insightface when its model file is
    found and usable, else opencv, with a warning when a model file is there but unusable). ``opts`` go to the
    detector's constructor; "auto" passes each one the options it takes.
    """
    key = str(name).strip().lower()
    if key == "insightface":
        return InsightFaceDetector(**opts)
    if key == "opencv":
        return OpenCVDetector(**opts)
    if key == "none":
        if opts:
            raise TypeError(f"the 'none' detector takes no options, got {', '.join(sorted(opts))}")
        return WholeImageDetector()
    if key == "auto":
        unknown = set(opts) - set(_accepted(InsightFaceDetector, opts)) - set(_accepted(OpenCVDetector, opts))
        if unknown:
            raise TypeError(f"unknown detector options: {', '.join(sorted(unknown))}")
        try:
            detector = InsightFaceDetector(**_accepted(InsightFaceDetector, opts))
        except DetectorModelNotFound as err:
            first_sentence = str(err).split(". ")[0]
            log.info("face detector: opencv Haar cascades (%s)", first_sentence)
            return OpenCVDetector(**_accepted(OpenCVDetector, opts))
        except DetectorUnavailable as err:  # a model file is there but unusable: its owner wants to know
            log.warning("face detector: opencv Haar cascades, because %s", err)
            return OpenCVDetector(**_accepted(OpenCVDetector, opts))
        log.info("face detector: insightface (%s)", detector.model_path)
        return detector
    raise OptionError(f"unknown face detector {name!r}; expected one of {', '.join(DETECTOR_NAMES)}")

"""5-point face alignment onto insightface's ArcFace template (the crops every later stage trains on)."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from abaw_ce.errors import OptionError

# The ArcFace template is defined on a 112x112 crop; other crop sizes scale it by size / 112.
TEMPLATE_SIZE = 112
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


@lru_cache(maxsize=1)
def _arcface_template_112() -> np.ndarray:
    # Imported lazily: importing insightface pulls in onnxruntime, which costs most of a second.
    from insightface.utils.face_align import arcface_dst

    template = np.array(arcface_dst, dtype=np.float32).reshape(5, 2)
    template.setflags(write=False)
    return template


def arcface_template(size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The 5 ArcFace template points (left eye, right eye, nose, left/right mouth) for a size x size crop."""
    _check_size(size)
    return _arcface_template_112() * np.float32(size / TEMPLATE_SIZE)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise OptionError(f"crop size must be a positive integer, got {size!r}")
    return int(size)


def _check_landmarks(landmarks5: np.ndarray) -> np.ndarray:
    points = np.asarray(landmarks5, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"expected 5 (x, y) landmarks of shape (5, 2), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks contain NaN or infinite values")
    return points


def similarity_matrix(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2x3 least-squares similarity transform (rotation, uniform scale, translation) taking source onto target."""
    from skimage.transform import SimilarityTransform

    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        transform = SimilarityTransform.from_estimate(source, target)
        if not transform:
            raise ValueError(f"cannot fit a similarity transform to these points: {transform}")
    else:
        transform = SimilarityTransform()
        if not transform.estimate(source, target):
            raise ValueError("cannot fit a similarity transform to these points")
    matrix = np.asarray(transform.params[:2], dtype=np.float64)
    if not np.isfinite(matrix).all():
        raise ValueError("cannot fit a similarity transform to these points (degenerate landmarks)")
    return matrix


def alignment_matrix(landmarks5: np.ndarray, size: int = 224) -> np.ndarray:
    """The 2x3 matrix mapping image coordinates into the aligned size x size crop (same as insightface's
    ``estimate_norm`` for sizes that are multiples of 112)."""
    return similarity_matrix(_check_landmarks(landmarks5), arcface_template(_check_size(size)))


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_face_with_matrix(image: np.ndarray, landmarks5: np.ndarray, size: int = 224
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The aligned size x size crop and the 2x3 image-to-crop matrix used to make it."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    matrix = alignment_matrix(landmarks5, size)
    # Black outside the image, like insightface's norm_crop, so crops match crops made by insightface.
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crop, matrix


def align_face(image: np.ndarray, landmarks5: np.ndarray, size: int = 224) -> np.ndarray:
    """Warp the face with these 5 landmarks onto the ArcFace template: a (size, size, 3) crop."""
    return align_face_with_matrix(image, landmarks5, size)[0]

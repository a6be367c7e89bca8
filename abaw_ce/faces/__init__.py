"""Face detection, 5-point alignment, main-face tracking and the crop pipeline for videos and images."""
from abaw_ce.faces.align import (align_face, align_face_with_matrix, alignment_matrix, arcface_template,
                                 transform_points)
from abaw_ce.faces.cache import FaceEntry, FrameFaces, cache_key, file_digest
from abaw_ce.faces.detectors import (Detection, DetectorUnavailable, FaceDetector, InsightFaceDetector,
                                     OpenCVDetector, WholeImageDetector, find_insightface_model, make_detector)
from abaw_ce.faces.pipeline import (FacesReport, FileReport, ImageFaces, process_images, process_video,
                                    run_faces)
from abaw_ce.faces.tracking import MainFaceTracker, TrackedSearch, box_iou, main_face_index

__all__ = [
    "Detection", "DetectorUnavailable", "FaceDetector", "FaceEntry", "FacesReport", "FileReport", "FrameFaces",
    "ImageFaces", "InsightFaceDetector", "MainFaceTracker", "OpenCVDetector", "TrackedSearch",
    "WholeImageDetector",
    "align_face", "align_face_with_matrix", "alignment_matrix", "arcface_template", "box_iou", "cache_key",
    "file_digest", "find_insightface_model", "main_face_index", "make_detector", "process_images",
    "process_video", "run_faces", "transform_points",
]

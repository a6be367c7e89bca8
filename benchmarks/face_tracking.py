"""The tracked face search against the full search on every frame: detection time, recall, and how steady and how
close to the every-frame answer the eye points are, on a synthetic world's test videos.

    python benchmarks/face_tracking.py [--seed S]

Frames are decoded once, up front; each setting then runs the OpenCV detector through ``TrackedSearch`` on every
video. Columns: ``recall`` on frames that show a face and ``false`` faces on frames that show none (the world's
``face_visible.csv``); ``eye diff``: the larger of the two eye points' distances from the every-frame search's,
in eye distances, mean over frames where both found the face; ``jitter``: the eye points' frame-to-frame second
difference, in eye distances, mean over runs of three frames with a face.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_ce.faces.detectors import Detection, OpenCVDetector  # noqa: E402
from abaw_ce.faces.tracking import TrackedSearch  # noqa: E402
from abaw_ce.video import open_video  # noqa: E402


class SearchedEyes(OpenCVDetector):
    """The local search without eye following: the eye cascade on every frame."""

    def detect_near(self, image_rgb, box, previous=None):
        return super().detect_near(image_rgb, box)


def eye_figures(found: dict[str, list[Detection | None]], every: dict[str, list[Detection | None]]
                ) -> tuple[float, float]:
    differences, jitter = [], []
    for video, faces in found.items():
        for i, face in enumerate(faces):
            reference = every[video][i]
            if face is not None and reference is not None:
                distance = np.hypot(*(reference.landmarks[1] - reference.landmarks[0]))
                differences.append(np.abs(face.landmarks[:2] - reference.landmarks[:2]).max() / distance)
            if 0 < i < len(faces) - 1 and all(f is not None for f in faces[i - 1:i + 2]):
                before, now, after = (f.landmarks[:2] for f in faces[i - 1:i + 2])
                jitter.append(np.abs(before - 2 * now + after).max() / np.hypot(*(now[1] - now[0])))
    return float(np.mean(differences)), float(np.mean(jitter))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        from abaw_ce.synth.world import generate_world

        world = Path(tmp) / "world"
        generate_world(world, seed=args.seed, scale="tiny")
        frames = {}
        for path in sorted((world / "test").glob("*.mp4")):
            with open_video(path) as video:
                frames[path.stem] = list(video)
        visible = pd.read_csv(world / "test_ground_truth" / "face_visible.csv", dtype={"video": str})
    shows = {(row.video, row.frame): bool(row.face_visible) for row in visible.itertuples()}
    settings = [("every frame (default)", 1, OpenCVDetector()),
                ("every 10, eyes searched", 10, SearchedEyes()),
                ("every 10, eyes followed", 10, OpenCVDetector()),
                ("every 30, eyes followed", 30, OpenCVDetector()),
                ("every 10, eyes followed, side 320", 10, OpenCVDetector(max_side=320))]
    print(f"world seed {args.seed}: {sum(map(len, frames.values()))} frames of {len(frames)} videos, "
          f"{sum(shows.values())} with a face")
    print(f"  {'full search':<36}{'seconds':>8}{'recall':>8}{'false':>6}{'eye diff':>10}{'jitter':>8}")
    every = None
    for name, redetect_every, detector in settings:
        start = time.perf_counter()
        found = {video: TrackedSearch(detector, redetect_every).faces(images) for video, images in frames.items()}
        seconds = time.perf_counter() - start
        every = every or found
        hits = [(shows[(video, i + 1)], face is not None) for video, faces in found.items()
                for i, face in enumerate(faces)]
        recall = np.mean([got for shown, got in hits if shown])
        false = sum(got for shown, got in hits if not shown)
        difference, jitter = eye_figures(found, every)
        print(f"  {name:<36}{seconds:>8.1f}{recall:>8.1%}{false:>6}{difference:>10.3f}{jitter:>8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

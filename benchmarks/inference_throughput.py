"""End-to-end submission throughput: make_submission against a naive per-frame loop, in the same run.

ours:  make_submission (streamed decoding and batched detection in the faces step, packed crops, every fold
       model on batches of crops, fusion and smoothing over whole videos).
naive: per frame, decode it, detect and align the face, call each fold model on that one crop, fuse.

Both use the same detector and the same fold models. Models are random tiny ViTs unless --models names
real runs, so the figure measures the plumbing, not accuracy.

    python benchmarks/inference_throughput.py                 # renders a tiny synthetic world first
    python benchmarks/inference_throughput.py --videos test/ --models runs/emotion-A --detector insightface
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_ce import fusion, labels  # noqa: E402
from abaw_ce.faces.align import align_face  # noqa: E402
from abaw_ce.faces.detectors import make_detector  # noqa: E402
from abaw_ce.submission.inference import load_models, prepare_batch  # noqa: E402
from abaw_ce.submission.pipeline import make_submission  # noqa: E402
from abaw_ce.models.export import save_encoder  # noqa: E402
from abaw_ce.models.vit import VitArch, build_vit  # noqa: E402


def fake_run(root: Path, folds: int, arch: VitArch) -> Path:
    for k in range(folds):
        torch.manual_seed(k)
        save_encoder(root / f"fold_{k}" / "export", build_vit(arch, num_classes=6).state_dict(), arch,
                     [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], source={"stage": "benchmark"},
                     head={"task": "emotion", "labels": list(labels.BASIC_EMOTIONS)})
    return root


@torch.no_grad()
def naive(videos: list[Path], runs: list[Path], detector_name: str, crop: int) -> int:
    import av

    detector = make_detector(detector_name)
    models = load_models(runs)
    frames = 0
    for video in videos:
        with av.open(str(video)) as container:
            for frame in container.decode(video=0):
                image = frame.to_ndarray(format="rgb24")
                found = detector.detect(image)
                if found:
                    face = align_face(image, max(found, key=lambda d: d.width).landmarks, crop)
                    x = torch.from_numpy(face).permute(2, 0, 1)[None]
                    probs = np.mean([torch.sigmoid(m.model(prepare_batch(x, m))).numpy() for m in models], axis=0)
                    fusion.fuse(probs)
                frames += 1
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, help="folder of test videos (default: a tiny synthetic world's)")
    parser.add_argument("--models", nargs="+", type=Path, help="emotion runs (default: 5 random tiny folds)")
    parser.add_argument("--detector", default="opencv")
    parser.add_argument("--crop-size", type=int, default=112)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        videos = args.videos
        if videos is None:
            from abaw_ce.synth.world import generate_world

            generate_world(tmp / "world", seed=0, scale="tiny")
            videos = tmp / "world" / "test"
        runs = args.models or [fake_run(tmp / "run", 5, VitArch(img_size=112, patch_size=16, embed_dim=192,
                                                                   depth=6, num_heads=3))]
        files = sorted(p for p in videos.iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".mov"))
        start = time.perf_counter()
        count = naive(files, runs, args.detector, args.crop_size)
        naive_s = time.perf_counter() - start
        start = time.perf_counter()
        summary = make_submission(videos, runs, tmp / "submission.txt", detector=args.detector,
                                  crop_size=args.crop_size, progress=False)
        ours_s = time.perf_counter() - start
    models = len(summary["models"])
    print(f"{count} frames of {len(files)} videos, {models} fold models, detector {args.detector}")
    print(f"  naive per-frame loop  {count / naive_s:8.1f} frames/s")
    print(f"  make_submission       {summary['frames'] / ours_s:8.1f} frames/s")
    print(f"  ratio: {(summary['frames'] / ours_s) / (count / naive_s):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end submission throughput: make_submission against a naive per-frame loop, in the same run.

ours:  make_submission (streamed decoding; the tracked face search, a full search every --redetect-every frames
       and wherever the search near the last face finds none; packed crops read through a DataLoader; every
       fold model on batches of crops; fusion and smoothing over whole videos), over --processes processes.
naive: per frame, decode it, run the full face search, align the face, call each fold model on that one crop,
       fuse.

Both use the same detector and the same fold models. Models are random tiny ViTs unless --models names
real runs, so the figure measures the plumbing, not accuracy. Faces lost to the faster search would not be a
speed-up: on a synthetic world (which knows which frames show a face) both sides' detection recall and false
detections are printed.

    python benchmarks/inference_throughput.py                 # renders a tiny synthetic world first
    python benchmarks/inference_throughput.py --videos test/ --models runs/emotion-A --detector insightface
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw_ce import fusion  # noqa: E402
from abaw_ce.faces.align import align_face  # noqa: E402
from abaw_ce.faces.detectors import make_detector  # noqa: E402
from abaw_ce.submission.inference import load_models, prepare_batch  # noqa: E402
from abaw_ce.submission.pipeline import make_submission  # noqa: E402
from abaw_ce.submission.random_runs import random_emotion_run  # noqa: E402
from abaw_ce.models.vit import VitArch  # noqa: E402


@torch.no_grad()
def naive(videos: list[Path], runs: list[Path], detector_name: str, crop: int) -> pd.DataFrame:
    """Frames (video, frame, face_found) as the naive loop saw them."""
    import av

    detector = make_detector(detector_name)
    models = load_models(runs)
    seen = []
    for video in videos:
        with av.open(str(video)) as container:
            for number, frame in enumerate(container.decode(video=0), start=1):
                image = frame.to_ndarray(format="rgb24")
                found = detector.detect(image)
                if found:
                    face = align_face(image, max(found, key=lambda d: d.width).landmarks, crop)
                    x = torch.from_numpy(face).permute(2, 0, 1)[None]
                    probs = np.mean([torch.sigmoid(m.model(prepare_batch(x, m))).numpy() for m in models], axis=0)
                    fusion.fuse(probs)
                seen.append((video.stem, number, bool(found)))
    return pd.DataFrame(seen, columns=["video", "frame", "face_found"])


def detection_figures(frames: pd.DataFrame, visible_csv: Path | None) -> str:
    """Recall on the frames that show a face, and faces found on frames that show none."""
    if visible_csv is None or not visible_csv.is_file():
        return "detection: no face_visible.csv to compare with"
    both = pd.read_csv(visible_csv).merge(frames, on=["video", "frame"])
    shown, empty = both[both["face_visible"] == 1], both[both["face_visible"] == 0]
    return (f"recall {shown['face_found'].mean():.1%} of {len(shown)} frames with a face, false detections "
            f"{int(empty['face_found'].sum())} of {len(empty)} frames without")


def ours(videos: Path, runs: list[Path], out: Path, args: argparse.Namespace, setting: Setting
         ) -> tuple[int, pd.DataFrame]:
    """make_submission with ``setting``, in this process or launched over several; (frames written, faces table)."""
    redetect_every, processes, precision, search_side = setting
    if processes == 1:
        summary = make_submission(videos, runs, out, detector=args.detector, crop_size=args.crop_size,
                                  redetect_every=redetect_every, precision=precision, progress=False,
                                  search_side=search_side)
        frames = summary["frames"]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(29500 + os.getpid() % 1000), str(ROOT / "submit" / "make_submission.py"),
                   "--videos", str(videos), "--models", *map(str, runs), "--out", str(out), "--detector",
                   args.detector, "--crop-size", str(args.crop_size), "--redetect-every", str(redetect_every),
                   "--precision", precision] + (["--search-side", str(search_side)] if search_side else [])
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        frames = sum(1 for _ in out.open()) - 1
    faces = pd.read_csv(out.with_name(out.stem + "_work") / "faces" / "frames.csv", dtype={"video": str})
    return frames, faces.assign(face_found=faces["face_found"].astype(bool))


Setting = tuple[int, int, str, "int | None"]


def setting_of(text: str) -> Setting:
    """``K:P:PRECISION[:SIDE]`` -> (redetect every K frames, P processes, precision, full-search side or None)."""
    try:
        k, processes, precision, *side = text.split(":")
        if len(side) > 1 or precision not in ("fp32", "bf16"):
            raise ValueError
        return int(k), int(processes), precision, int(side[0]) if side else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K:P:PRECISION[:SIDE] (e.g. 10:2:fp32:320), got {text!r}") from None


def describe(setting: Setting) -> str:
    redetect_every, processes, precision, search_side = setting
    return (f"full search every {redetect_every} frame(s) at least"
            + (f" on frames scaled to {search_side} px" if search_side else "")
            + f", {processes} process(es), {precision}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, help="folder of test videos (default: a tiny synthetic world's)")
    parser.add_argument("--models", nargs="+", type=Path, help="emotion runs (default: 5 random tiny folds)")
    parser.add_argument("--detector", default="opencv")
    parser.add_argument("--crop-size", type=int, default=112)
    parser.add_argument("--settings", nargs="+", type=setting_of, default=[(10, 1, "bf16", 320)],
                        help="ours, each as K:P:PRECISION[:SIDE]: a full face search at least every K frames (1: on "
                             "every frame, as naive), P processes, fp32 or bf16, full searches on frames scaled to "
                             "SIDE px on the longer side (default: the detector's own). Default 10:1:bf16:320, for a "
                             "CPU with bf16 instructions; the last line is the first setting's")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        videos, visible = args.videos, None
        if videos is None:
            from abaw_ce.synth.world import generate_world

            generate_world(tmp / "world", seed=0, scale="tiny")
            videos, visible = tmp / "world" / "test", tmp / "world" / "test_ground_truth" / "face_visible.csv"
        runs = args.models or [random_emotion_run(tmp / "run", 5, VitArch(img_size=112, patch_size=16, embed_dim=192,
                                                                   depth=6, num_heads=3))]
        files = sorted(p for p in videos.iterdir() if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".mov"))
        start = time.perf_counter()
        naive_frames = naive(files, runs, args.detector, args.crop_size)
        naive_s = time.perf_counter() - start
        print(f"{len(naive_frames)} frames of {len(files)} videos, {len(load_models(runs))} fold models, detector "
              f"{args.detector}")
        print(f"  naive per-frame loop  {len(naive_frames) / naive_s:8.1f} frames/s   "
              f"{detection_figures(naive_frames, visible)}", flush=True)
        ratios = []
        for i, setting in enumerate(args.settings):
            start = time.perf_counter()
            count, our_frames = ours(videos, runs, tmp / f"submission{i}.txt", args, setting)
            ours_s = time.perf_counter() - start
            ratios.append((count / ours_s) / (len(naive_frames) / naive_s))
            print(f"  make_submission       {count / ours_s:8.1f} frames/s   {detection_figures(our_frames, visible)}"
                  f"   ({ratios[-1]:.2f}x; {describe(setting)})", flush=True)
    print(f"speed-up over naive loop: {ratios[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

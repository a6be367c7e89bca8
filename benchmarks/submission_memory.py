"""Peak memory of make_submission on one short and one long video: it must not grow with the video's length.

    python benchmarks/submission_memory.py                     # 300 and 18,000 frames (10 minutes at 30 fps)
    python benchmarks/submission_memory.py --long-frames 3000  # quicker

Each video loops a tiny synthetic world's test videos (one resolution). Each make_submission runs in a fresh
process (random tiny ViT folds, the OpenCV detector with the tracked search) and reports its own peak resident
set size (``getrusage``); the models and libraries alone take most of it, so the figure to read is the growth.
Last line: ``peak RSS: short <a> MiB, long <b> MiB (<frames> frames), growth <b - a> MiB``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from abaw_ce.models.vit import VitArch  # noqa: E402

TINY = VitArch(img_size=112, patch_size=16, embed_dim=192, depth=6, num_heads=3)

# Run in a fresh interpreter: its peak RSS is then the submission's alone.
CHILD = """
import resource, sys
from pathlib import Path
from abaw_ce.submission.pipeline import make_submission
videos, run, out, redetect = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
summary = make_submission(videos, [run], out, detector="opencv", crop_size=112, progress=False,
                          redetect_every=redetect)
print(summary["frames"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss(videos: Path, run: Path, out: Path, redetect_every: int) -> tuple[int, float, float]:
    """(frames written, peak RSS in MiB, seconds) of make_submission in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(videos), str(run), str(out), str(redetect_every)],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"make_submission on {videos} failed:\n{done.stderr[-3000:]}")
    frames, kib = done.stdout.split()[-2:]
    return int(frames), int(kib) / 1024, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short-frames", type=int, default=300)
    parser.add_argument("--long-frames", type=int, default=18_000)
    parser.add_argument("--redetect-every", type=int, default=10)
    parser.add_argument("--folds", type=int, default=1,
                        help="random tiny ViT folds (their weights add the same to both videos)")
    args = parser.parse_args(argv)
    from abaw_ce.synth.world import generate_world, looped_video
    from abaw_ce.submission.random_runs import random_emotion_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_world(tmp / "world", seed=0, scale="tiny")
        sources = sorted((tmp / "world" / "test").glob("*.mp4"))
        run = random_emotion_run(tmp / "run", args.folds, TINY)
        figures = {}
        for name, frames in (("short", args.short_frames), ("long", args.long_frames)):
            looped_video(sources, tmp / name / f"{name}.mp4", frames)
            figures[name] = peak_rss(tmp / name, run, tmp / f"{name}.txt", args.redetect_every)
            count, mib, seconds = figures[name]
            print(f"{name}: {count} frames, peak RSS {mib:.0f} MiB, {seconds:.0f} s", flush=True)
    (_, short, _), (count, long, _) = figures["short"], figures["long"]
    print(f"peak RSS: short {short:.0f} MiB, long {long:.0f} MiB ({count} frames), growth {long - short:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

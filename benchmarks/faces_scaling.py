"""The faces step over 2 processes, and over 2 threads of one process, against 1 process working on one file at a
time, on the same files, in the same run; outputs compared byte for byte.

    python benchmarks/faces_scaling.py                       # renders a tiny synthetic world's test videos
    python benchmarks/faces_scaling.py --input videos/ --detector insightface --processes 4

Each side runs the real command (``python -m abaw_ce.faces`` and ``python -m torch.distributed.run
--nproc_per_node N -m abaw_ce.faces``) in a fresh folder; the 1-process side goes first and second in turn over
the rounds, so machine noise hits both. Last line: ``N processes vs 1: <x>x, outputs identical: yes|no``, where 1
is one process with one file thread (``--threads 1``); the line above gives one process with N threads.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from abaw_ce.faces.pipeline import FRAMES_CSV, STORE_DIR  # noqa: E402

OUTPUTS = [FRAMES_CSV, f"{STORE_DIR}/faces.u8", f"{STORE_DIR}/index.csv", f"{STORE_DIR}/meta.json"]


def faces_command(processes: int, source: Path, out: Path, detector: str, size: int, redetect_every: int = 1,
                  threads: int = 1) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                 "--master_port", str(29500 + os.getpid() % 1000)] if processes > 1 else [sys.executable])
    return [*launcher, "-m", "abaw_ce.faces", str(source), "--out", str(out), "--detector", detector,
            "--size", str(size), "--redetect-every", str(redetect_every), "--threads", str(threads), "--no-progress"]


def timed_run(command: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):  # 1: no face at all, still a finished run
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def identical(a: Path, b: Path) -> bool:
    return all((a / name).is_file() and filecmp.cmp(a / name, b / name, shallow=False) for name in OUTPUTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="folder of videos and/or images (default: a tiny world's test "
                                                   "videos, rendered)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--detector", default="opencv")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--redetect-every", type=int, default=1, help="the faces step's tracked search (1: off)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.input
        if source is None:
            from abaw_ce.synth.world import generate_world

            generate_world(tmp / "world", seed=0, scale="tiny")
            source = tmp / "world" / "test"
        # (processes, file threads per process)
        sides = [(1, 1), (args.processes, 1), (1, args.processes)]
        seconds: dict[tuple[int, int], list[float]] = {side: [] for side in sides}
        same = True
        for round_ in range(args.rounds):
            outs = {}
            for side in (sides if round_ % 2 == 0 else sides[::-1]):
                outs[side] = tmp / f"out{round_}_{side[0]}x{side[1]}"
                seconds[side].append(timed_run(faces_command(side[0], source, outs[side], args.detector, args.size,
                                                             args.redetect_every, side[1])))
            same = same and all(identical(outs[sides[0]], outs[side]) for side in sides[1:])
    one, many, threaded = (statistics.median(seconds[side]) for side in sides)
    files = sum(1 for p in Path(source).rglob("*") if p.is_file()) if args.input else "the tiny world's test"
    print(f"faces step on {files} files, detector {args.detector}, crops {args.size} px, median of {args.rounds} "
          f"round(s), full search every {args.redetect_every} frame(s) at least: 1 process {one:.1f} s, "
          f"{args.processes} processes {many:.1f} s, 1 process with {args.processes} threads {threaded:.1f} s "
          f"(os.cpu_count() = {os.cpu_count()})")
    print(f"1 process, {args.processes} threads vs 1: {one / threaded:.2f}x")
    print(f"{args.processes} processes vs 1: {one / many:.2f}x, outputs identical: {'yes' if same else 'no'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

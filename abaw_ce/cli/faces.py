"""`python -m abaw_ce.faces INPUT --out DIR`: aligned main-face crops of a folder of videos and/or images.

Over several processes: `python -m torch.distributed.run --nproc_per_node N -m abaw_ce.faces INPUT --out DIR`
(or under `accelerate launch`): the files are dealt to the processes and the main one writes the outputs.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from abaw_ce.errors import run_command
from abaw_ce.faces.detectors import DETECTOR_NAMES
from abaw_ce.faces.pipeline import DEFAULT_BATCH, run_faces, search_options


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def face_search_options(parser: argparse.ArgumentParser, step: str) -> None:
    """The tracked search's options (``--redetect-every``, ``--search-side``), their help led by ``step``."""
    parser.add_argument("--redetect-every", type=_positive_int, default=1, metavar="K",
                        help=f"{step}: search near the tracked face, with a full search at least every K frames and "
                             "wherever the local one finds none (default 1: a full search on every frame)")
    parser.add_argument("--search-side", type=_positive_int, metavar="N",
                        help=f"{step}, opencv detector: full searches on the frame scaled to at most N px on its "
                             "longer side (default 800); faster, and faces under about 24/N of that side are missed")


def build_parser(prog: str = "python -m abaw_ce.faces") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Detect, track and align the main face of every video frame and image in a "
        "folder; write the crops as a packed store plus frames.csv and faces_report.json.")
    parser.add_argument("input", type=Path, help="folder of videos and/or images (searched recursively), or one file")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--detector", choices=DETECTOR_NAMES, default="auto",
                        help="auto: insightface when its model file is found, else opencv; none: inputs are "
                             "already aligned crops (default: auto)")
    parser.add_argument("--size", type=_positive_int, default=224, help="crop side in pixels (default: 224)")
    parser.add_argument("--cache", type=Path, help="crop cache folder: files seen before are not decoded again")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH,
                        help=f"video frames decoded and detected together (default: {DEFAULT_BATCH})")
    face_search_options(parser, "videos")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="files processed side by side in this process (default: its share of the cores, at "
                             "most 8; outputs are the same whatever the number)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the faces stage on the command line ``argv``; prog names the command in help (e.g. "abaw-ce faces").

    Exit status: 0 when crops were written, 1 when no file gave a face, 2 on bad arguments or setup.
    """
    args = build_parser(prog or "python -m abaw_ce.faces").parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from tqdm.contrib.logging import logging_redirect_tqdm

    def faces() -> int:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            report = run_faces(args.input, args.out, detector=args.detector, size=args.size, cache_dir=args.cache,
                               overwrite=args.overwrite, batch_size=args.batch_size, progress=not args.no_progress,
                               distributed=True, redetect_every=args.redetect_every,
                               detector_options=search_options(args.search_side, args.detector),
                               threads=args.threads)
        if report is None:  # another process of a multi-process launch: the main one writes and reports
            return 0
        print(report.summary())
        return 0 if report.totals["faces_found"] > 0 else 1

    return run_command(faces)

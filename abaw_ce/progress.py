"""Progress bars that read well in a terminal and in a log file.

In a terminal a tqdm bar redraws itself in place. Written to a file (SLURM, nohup, ``2> log``) the same bar is
one line joined by carriage returns, many times a second. Here, when the stream is not a terminal, each redraw
becomes a line of its own and redraws come at most every ``FILE_INTERVAL_S`` seconds (``TQDM_MININTERVAL`` in
the environment still wins), so a log shows the run's pace and nothing else.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

FILE_INTERVAL_S = 10.0


class LineStream:
    """A text stream for tqdm that turns each carriage-return redraw into a line and drops blank ones."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        for piece in text.replace("\r", "\n").split("\n"):
            piece = piece.rstrip()
            if piece:
                self.stream.write(piece + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, written line by line and less often when its stream is not a terminal."""
    stream = kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)  # a file has no width to follow
    if "TQDM_MININTERVAL" not in os.environ:
        kwargs.setdefault("mininterval", FILE_INTERVAL_S)
    kwargs.setdefault("ncols", 100)
    return tqdm(iterable, file=LineStream(stream), **kwargs)

"""The kit's one video reader, through PyAV: metadata (frame rate, frame count and frame timestamps, without
decoding pixels) and frame-by-frame decoding (``open_video``)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from abaw_ce.errors import InputError, require_file

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float
    frames: int
    width: int
    height: int


@contextmanager
def _first_video_stream(path: Path) -> Iterator[tuple[Any, Any]]:
    """The open container and its first video stream; an InputError names the file when it cannot be read
    (while opening or while the caller demuxes)."""
    import av  # PyAV loads FFmpeg's libraries: only once a video is opened

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(path, "no video stream in this file")
            yield container, container.streams.video[0]
    except InputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read video ({err.__class__.__name__}: {err})") from None


def _nominal_rate(stream: Any) -> Fraction | None:
    return stream.average_rate or stream.guessed_rate or stream.base_rate


def video_info(path: str | Path) -> VideoInfo:
    """Frame rate, frame count and size of a video; an InputError names the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "video file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "video file is empty (0 bytes)")
    with _first_video_stream(path) as (container, stream):
        rate = _nominal_rate(stream)
        if not rate:
            raise InputError(path, "the video stream has no frame rate")
        frames = stream.frames
        if frames <= 0:  # some containers do not store the count: count packets, decoding nothing
            frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
        return VideoInfo(str(path), float(Fraction(rate)), int(frames), stream.width, stream.height)


def frame_times(path: str | Path) -> tuple[np.ndarray, float]:
    """Presentation time in seconds (the container's clock) of every frame of the first video stream, in
    display order, read from the packets without decoding pixels; and the stream's nominal frame rate.
    Frames of a variable-frame-rate video keep their real times."""
    with _first_video_stream(Path(path)) as (container, stream):
        rate = _nominal_rate(stream)
        stamps = [p.pts for p in container.demux(stream) if p.size > 0 and p.pts is not None]
        base = float(stream.time_base)
    return np.sort(np.asarray(stamps, np.float64)) * base, float(Fraction(rate)) if rate else 0.0


class VideoReader:
    """Frames of a video, decoded one at a time with PyAV (nothing but the current frame is held)."""

    def __init__(self, path: str | Path):
        import av  # PyAV loads FFmpeg's libraries: only once a video is opened

        self.path = Path(path)
        require_file(self.path, "video")
        self._av_error = av.error.FFmpegError
        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as err:
            raise InputError(self.path, f"cannot open video ({type(err).__name__}: {err})") from None
        if not self._container.streams.video:
            self._container.close()
            raise InputError(self.path, "no video stream in this file")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = _nominal_rate(self._stream)
        self.fps = float(rate) if rate else 0.0
        self.expected_frames = max(0, int(self._stream.frames or 0))  # 0 when the container does not say
        self.frames_read = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            for frame in self._container.decode(self._stream):
                image = frame.to_ndarray(format="rgb24")
                self.frames_read += 1
                yield image
        except self._av_error as err:
            raise InputError(self.path, f"decoding failed after {self.frames_read} frames "
                                        f"({type(err).__name__}: {err})") from None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_video(path: str | Path) -> VideoReader:
    """Open a video for frame-by-frame decoding; InputError names the file when it cannot be opened."""
    return VideoReader(path)

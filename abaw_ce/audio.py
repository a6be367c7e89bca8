"""A video's audio track as log-mel spectrogram windows centred on each video frame (C-EXPR-NET-A input).

PyAV decodes and resamples the track to mono at ``sample_rate``; the mel filterbank and STFT are computed
with torch (no torchaudio dependency). A window that runs past either end of the audio is padded with the
spectrogram's floor (silence), and a video without an audio track yields ``None`` so callers can abstain.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from abaw_ce.errors import InputError
from abaw_ce.progress import progress_bar
from abaw_ce.video import frame_times

LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class MelSettings:
    sample_rate: int = 16000
    n_fft: int = 400          # 25 ms at 16 kHz
    hop: int = 160            # 10 ms
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float | None = None  # None = Nyquist


@dataclass(frozen=True)
class AudioTrack:
    samples: np.ndarray  # mono float32
    start: float  # container time (seconds) of the first sample: a track may start before or after the video


def read_audio(path: str | Path, sample_rate: int = 16000) -> AudioTrack | None:
    """The first audio stream, mono float32 at ``sample_rate``, and where it starts; None when there is none."""
    import av

    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise InputError(path, f"cannot open ({err})") from err
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        for i, frame in enumerate(container.decode(stream)):
            if i == 0 and frame.time is not None:
                start = float(frame.time)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):  # flush
            chunks.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return AudioTrack(samples, start)


@dataclass(frozen=True)
class FrameClock:
    """Where each video frame falls in its video's audio track: seconds from the track's first sample, from the
    frame's own timestamp (variable frame rates and late or early sound are honoured)."""
    times: np.ndarray  # frame k (1-based) at times[k - 1]
    fps: float  # nominal rate: frames past the last timestamp (a decoder may find one more) continue at it

    @classmethod
    def of(cls, video: str | Path, track: AudioTrack) -> FrameClock:
        times, fps = frame_times(video)
        return cls(times - track.start, fps)

    def seconds(self, frames: np.ndarray) -> np.ndarray:
        """Times of 1-based ``frames``."""
        frames = np.asarray(frames, np.int64)
        step = 1.0 / self.fps if self.fps > 0 else 0.04
        if len(self.times) == 0:
            return (frames - 1) * step
        out = self.times[np.clip(frames - 1, 0, len(self.times) - 1)].copy()
        past = frames > len(self.times)
        out[past] = self.times[-1] + (frames[past] - len(self.times)) * step
        return out


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(s: MelSettings) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters equally spaced on the HTK mel scale."""
    f_max = s.f_max or s.sample_rate / 2
    edges = _mel_to_hz(np.linspace(_hz_to_mel(s.f_min), _hz_to_mel(f_max), s.n_mels + 2))
    bins = np.linspace(0, s.sample_rate / 2, s.n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return torch.as_tensor(np.clip(np.minimum(rising, falling), 0, None), dtype=torch.float32)


def log_mel(samples: np.ndarray, s: MelSettings = MelSettings()) -> torch.Tensor:
    """(n_mels, T) log mel power; column k is centred at time k * hop / sample_rate."""
    x = torch.as_tensor(samples, dtype=torch.float32)
    if len(x) < s.n_fft:
        x = torch.nn.functional.pad(x, (0, s.n_fft - len(x)))
    spec = torch.stft(x, s.n_fft, s.hop, window=torch.hann_window(s.n_fft), center=True, return_complex=True)
    return torch.log(mel_filterbank(s) @ spec.abs().pow(2) + LOG_FLOOR)


def frame_windows(spectrogram: torch.Tensor, frame_times: np.ndarray, width: int, s: MelSettings = MelSettings()
                  ) -> torch.Tensor:
    """(N, 1, n_mels, width) windows of a (n_mels, T) spectrogram centred at each time (seconds); columns
    outside the audio hold the log floor."""
    n_mels, total = spectrogram.shape
    centres = np.rint(np.asarray(frame_times, np.float64) * s.sample_rate / s.hop).astype(np.int64)
    offsets = np.arange(width) - width // 2
    columns = centres[:, None] + offsets[None, :]
    padded = torch.cat([torch.full((n_mels, 1), float(np.log(LOG_FLOOR))), spectrogram], dim=1)
    inside = (columns >= 0) & (columns < total)
    index = torch.as_tensor(np.where(inside, columns + 1, 0))  # 0 = the floor column
    return padded[:, index].permute(1, 0, 2).unsqueeze(1)


def video_frame_windows(path: str | Path, frames: np.ndarray, width: int = 96,
                        s: MelSettings = MelSettings()) -> torch.Tensor | None:
    """Spectrogram windows centred on 1-based video ``frames`` (each at its timestamp), or None without audio."""
    track = read_audio(path, s.sample_rate)
    if track is None:
        return None
    return frame_windows(log_mel(track.samples, s), FrameClock.of(path, track).seconds(frames), width, s)


# --- training samples: one spectrogram window per labelled video frame ----------------------------------

def video_spectrograms(videos: list[str], s: MelSettings = MelSettings(), progress: bool = True
                       ) -> tuple[dict[str, torch.Tensor], dict[str, FrameClock], list[str]]:
    """Log-mel spectrogram and frame clock of each video; the third value lists videos without audio."""
    spectrograms, clocks, silent = {}, {}, []
    for video in progress_bar(videos, desc="audio spectrograms", unit="video", disable=not progress):
        track = read_audio(video, s.sample_rate)
        if track is None:
            silent.append(video)
            continue
        spectrograms[video] = log_mel(track.samples, s)
        clocks[video] = FrameClock.of(video, track)
    return spectrograms, clocks, silent


class FrameAudioSamples(torch.utils.data.Dataset):
    """Row i of a table of video-frame rows: {"image": float (1, n_mels, width + 2 * shift) window centred at
    the frame's time, "target", "mask"}; ``SpectrogramTransform`` cuts the final ``width`` columns."""

    def __init__(self, table, targets: np.ndarray, mask: np.ndarray, spectrograms: dict[str, torch.Tensor],
                 clocks: dict[str, FrameClock], width: int, shift: int, s: MelSettings = MelSettings()):
        self.paths = table["path"].astype(str).tolist()
        frames, self.times = table["frame"].to_numpy(np.int64), np.zeros(len(table))
        videos = np.asarray(self.paths)
        for video in np.unique(videos):  # one clock look-up per video, not per row
            rows = videos == video
            self.times[rows] = clocks[video].seconds(frames[rows])
        self.targets = torch.as_tensor(np.asarray(targets, np.float32))
        self.mask = torch.as_tensor(np.asarray(mask, np.float32))
        self.spectrograms, self.span, self.settings = spectrograms, width + 2 * shift, s

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        window = frame_windows(self.spectrograms[self.paths[i]], np.array([self.times[i]]), self.span,
                               self.settings)[0]
        return {"image": window, "target": self.targets[i], "mask": self.mask[i]}

    def describe(self, i: int) -> str:
        return f"{self.paths[i]} at {self.times[i]:.2f} s"


class SpectrogramTransform:
    """Cut ``width`` columns (a random offset within the margin when training, the centre otherwise), mask a
    random band of mel bins when training (SpecAugment-style), then standardise with the training statistics."""

    def __init__(self, width: int, mean: float, std: float, train: bool, freq_mask: int = 8):
        self.width, self.mean, self.std, self.train, self.freq_mask = width, mean, std, train, freq_mask

    def __call__(self, window: torch.Tensor) -> dict[str, torch.Tensor]:
        margin = window.shape[-1] - self.width
        start = int(torch.randint(0, margin + 1, ())) if self.train and margin > 0 else margin // 2
        x = (window[..., start:start + self.width] - self.mean) / self.std
        if self.train and self.freq_mask > 0:
            band = int(torch.randint(0, self.freq_mask + 1, ()))
            low = int(torch.randint(0, max(1, x.shape[-2] - band), ()))
            x = x.clone()
            x[..., low:low + band, :] = 0.0
        return {"image": x}


def spectrogram_stats(spectrograms: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Mean and standard deviation of every log-mel value of the given spectrograms."""
    if not spectrograms:
        raise ValueError("no spectrogram to take statistics from")
    values = torch.cat([s.flatten() for s in spectrograms.values()])
    return float(values.mean()), float(values.std().clamp(min=1e-6))

"""Synthetic speech for the world's videos: a voice per identity, phrases and pauses, background noise.

Real recordings do not carry their expression class in a constant: the speaker's own pitch and timbre
dominate, people are silent much of the time, and emotion only shifts the delivery. So here:

- each identity has its own mean pitch, harmonic timbre and speaking rate (``Voice.random``);
- speech comes in phrases of syllables separated by pauses drawn without regard to the expression;
- an expression shifts loudness, pitch level and movement, and syllable rate through one arousal value per
  segment: the class's vocal arousal (``labels.vocal_arousal``) plus a per-segment draw, scaled by the
  expression's intensity envelope. Compounds of similar arousal (the surprised ones) sound alike;
- every video has its own noise floor and mains hum.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from abaw_ce import labels

SAMPLE_RATE = 16000
AROUSAL_SPREAD = 0.35  # per-segment spread around a class's vocal arousal: the cue is partial


@dataclass(frozen=True)
class Voice:
    pitch: float             # mean fundamental frequency (Hz)
    harmonics: np.ndarray    # relative amplitudes of the first harmonics: the timbre
    syllables_per_s: float   # speaking rate at rest

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Voice":
        harmonics = rng.uniform(0.1, 1.0, 6) / np.arange(1, 7) ** rng.uniform(0.3, 1.2)
        return cls(pitch=float(rng.uniform(90, 260)), harmonics=harmonics / harmonics.sum(),
                   syllables_per_s=float(rng.uniform(3.0, 5.5)))


def segment_arousal(names: list[str | None], rng: np.random.Generator) -> np.ndarray:
    """Per-frame arousal: one draw per run of equal names around the class's vocal arousal, 0 in gaps."""
    arousal = np.zeros(len(names), dtype=np.float64)
    start = 0
    for k in range(1, len(names) + 1):
        if k == len(names) or names[k] != names[start]:
            if names[start] is not None:
                value = labels.vocal_arousal(names[start]) + rng.normal(0, AROUSAL_SPREAD)
                arousal[start:k] = np.clip(value, -1, 1)
            start = k
    return arousal


def _talking(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """0/1 per sample: phrases of 0.6-2.5 s separated by pauses of 0.3-1.5 s, independent of expression."""
    talking = np.zeros(n_samples, dtype=np.float64)
    k = int(rng.uniform(0, 0.8) * SAMPLE_RATE)
    while k < n_samples:
        phrase = int(rng.uniform(0.6, 2.5) * SAMPLE_RATE)
        talking[k:k + phrase] = 1.0
        k += phrase + int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)
    return talking


def speech(voice: Voice, names: list[str | None], envelope: np.ndarray, fps: float,
           rng: np.random.Generator) -> np.ndarray:
    """Mono samples at ``SAMPLE_RATE`` for a video whose frames show ``names`` at ``envelope`` intensity."""
    n_frames = len(names)
    n_samples = int(n_frames / fps * SAMPLE_RATE)
    t = np.arange(n_samples) / SAMPLE_RATE
    frame = np.minimum((t * fps).astype(int), n_frames - 1)
    arousal = (segment_arousal(names, rng) * envelope)[frame]
    # syllables: a raised-cosine pulse train whose rate follows arousal
    rate = voice.syllables_per_s * (1.0 + 0.25 * arousal)
    syllable_phase = np.cumsum(rate) / SAMPLE_RATE + rng.uniform()
    syllable = np.clip(np.sin(np.pi * (syllable_phase % 1.0)) * 1.3 - 0.3, 0, 1)
    # pitch: the speaker's level, raised and moved more by arousal, with a slow intonation contour
    contour = np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 2 * np.pi))
    f0 = voice.pitch * (1.0 + 0.08 * arousal) * (1.0 + (0.04 + 0.06 * np.clip(arousal, 0, 1)) * contour)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(a * np.sin((h + 1) * phase) for h, a in enumerate(voice.harmonics))
    loudness = 0.25 * (1.0 + 0.35 * arousal)
    audio = voiced * syllable * _talking(n_samples, rng) * loudness
    # background: a noise floor and a hum, both set per video
    audio += rng.normal(0, rng.uniform(0.005, 0.03), n_samples)
    hum = rng.choice([50.0, 60.0])
    audio += rng.uniform(0, 0.02) * np.sin(2 * np.pi * hum * t + rng.uniform(0, 2 * np.pi))
    return audio.astype(np.float32)

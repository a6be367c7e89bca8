"""The synthetic mini-world: rendered faces written in every real dataset format (``abaw-ce synth``).

Layout under the output folder (each read by the adapter named):

- ``faces/`` unlabeled aligned faces for MAE pretraining (``image_folder``);
- ``affwild2/`` cropped_aligned frame folders + ``annotations/EXPR`` and ``annotations/AU`` (``affwild2_*``);
- ``rafdb_basic/``, ``rafdb_compound/`` (``rafdb_basic``, ``rafdb_compound``);
- ``affectnet/`` CSV + images (``affectnet``);
- ``cexpr/`` labelled C-EXPR-DB-style videos with segment CSVs (``cexpr``);
- ``test/`` C-EXPR-DB-style test videos (faces inside scenes, frames without a face, audio), with
  ``test_ground_truth/ground_truth.txt`` (challenge format) and ``test_ground_truth/template.txt``
  (the organisers'-style frame list);
- ``world.json``: scale, seed, counts and the dataset specs to load everything back.
"""
from __future__ import annotations

import ctypes
import functools
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from abaw_ce import challenge_file, labels
from abaw_ce.data import writers
from abaw_ce.errors import OptionError
from abaw_ce.files import atomic_write_text
from abaw_ce.progress import progress_bar
from abaw_ce.synth.face import MARGIN, Identity, Pose, aligned_matrix, composite, render_face
from abaw_ce.synth.voice import SAMPLE_RATE, Voice, speech
from abaw_ce.video import open_video, video_info

AU_ON = 0.4  # an AU intensity at or above this is labelled present


@dataclass(frozen=True)
class Scale:
    image_size: int
    unlabeled: int
    rafdb_basic: int
    rafdb_compound: int
    affectnet: int
    affwild2_videos: int
    affwild2_frames: tuple[int, int]
    cexpr_videos: int
    test_videos: int
    video_seconds: tuple[float, float]
    test_segments_per_class: int  # each challenge class opens at least this many test-video segments


SCALES = {
    "tiny": Scale(112, 200, 210, 140, 140, 6, (30, 60), 10, 8, (3.0, 5.0), 3),
    "small": Scale(112, 2000, 1400, 700, 1000, 20, (80, 160), 8, 10, (6.0, 12.0), 3),
    "medium": Scale(224, 10000, 6000, 3000, 4000, 60, (150, 300), 20, 30, (10.0, 25.0), 3),
}


# --- expressions -----------------------------------------------------------------------------------

def sample_aus(expression: str, rng: np.random.Generator) -> np.ndarray:
    """17 AU intensities for an expression name, following the emotion→AU prior.

    A basic emotion turns on its prototypical AUs and each observational AU with its prior weight as
    probability, at random intensities; a compound takes the union (max) of its pair's samples; neutral
    is near zero; 'other' is a random small set of AUs.
    """
    kind = labels.expression_kind(expression)
    name = labels.normalise_name(expression)
    v = rng.uniform(0.0, 0.12, len(labels.CEXPR_AUS)) * (rng.random(len(labels.CEXPR_AUS)) < 0.3)
    if kind == "basic" or kind == "compound":
        emotions = ((name,) if kind == "basic"
                    else labels.COMPOUND_PAIRS[labels.CEXPR_CLASSES[labels.compound_index(expression)]])
        for emotion in emotions:
            for au, weight in labels.EMOTION_AU_PRIOR[emotion].items():
                if weight >= 1.0:
                    value = rng.uniform(0.55, 1.0)
                elif rng.random() < weight:
                    value = rng.uniform(0.3, 0.8)
                else:
                    continue
                i = labels.CEXPR_AUS.index(au)
                v[i] = max(v[i], value)
    elif name == "other":
        for au in rng.choice(labels.CEXPR_AUS, size=int(rng.integers(1, 4)), replace=False):
            v[labels.CEXPR_AUS.index(int(au))] = rng.uniform(0.3, 0.8)
    return v.astype(np.float32)


def sample_va(expression: str, rng: np.random.Generator) -> tuple[float, float]:
    """A (valence, arousal) pair inside the expression's expected range (``labels.VA_RANGES``), kept a tenth
    of the range away from its edges so that the sign never sits on a boundary."""
    out = []
    for low, high in labels.VA_RANGES[labels.CEXPR_CLASSES[labels.compound_index(expression)]
                                      if labels.expression_kind(expression) == "compound" else
                                      labels.normalise_name(expression)]:
        margin = 0.1 * (high - low)
        out.append(float(rng.uniform(low + margin, high - margin)))
    return out[0], out[1]


def au_presence(intensities: np.ndarray, au_ids=labels.AFFWILD2_AUS) -> np.ndarray:
    """0/1 AU labels over an AU set from 17-AU intensities."""
    idx = [labels.CEXPR_AUS.index(a) for a in au_ids]
    return (intensities[..., idx] >= AU_ON).astype(np.float32)


# --- images ------------------------------------------------------------------------------------------

def clutter(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A background scene: a colour gradient with random rectangles, ellipses and lines."""
    top, bottom = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    img = (top * (1 - t) + bottom * t) * np.ones((1, width, 1), dtype=np.float32)
    img = img.astype(np.uint8)
    for _ in range(int(rng.integers(3, 10))):
        colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + int(rng.uniform(10, width / 3)), y + int(rng.uniform(10, height / 3))),
                          colour, -1)
        elif kind == 1:
            cv2.ellipse(img, (x, y), (int(rng.uniform(5, width / 6)), int(rng.uniform(5, height / 6))),
                        float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            cv2.line(img, (x, y), (int(rng.uniform(0, width)), int(rng.uniform(0, height))), colour,
                     int(rng.integers(1, 5)))
    return img


def degrade(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Blur and sensor noise (JPEG quality is chosen when saving)."""
    if rng.random() < 0.5 * strength:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.3)))
    if rng.random() < 0.6 * strength:
        img = np.clip(img + rng.normal(0, rng.uniform(2, 8), img.shape), 0, 255).astype(np.uint8)
    return img


def occlude(img: np.ndarray, rng: np.random.Generator, region: tuple[float, float, float, float]) -> np.ndarray:
    """Cover part of the face region (x0, y0, x1, y1 in pixels) with a hand-like blob or an object."""
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    cx, cy = rng.uniform(x0 + 0.2 * w, x1 - 0.2 * w), rng.uniform(y0 + 0.5 * h, y1)
    colour = tuple(int(c) for c in rng.uniform(40, 230, 3))
    img = img.copy()
    cv2.ellipse(img, (int(cx), int(cy)), (int(w * rng.uniform(0.15, 0.3)), int(h * rng.uniform(0.1, 0.2))),
                float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return img


def random_pose(rng: np.random.Generator, yaw: float = 0.3) -> Pose:
    return Pose(yaw=float(rng.uniform(-yaw, yaw)), light_dir=float(rng.uniform(-1, 1)),
                light_gain=float(rng.uniform(0.8, 1.15)))


def render_aligned(identity: Identity, aus: np.ndarray, size: int, rng: np.random.Generator,
                   occlusion_p: float = 0.05) -> np.ndarray:
    """An aligned face crop as the real aligned datasets have them, with jitter, clutter and degradations."""
    render = render_face(identity, aus, unit=size, pose=random_pose(rng))
    jitter = (rng.normal(0, 0.02), rng.normal(0, 0.02), rng.normal(0, 0.03), rng.normal(0, 3))
    img = composite(render, clutter(rng, size, size), aligned_matrix(render, size, jitter))
    if rng.random() < occlusion_p:
        img = occlude(img, rng, (0.1 * size, 0.1 * size, 0.9 * size, size))
    return degrade(img, rng)


def _quality(rng: np.random.Generator) -> int:
    return int(rng.integers(60, 96))


# --- expression timelines (videos) -------------------------------------------------------------------

def class_prior(names: tuple[str, ...]) -> np.ndarray:
    counts = np.array([labels.CEXPR_FRAME_COUNTS[n] for n in names], dtype=np.float64)
    return counts / counts.sum()


def timeline(rng: np.random.Generator, n_frames: int, fps: float, classes: tuple[str, ...],
             gaps: bool, prior: np.ndarray | None = None, first: tuple[str, ...] = ()
             ) -> tuple[list[str | None], np.ndarray]:
    """Per-frame class names (None in an unlabelled gap) and an onset→apex→offset intensity envelope.

    Classes are drawn with C-EXPR-DB's class balance unless ``prior`` is given; the first segments show the
    classes in ``first``, in order, each given a fair share of the frames so that every one of them appears.
    """
    names: list[str | None] = []
    envelope = np.zeros(n_frames, dtype=np.float32)
    prior = class_prior(classes) if prior is None else prior
    forced = list(first)
    k = 0
    while k < n_frames:
        if gaps and names and not forced and rng.random() < 0.3:
            length = int(rng.uniform(0.3, 0.8) * fps)
            names += [None] * min(length, n_frames - k)
            k += length
            continue
        length = min(int(rng.uniform(1.0, 2.5) * fps), n_frames - k)
        if forced:
            length = max(1, min(length, (n_frames - k) // len(forced)))
            name = forced.pop(0)
        else:
            name = str(rng.choice(classes, p=prior))
        ramp = np.clip(np.minimum(np.arange(length) + 1, length - np.arange(length)) / max(2.0, 0.3 * fps), 0, 1)
        envelope[k:k + length] = 0.25 + 0.75 * ramp
        names += [name] * length
        k += length
    return names[:n_frames], envelope


def _segments(names: list[str | None], fps: float) -> list[tuple[float, float, str]]:
    out, start = [], 0
    for k in range(1, len(names) + 1):
        if k == len(names) or names[k] != names[start]:
            if names[start] is not None:
                out.append((start / fps, k / fps, names[start]))
            start = k
    return out


def deal_segments(rng: np.random.Generator, classes: tuple[str, ...], rounds: int, videos: int
                  ) -> list[tuple[str, ...]]:
    """Opening segments per video: ``rounds`` shuffled copies of ``classes`` dealt round-robin, redrawn
    until no video has the same class twice in a row (two equal neighbours would merge into one segment)."""
    while True:
        dealt = [str(c) for _ in range(rounds) for c in rng.permutation(classes)]
        hands = [tuple(dealt[v::videos]) for v in range(videos)]
        if all(a != b for hand in hands for a, b in zip(hand, hand[1:])):
            return hands


VFR_TIME_BASE = Fraction(1, 1000)  # millisecond timestamps for variable-frame-rate videos


M_PERTURB = -6  # glibc's mallopt parameter: fill each new allocation with one byte


@functools.cache
def _mallopt():
    """glibc's ``mallopt``, looked up once (the fill below is set around every encoded frame); None without it."""
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return None


@contextmanager
def _filled_allocations() -> Iterator[None]:
    """Inside, glibc fills every new allocation with one fixed byte. The encoder (x264 through PyAV) reads memory it
    has not written: the same frames gave a different video from run to run in the world's process, depending on
    what it had allocated and freed before, and the same video every time with the fill. Kept to the encoder's own
    calls, as filling the rendering's allocations too made the world 30 % slower. Without glibc, nothing."""
    mallopt = _mallopt()
    if mallopt is None:
        yield
        return
    setting = os.environ.get("MALLOC_PERTURB_", "")
    before = int(setting) if setting.isdigit() else 0  # glibc's own reading of the variable at start
    mallopt(M_PERTURB, 165)
    try:
        yield
    finally:
        mallopt(M_PERTURB, before)


def write_video(path: Path, frames, fps: int, width: int, height: int, audio: np.ndarray | None,
                sample_rate: int = 16000, crf: int = 23, frame_times: np.ndarray | None = None,
                audio_start: float = 0.0) -> None:
    """H.264 mp4 (and an AAC track when ``audio`` is given) with PyAV, frame by frame; the same frames give the
    same file.

    ``frame_times`` (seconds, one per frame) makes a variable-frame-rate video; ``audio_start`` (seconds) makes
    the sound begin after the first frame, as in recordings whose audio stream starts late.
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with _filled_allocations():
        out = av.open(str(path), "w")
    try:
        with _filled_allocations():
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # Multi-threaded x264 output varies from run to run; one thread (and the fill) keeps it identical.
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            stream.codec_context.thread_count = 1
            if frame_times is not None:
                stream.codec_context.time_base = stream.time_base = VFR_TIME_BASE
            astream = None
            if audio is not None:
                astream = out.add_stream("aac", rate=sample_rate)
                astream.layout = "mono"
        for k, frame in enumerate(frames):  # rendered outside the fill
            with _filled_allocations():
                picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
                if frame_times is not None:
                    picture.pts, picture.time_base = int(round(frame_times[k] / VFR_TIME_BASE)), VFR_TIME_BASE
                out.mux(stream.encode(picture))
        with _filled_allocations():
            out.mux(stream.encode())
            if astream is not None:
                samples = np.clip(audio, -1, 1).astype(np.float32)
                chunk, first = 1024, int(round(audio_start * sample_rate))
                for i in range(0, len(samples), chunk):
                    piece = samples[i:i + chunk][None, :]
                    af = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                    af.sample_rate = sample_rate
                    af.pts = first + i
                    out.mux(astream.encode(af))
                out.mux(astream.encode())
    finally:
        with _filled_allocations():
            out.close()


def looped_frames(sources: list[Path], frames: int, stamp: int = 0) -> Iterator[np.ndarray]:
    """``frames`` RGB frames of ``sources`` played in turn, again and again (only sources of the first one's size).
    ``stamp`` > 0 blacks out that many pixels of each frame's top row, so that videos made of the same sources
    differ in content (the faces step caches by content)."""

    shape, written = None, 0
    while written < frames:
        before = written
        for source in sources:
            with open_video(source) as video:
                for image in video:
                    shape = shape or image.shape
                    if image.shape != shape:
                        break
                    if stamp:
                        image[0, :stamp] = 0
                    yield image
                    written += 1
                    if written >= frames:
                        return
        if written == before:
            raise ValueError(f"no frame could be read from {[str(s) for s in sources]}")


def looped_video(sources: list[Path], path: Path, frames: int, stamp: int = 0, fps: int = 30) -> int:
    """A long test video: ``looped_frames`` written as H.264 at ``fps``; returns the frames written."""

    info = video_info(sources[0])
    count = 0

    def counted() -> Iterator[np.ndarray]:
        nonlocal count
        for image in looped_frames(sources, frames, stamp):
            count += 1
            yield image

    write_video(path, counted(), fps, info.width, info.height, None)
    return count


def render_video(path: Path, rng: np.random.Generator, seconds: float, classes: tuple[str, ...],
                 gaps: bool, first: tuple[str, ...] = ()) -> tuple[list[str | None], np.ndarray, int]:
    """A C-EXPR-DB-style video: one identity in a scene, moving, with faceless stretches and its voice.

    Returns the per-frame class names, whether a face is visible in each frame, and the frame rate.
    """
    fps = int(rng.choice([24, 25, 30]))
    width, height = [(320, 240), (426, 240), (480, 360), (640, 360)][int(rng.integers(4))]
    n = int(seconds * fps)
    names, envelope = timeline(rng, n, fps, classes, gaps, first=first)
    identity = Identity.random(rng)
    scene = clutter(rng, height, width)
    base_aus = {name: sample_aus(name, rng) for name in sorted(set(n_ for n_ in names if n_))}
    face_px = rng.uniform(0.33, 0.5) * height
    drift = rng.uniform(0, 2 * np.pi, 4)
    absent = np.zeros(n, dtype=bool)
    if rng.random() < 0.7:  # the face leaves the shot for a while
        start = int(rng.integers(0, max(1, n - fps)))
        absent[start:start + int(rng.uniform(0.3, 0.8) * fps)] = True

    def frames():
        for k in range(n):
            if absent[k]:
                yield degrade(scene, rng, 0.5)
                continue
            name = names[k]
            aus = base_aus[name] * envelope[k] if name else np.zeros(len(labels.CEXPR_AUS), np.float32)
            t = k / fps
            pose = Pose(yaw=0.25 * np.sin(0.7 * t + drift[0]), light_dir=0.5 * np.sin(0.3 * t + drift[1]),
                        light_gain=1.0)
            render = render_face(identity, aus, unit=face_px, pose=pose)
            cx = width * (0.5 + 0.15 * np.sin(0.5 * t + drift[2]))
            cy = height * (0.5 + 0.08 * np.sin(0.6 * t + drift[3]))
            c0 = render.unit * (0.5 + MARGIN)
            m = cv2.getRotationMatrix2D((c0, c0), float(6 * np.sin(0.4 * t + drift[0])), 1.0)
            m[:, 2] += [cx - c0, cy - c0]
            yield degrade(composite(render, scene, m), rng, 0.5)

    audio = speech(Voice.random(rng), names, envelope, fps, rng)
    write_video(path, frames(), fps, width, height, audio, SAMPLE_RATE)
    return names, ~absent, fps


# --- the world ---------------------------------------------------------------------------------------

def contact_sheet(path: str | Path, seed: int = 0, identities: int = 5, size: int = 112) -> Path:
    """PNG grid: a row per expression (neutral, 6 basic, 7 challenge compounds), a column per identity."""
    rng = np.random.default_rng(seed)
    people = [Identity.random(rng) for _ in range(identities)]
    rows = []
    for name in ("neutral", *labels.BASIC_EMOTIONS, *labels.CHALLENGE_COMPOUNDS):
        tiles = []
        for identity in people:
            render = render_face(identity, sample_aus(name, rng), unit=size, pose=random_pose(rng, 0.15))
            tiles.append(composite(render, np.full((size, size, 3), 128, np.uint8), aligned_matrix(render, size)))
        strip = np.hstack(tiles)
        label = np.full((size, 200, 3), 255, np.uint8)
        cv2.putText(label, name.replace("_", " "), (6, size // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
        rows.append(np.hstack([label, strip]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(rows)[..., ::-1])
    return path


def generate_world(out: str | Path, seed: int = 0, scale: str | Scale = "tiny", overwrite: bool = False) -> dict:
    """Write the synthetic world under ``out``; deterministic for (seed, scale)."""
    if isinstance(scale, str) and scale not in SCALES:
        raise OptionError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose another --out or pass --overwrite")
    s = SCALES[scale] if isinstance(scale, str) else scale
    scale = scale if isinstance(scale, str) else "custom"
    started = time.perf_counter()
    # Stream 7 draws valence-arousal only, so adding it left every other output of a seed unchanged.
    streams = np.random.SeedSequence(seed).spawn(8)
    rng = [np.random.default_rng(st) for st in streams]
    rng_va = rng[7]
    size = s.image_size
    counts: dict[str, int] = {}

    bar = progress_bar(total=s.unlabeled + s.rafdb_basic + s.rafdb_compound + s.affectnet + s.affwild2_videos
                       + s.cexpr_videos + s.test_videos, desc=f"synth {scale}", unit="item")

    # unlabeled faces (MAE pretraining): any expression, identities in folders
    r = rng[0]
    every = ("neutral", "other", *labels.BASIC_EMOTIONS, *labels.CEXPR_COMPOUNDS)
    for i in range(s.unlabeled):
        if i % 10 == 0:
            identity = Identity.random(r)
        img = render_aligned(identity, sample_aus(str(r.choice(every)), r), size, r)
        writers.save_image(out / "faces" / f"id{i // 10:04d}" / f"{i:06d}.jpg", img, _quality(r))
        bar.update()
    counts["unlabeled"] = s.unlabeled

    # RAF-DB basic and compound
    r = rng[1]
    basic_names = (*labels.BASIC_EMOTIONS, "neutral")

    def items(n, names, prefix_split=0.8):
        for i in range(n):
            name = str(r.choice(names))
            split = "train" if i < prefix_split * n else "test"
            yield f"{split}_{i + 1:05d}", render_aligned(Identity.random(r), sample_aus(name, r), size, r), name
            bar.update()

    writers.write_rafdb(out / "rafdb_basic", items(s.rafdb_basic, basic_names), "basic", quality=_quality(r))
    writers.write_rafdb(out / "rafdb_compound", items(s.rafdb_compound, tuple(labels.RAFDB_COMPOUND.values())),
                        "compound", quality=_quality(r))
    counts.update(rafdb_basic=s.rafdb_basic, rafdb_compound=s.rafdb_compound)

    # AffectNet: faces with margin (the CSV's face box is the whole image), a few unusable labels
    r = rng[2]
    affectnet_names = tuple(labels.AFFECTNET.values())

    def affectnet_items():
        for i in range(s.affectnet):
            name = str(r.choice(affectnet_names))
            image = render_aligned(Identity.random(r), sample_aus(name, r), size, r)
            yield f"{i % 7}/{i:06d}.jpg", image, name, sample_va(name, rng_va)
            bar.update()

    writers.write_affectnet(out / "affectnet" / "training.csv", out / "affectnet" / "images", affectnet_items())
    counts["affectnet"] = s.affectnet

    # Aff-Wild2: frame folders with EXPR and AU files, -1 rows and frames without an image
    r = rng[3]
    expr_names = tuple(labels.AFFWILD2_EXPR.values())
    for v in range(s.affwild2_videos):
        n = int(r.integers(*s.affwild2_frames))
        identity = Identity.random(r)
        names, envelope = timeline(r, n, 25.0, expr_names, gaps=False,
                                   prior=np.full(len(expr_names), 1 / len(expr_names)))
        au_rows, frames = [], []
        for name, level in zip(names, envelope):
            aus = sample_aus(name, r) * (0.5 + 0.5 * level)
            frames.append(None if r.random() < 0.03 else render_aligned(identity, aus, size, r, 0.02))
            au_rows.append(au_presence(aus))
        au_arr = np.asarray(au_rows, dtype=np.float32)
        unannotated = slice(int(r.integers(0, n // 2)), None)
        block = np.arange(n)[unannotated][: max(1, n // 10)]
        exprs: list[str | None] = list(names)
        for k in block:
            exprs[k] = None
        au_arr[block[::-1][: max(1, len(block) // 2)]] = np.nan
        # valence-arousal: one target per expression segment, following its intensity envelope
        targets = {name: sample_va(name, rng_va) for name in sorted(set(names))}
        va = np.array([targets[name] for name in names], np.float32) * (0.5 + 0.5 * envelope[:, None])
        va[block[: max(1, len(block) // 3)]] = np.nan
        suffix = "_left" if v % 5 == 4 else ""
        writers.write_affwild2_video(out / "affwild2", f"video{v:03d}{suffix}", frames, exprs, au_arr,
                                     quality=_quality(r), va=va)
        bar.update()
    counts["affwild2_videos"] = s.affwild2_videos

    # C-EXPR-DB-style labelled videos (12 compounds + Other, gaps unlabelled)
    r = rng[4]
    # As for the test videos below: every class opens some video, so a small world still shows all 13.
    opening = [str(c) for c in r.permutation(labels.CEXPR_CLASSES)]
    for v in range(s.cexpr_videos):
        names, _, fps = render_video(out / "cexpr" / "videos" / f"{v:03d}.mp4", r, r.uniform(*s.video_seconds),
                                     labels.CEXPR_CLASSES, gaps=True, first=tuple(opening[v::s.cexpr_videos]))
        writers.write_cexpr_annotation(out / "cexpr" / "annotation" / f"{v:03d}.csv", _segments(names, fps))
        bar.update()
    counts["cexpr_videos"] = s.cexpr_videos

    # test videos: every frame one of the 7 challenge classes; ground truth + organisers' template
    r = rng[5]
    truth: dict[str, list[int]] = {}
    visible_rows = ["video,frame,face_visible"]
    # Every class appears in several segments (a class missing from the ground truth caps macro F1 at 6/7,
    # and a class seen once scores all or nothing): shuffled rounds of the 7 are dealt out over the videos
    # as their opening segments.
    opening_by_video = deal_segments(r, labels.CHALLENGE_COMPOUNDS, s.test_segments_per_class, s.test_videos)
    for v in range(s.test_videos):
        vid = f"test{v:03d}"
        names, visible, _ = render_video(out / "test" / f"{vid}.mp4", r, r.uniform(*s.video_seconds),
                                      labels.CHALLENGE_COMPOUNDS, gaps=False,
                                      first=opening_by_video[v])
        truth[vid] = [labels.compound_index(n) for n in names]
        visible_rows += [f"{vid},{k + 1},{int(flag)}" for k, flag in enumerate(visible)]
        bar.update()
    # The organisers' list can miss a decoder's last frame: emulate it on the first video.
    first = sorted(truth)[0]
    truth[first] = truth[first][:-1]
    gt = out / "test_ground_truth"
    challenge_file.write_submission(gt / "ground_truth.txt", truth, overwrite=overwrite)
    template = [challenge_file.SUBMISSION_HEADER] + [challenge_file.frame_location(v, k + 1)
                                                 for v in sorted(truth) for k in range(len(truth[v]))]
    atomic_write_text(gt / "template.txt", "\n".join(template) + "\n", overwrite=overwrite)
    # Which frames show a face: the reference for measuring a detector's rate on the test videos.
    atomic_write_text(gt / "face_visible.csv", "\n".join(visible_rows) + "\n", overwrite=overwrite)
    counts["test_videos"] = s.test_videos
    counts["test_frames"] = sum(len(t) for t in truth.values())
    bar.close()

    contact_sheet(out / "contact_sheet.png", seed, size=max(size, 112))
    info = {"scale": scale, "seed": seed, "image_size": size, "counts": counts,
            "seconds": round(time.perf_counter() - started, 1), "datasets": dataset_specs(out)}
    (out / "world.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return info


def dataset_specs(root: str | Path) -> dict[str, dict]:
    """Adapter specs (``abaw_ce.data.adapters.load_dataset``) of every labelled set in a world."""
    root = Path(root)
    return {
        "unlabeled": {"format": "image_folder", "root": str(root / "faces"), "source": "synth_faces"},
        "rafdb_basic": {"format": "rafdb_basic", "root": str(root / "rafdb_basic")},
        "rafdb_compound": {"format": "rafdb_compound", "root": str(root / "rafdb_compound")},
        "affectnet": {"format": "affectnet", "csv_path": str(root / "affectnet" / "training.csv"),
                      "images": str(root / "affectnet" / "images")},
        "affwild2_expr": {"format": "affwild2_expr", "images": str(root / "affwild2" / writers.AFFWILD2_IMAGES),
                          "annotations": str(root / "affwild2" / writers.AFFWILD2_EXPR_DIR)},
        "affwild2_au": {"format": "affwild2_au", "images": str(root / "affwild2" / writers.AFFWILD2_IMAGES),
                        "annotations": str(root / "affwild2" / writers.AFFWILD2_AU_DIR)},
        "affwild2_va": {"format": "affwild2_va", "images": str(root / "affwild2" / writers.AFFWILD2_IMAGES),
                        "annotations": str(root / "affwild2" / writers.AFFWILD2_VA_DIR)},
        "cexpr": {"format": "cexpr", "root": str(root / "cexpr")},
    }

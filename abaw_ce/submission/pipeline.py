"""Test videos -> faces -> fold-model probabilities -> fusion and smoothing -> the challenge file.

Every frame gets a label: frames without a face take probabilities interpolated from neighbouring frames,
a video without any face takes the mean probabilities of all faces found, and when the organisers' template
is given its rows are exactly the file's rows (frames past the decoded end repeat the last label, decoded
frames it does not list are dropped), each case reported per video; a damaged video that still decodes in
part keeps its decoded frames, with a note. Nothing is written unless every video the file must hold can be
read (without a template: every video in the folder) and every run passes the run checks of
``submit/validate.py`` (unless ``allow_partial``), and an existing file is never replaced without ``overwrite``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from abaw_ce import challenge_file, fusion, labels
from abaw_ce.data.packed import PackedFaces
from abaw_ce.data.processes import launched_processes, mark_done, mark_path, wait_for_marks
from abaw_ce.errors import InputError, OptionError, UserError, read_text_lines
from abaw_ce.files import atomic_write_text
from abaw_ce.faces.pipeline import STORE_DIR, entry_names, file_kind, list_inputs, run_faces, search_options
from abaw_ce.submission.inference import (PROBS_DIR, RunShares, load_models, predict_audio, predict_crop_part,
                                         read_video_probs, save_video_probs)
from abaw_ce.submission.run_checks import RunCheck, check_runs, is_finished
from abaw_ce.train.loop import inference_bf16
from abaw_ce.video import VIDEO_SUFFIXES


@dataclass
class VideoReport:
    video: str
    frames: int
    faces: int
    notes: list[str] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)


def video_labels(face_found: np.ndarray, probs: np.ndarray, fallback: np.ndarray, method: str = "sum",
                 weights: fusion.WeightedFusion | None = None, smoothing: str = "gaussian", window: int = 9,
                 audio_probs: np.ndarray | None = None, audio_weight: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """Class 0..6 for each frame of one video, and what was done to get there.

    ``audio_probs`` (the audio track's per-frame probabilities, None when the video has no sound) are
    late-fused with the visual ones: (1 - audio_weight) * visual + audio_weight * audio. With audio_weight 1
    (audio models only) the visual probabilities are not used and ``fallback`` stands in for missing sound.
    """
    notes = []
    if audio_weight >= 1.0:
        if audio_probs is not None:
            filled = audio_probs
        else:
            filled = np.repeat(fallback[None, :], len(probs), axis=0)
            notes.append("no audio track: every frame takes the mean audio probabilities of the other videos")
    elif face_found.any():
        filled = fusion.fill_missing(probs, face_found)
        missing = int((~face_found).sum())
        if missing:
            notes.append(f"{missing} frame(s) without a face filled from their neighbours")
    else:
        filled = np.repeat(fallback[None, :], len(probs), axis=0)
        notes.append("no face found in any frame: every frame takes the mean probabilities of all test faces")
    if 0.0 < audio_weight < 1.0:
        if audio_probs is None:
            notes.append("no audio track: the audio models abstain, the visual track alone labels it")
        else:
            filled = (1.0 - audio_weight) * filled + audio_weight * audio_probs
    if len(probs) < window and smoothing != "none":
        notes.append(f"shorter than the smoothing window ({len(probs)} < {window} frames)")
    smoothed = fusion.smooth(filled, smoothing, window)
    return fusion.fuse(smoothed, method, weights), notes


def align_to_template(decoded_frames: np.ndarray, decoded_labels: np.ndarray, wanted: np.ndarray
                      ) -> tuple[np.ndarray, list[str]]:
    """Labels for the template's frame numbers of one video."""
    lookup = dict(zip(decoded_frames.tolist(), decoded_labels.tolist()))
    last = int(decoded_labels[-1])
    out = np.array([lookup.get(int(f), last if f > decoded_frames.max() else -1) for f in wanted])
    notes = []
    padded = int((wanted > decoded_frames.max()).sum())
    if padded:
        notes.append(f"template lists {padded} frame(s) past the {int(decoded_frames.max())} decoded: padded "
                     f"with the last label")
    holes = out < 0
    if holes.any():  # template frames inside the video that the decoder skipped: nearest decoded frame
        for i in np.flatnonzero(holes):
            nearest = decoded_frames[np.argmin(np.abs(decoded_frames - wanted[i]))]
            out[i] = lookup[int(nearest)]
        notes.append(f"{int(holes.sum())} template frame(s) not decoded: nearest decoded frame's label")
    trimmed = int(len(set(decoded_frames.tolist()) - set(wanted.tolist())))
    if trimmed:
        notes.append(f"{trimmed} decoded frame(s) not in the template: left out")
    return out, notes


TRACKS = ("auto", "emotion", "cexprnet", "multitask")


def check_track(models: Sequence, track: str) -> None:
    """With an explicit ``track``, every model must belong to it (the track is read from each export)."""
    if track not in TRACKS:
        raise OptionError(f"track must be one of {TRACKS}, got {track!r}")
    if track == "auto":
        return
    other = [f"{m.path} ({m.track})" for m in models if m.track != track]
    if other:
        raise OptionError(f"--track {track}: these exports belong to another track: {', '.join(other[:5])}; "
                          f"drop --track (auto) to ensemble tracks")


def make_submission(videos: str | Path, runs: Sequence[str | Path], out: str | Path,
                    template: str | Path | None = None, work_dir: str | Path | None = None,
                    detector: str = "auto", crop_size: int = 224, method: str = "sum",
                    fusion_weights: fusion.WeightedFusion | None = None, smoothing: str = "gaussian",
                    window: int = 9, flip: bool = False, batch_size: int = 256, device: str | None = None,
                    overwrite: bool = False, progress: bool = True,
                    run_weights: Sequence[float] | None = None, track: str = "auto",
                    allow_partial: bool = False, precision: str = "auto", distributed: bool = False,
                    redetect_every: int = 1, workers: int | None = None, compile_models: bool = False,
                    search_side: int | None = None) -> dict[str, Any] | None:
    """Write the challenge file for every video under ``videos``; returns the summary (also saved as JSON).
    ``track`` other than "auto" requires every run to be of that track (emotion or cexprnet). Runs that fail the
    run checks (a fold missing or unfinished, a broken fold) are refused unless ``allow_partial``: then the
    finished folds are used and the summary lists what was left out. ``fusion_weights`` is the fitted weighted
    fusion (``tune_fusion``'s, for ``method="weighted"``); ``run_weights`` weigh the runs against each other.
    ``precision`` follows the training rule (``auto``: bf16 on a GPU that supports it, else fp32).

    ``distributed`` and several launched processes (torchrun, ``accelerate launch``): the faces step's files and the
    inference batches are split over the processes (each on its own GPU when there are GPUs); the main process
    writes the file, the same file one process writes, and returns the summary; the others return None.
    ``redetect_every``: the faces step's tracked search (``run_faces``); ``search_side``: the OpenCV detector's
    full searches on frames scaled to at most this many pixels on the longer side; ``workers``: crop loader processes;
    ``compile_models``: every model through ``torch.compile``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; refusing to overwrite it (pass --overwrite to replace it)")
    rank, processes = launched_processes() if distributed else (0, 1)
    template_rows = challenge_file.read_template(template) if template is not None else None
    device = device or process_device(processes)
    checked, models, shares = _checked_models(runs, device, run_weights, track, allow_partial, compile_models)
    work = Path(work_dir) if work_dir is not None else out.with_name(out.stem + "_work")
    videos = Path(videos)
    name_of, names = video_names(videos, work, template, template_rows)
    progress = progress and rank == 0
    faces = faces_of_videos(videos, work, name_of, names, template_rows, detector, crop_size, progress,
                            processes > 1, redetect_every, search_side)
    if processes > 1:  # the others read the crops once the main process has written them
        if rank == 0:
            mark_done(work, "faces", 0)
        else:
            wait_for_marks(work, "faces", [0], remove=False)
    audio_weight = shares.modality_share("audio")
    faces_dir = work / "faces"
    rows, values = visual_probs(faces_dir, models, shares, audio_weight, batch_size, flip, device, progress,
                                inference_bf16(precision, device), (rank, processes), workers)
    probs = gather_probs(work, rows, values, rank, processes)
    if probs is None:
        return None
    if processes > 1:  # every process has marked its part done, so each has read the crops: the mark can go
        mark_path(work, "faces", 0).unlink(missing_ok=True)
    faces_dir, damaged, left_out = faces
    per_video = save_video_probs(faces_dir, probs, work / PROBS_DIR)
    if not per_video:
        raise InputError(videos, "no video could be decoded here")
    audio_of = (audio_probs_of_videos(videos, name_of, per_video, models, shares, device, batch_size)
                if audio_weight > 0 else {})
    fallback = _fallback_probs(probs, audio_of, audio_weight)
    if template_rows is not None:
        missing = sorted(set(template_rows["video"]) - set(per_video))
        if missing:
            raise InputError(Path(template), f"lists {len(missing)} video(s) that could not be decoded in "
                                             f"{videos}: {missing[:5]}; nothing was written")
    rows, reports, faces_of = _label_videos(per_video, template_rows, damaged, fallback, audio_of, audio_weight,
                                            method, fusion_weights, smoothing, window)
    written = challenge_file.write_submission(out, rows, overwrite=overwrite, keep_order=template_rows is not None)
    summary = _summary(reports, rows, runs, models, method, smoothing, window, written, left_out)
    summary.update(_runs_summary(runs, run_weights, shares, audio_weight, checked, audio_of))
    atomic_write_text(out.with_name(out.stem + "_summary.json"), json.dumps(summary, indent=2) + "\n",
                                 overwrite=True)
    _timelines(faces_of, rows, out.with_name(out.stem + "_timelines.png"))
    return summary


def _checked_models(runs: Sequence[str | Path], device: str, run_weights: Sequence[float] | None, track: str,
                    allow_partial: bool, compile_models: bool = False) -> tuple[RunCheck, list, RunShares]:
    """The run checks (before any decoding), the runs' models and the share of each run."""
    checked = check_runs(runs)  # fails early on a bad run, before any decoding
    if not checked.ok and not allow_partial:
        raise UserError("the runs fail their checks (as submit/validate.py checks them):\n  "
                        + "\n  ".join(checked.problems) + "\nnothing was written (pass --allow-partial to go on "
                                                           "with the finished folds only)")
    models = load_models(runs, device, compile_models)
    check_track(models, track)
    shares = RunShares.of(models, run_weights, n_runs=len(runs))  # every part below weighs runs with these
    return checked, models, shares


def video_names(videos: Path, work: Path, template: str | Path | None, template_rows: pd.DataFrame | None
                 ) -> tuple[dict[str, str], set[str]]:
    """The folder's files (relative path -> the name the faces step files its frames under) and the names of
    its videos; InputError when there is no video, or the template lists one that is not here."""
    if not videos.is_dir():
        raise InputError(videos, "video folder not found")
    inputs = list_inputs(videos, exclude=[work])
    if not inputs:
        raise InputError(videos, "no files in this folder; nothing was written")
    # relative path (as the faces report gives it) -> the name the faces step files its frames under
    name_of = {p.relative_to(videos).as_posix(): n for p, n in entry_names(inputs, videos).items()}
    names = {n for path, n in name_of.items() if file_kind(Path(path)) == "video"}
    if not names:
        raise InputError(videos, f"no video files here ({len(inputs)} other file(s), e.g. {inputs[0].name}; "
                                 f"expected {', '.join(VIDEO_SUFFIXES)}); nothing was written")
    if template_rows is not None:
        missing = sorted(set(template_rows["video"]) - names)
        if missing:
            raise InputError(Path(template), f"lists {len(missing)} video(s) not found in {videos}: "
                                             f"{missing[:5]}; nothing was written")
    return name_of, names


def faces_of_videos(videos: Path, work: Path, name_of: dict[str, str], names: set[str],
                     template_rows: pd.DataFrame | None, detector: str, crop_size: int, progress: bool,
                     distributed: bool = False, redetect_every: int = 1, search_side: int | None = None
                     ) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The faces step on the folder: its folder, the damaged (partly decoded) videos by name, and what is left
    out; InputError when a video the file must hold could not be read. Under several processes (``distributed``)
    each does its share of the files and only the main process, which writes the outputs, gets a result."""
    faces_dir = work / "faces"
    faces = run_faces(videos, faces_dir, detector=detector, size=crop_size, overwrite=True, progress=progress,
                      cache_dir=work / "faces_cache", distributed=distributed, redetect_every=redetect_every,
                      detector_options=search_options(search_side, detector))
    if faces is None:
        return None
    damaged = {name_of[f.path]: f for f in faces.files if f.kind == "video" and f.status == "partial"}
    unreadable = {name_of[f.path]: f for f in faces.files if f.kind == "video" and f.status == "error"}
    wanted_videos = set(template_rows["video"]) if template_rows is not None else names
    needed = sorted(unreadable.keys() & wanted_videos)
    if needed:  # the file would lack these videos: stop before writing anything
        which = "video(s) the template lists" if template_rows is not None else "video(s)"
        hint = "" if template_rows is not None else ", or pass a template that leaves them out"
        raise InputError(videos, f"{len(needed)} {which} could not be read: "
                                 + "; ".join(f"{unreadable[v].path} ({unreadable[v].reason})" for v in needed)
                                 + f"; nothing was written (replace or remove them{hint}; the faces of the other "
                                   f"videos are cached in {work}, so a rerun is quick)")
    left_out = [f"{f.path}: not a video: left out" for f in faces.files if f.kind != "video"]
    left_out += [f"{unreadable[v].path}: could not be read ({unreadable[v].reason}); not in the template: left out"
                 for v in sorted(unreadable)]
    return faces_dir, damaged, left_out


def process_device(processes: int = 1) -> str:
    """This process's device: its own GPU (``LOCAL_RANK``) when several processes share a machine's GPUs."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if processes == 1:
        return "cuda"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0) % torch.cuda.device_count()}"


def visual_probs(faces_dir: Path, models: list, shares: RunShares, audio_weight: float, batch_size: int,
                 flip: bool, device: str, progress: bool, bf16: bool | None = None, part: tuple[int, int] = (0, 1),
                 workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(store rows, (rows, 6) probabilities) of the visual runs for this process's ``part`` of the face crops
    (``predict_crop_part``); NaN when the audio runs carry every share (the crops are then not looked at, and the
    main process answers for all of them). ``bf16`` None: the ``auto`` precision rule."""
    if audio_weight < 1.0:
        bf16 = inference_bf16("auto", device) if bf16 is None else bf16
        return predict_crop_part(faces_dir / STORE_DIR, models, shares, batch_size=batch_size, flip=flip,
                                 device=device, bf16=bf16, progress=progress, part=part, workers=workers)
    count = len(PackedFaces(faces_dir / STORE_DIR)) if part[0] == 0 else 0
    return np.arange(count), np.full((count, len(labels.BASIC_EMOTIONS)), np.nan, np.float32)


def gather_probs(work: Path, rows: np.ndarray, values: np.ndarray, rank: int, processes: int) -> np.ndarray | None:
    """Every crop's probabilities, in store order, in the main process (None in the others, which hand theirs over
    through ``work``)."""
    if processes == 1:
        return values[np.argsort(rows)]

    def part_path(r: int) -> Path:
        return work / f".probs-part-{r}.npz"

    if rank != 0:
        temp = part_path(rank).with_suffix(".partial.npz")
        np.savez(temp, rows=rows, values=values)
        os.replace(temp, part_path(rank))
        mark_done(work, "probs", rank)
        return None
    wait_for_marks(work, "probs", range(1, processes))
    parts = [(rows, values)]
    for r in range(1, processes):
        with np.load(part_path(r)) as data:
            parts.append((data["rows"], data["values"]))
        part_path(r).unlink()
    every = np.concatenate([r for r, _ in parts])
    probs = np.concatenate([v for _, v in parts])[np.argsort(every)]
    if not np.array_equal(np.sort(every), np.arange(len(every))):
        raise RuntimeError(f"the processes' parts cover {len(every)} rows, not each crop once")
    return probs


def audio_probs_of_videos(videos: Path, name_of: dict[str, str], per_video: dict[str, Path], models: list,
                 shares: RunShares, device: str, batch_size: int) -> dict[str, np.ndarray | None]:
    """Per video, the audio runs' probabilities at its decoded frames (None for a video without sound)."""
    file_of = {n: videos / path for path, n in name_of.items()}
    return {video: predict_audio(file_of[video], read_video_probs(path)[0], models, shares, device, batch_size)
            for video, path in per_video.items()}


def _fallback_probs(probs: np.ndarray, audio_of: dict[str, np.ndarray | None], audio_weight: float) -> np.ndarray:
    """What a frame with nothing to go on takes: the mean probabilities of every face (of every heard frame
    when the audio runs carry every share), uniform when there are none."""
    n_basic = len(labels.BASIC_EMOTIONS)
    if audio_weight >= 1.0:
        heard = [a for a in audio_of.values() if a is not None]
        return np.concatenate(heard).mean(axis=0) if heard else np.full(n_basic, 1.0 / n_basic)
    return probs.mean(axis=0) if len(probs) else np.full(n_basic, 1.0 / n_basic)


def _label_videos(per_video: dict[str, Path], template_rows: pd.DataFrame | None, damaged: dict[str, Any],
                  fallback: np.ndarray, audio_of: dict[str, np.ndarray | None], audio_weight: float, method: str,
                  fusion_weights: fusion.WeightedFusion | None, smoothing: str, window: int
                  ) -> tuple[pd.DataFrame, list[VideoReport], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The file's rows (the template's rows in its order when there is one), a report per video, and per video
    its decoded frames and which had a face (for the timelines)."""
    reports, parts, faces_of = [], [], {}
    for video, path in per_video.items():
        frames, face_found, values = read_video_probs(path)
        faces_of[video] = (frames, face_found)
        classes, notes = video_labels(face_found, values, fallback, method, fusion_weights, smoothing, window,
                                      audio_of.get(video), audio_weight)
        if video in damaged:
            notes.insert(0, f"damaged video, labelled from its {len(frames)} decoded frame(s): "
                            f"{damaged[video].reason}")
        if template_rows is not None:
            wanted = template_rows.loc[template_rows["video"] == video, "frame"].to_numpy(np.int64)
            if len(wanted) == 0:
                notes.append("not in the template: left out")
                reports.append(VideoReport(video, len(frames), int(face_found.sum()), notes))
                continue
            classes, more = align_to_template(frames, classes, wanted)
            notes += more
            frames = wanted
        parts.append(pd.DataFrame({"video": video, "frame": frames, "label": classes}))
        reports.append(VideoReport(video, len(frames), int(face_found.sum()), notes,
                                   np.bincount(classes, minlength=7).tolist()))
    rows = pd.concat(parts, ignore_index=True)
    if template_rows is not None:  # the template's rows in the template's order, exactly
        rows = template_rows.merge(rows, on=["video", "frame"], how="left")
    return rows, reports, faces_of


def _runs_summary(runs: Sequence[str | Path], run_weights: Sequence[float] | None, shares: RunShares,
                  audio_weight: float, checked: RunCheck, audio_of: dict[str, np.ndarray | None]) -> dict[str, Any]:
    """The summary's part about the runs: their weights and shares, and what the run checks let through."""
    return {"run_weights": [float(w) for w in run_weights] if run_weights is not None else [1.0] * len(runs),
            "run_shares": list(shares.shares), "audio_weight": audio_weight,
            "run_problems": checked.problems,  # empty unless allow_partial let them through
            "unfinished": checked.unfinished,
            "videos_without_audio": sorted(v for v, a in audio_of.items() if a is None)}


def _summary(reports: list[VideoReport], rows: pd.DataFrame, runs: Sequence[str | Path], models: list,
             method: str, smoothing: str, window: int, written: Path, left_out: list[str]) -> dict[str, Any]:
    counts = np.bincount(rows["label"].to_numpy(np.int64), minlength=7).astype(np.float64)
    share = counts / max(counts.sum(), 1)
    prior = np.array([labels.CEXPR_FRAME_COUNTS[c] for c in labels.CHALLENGE_COMPOUNDS], dtype=np.float64)
    prior /= prior.sum()
    # KL(predicted class share || C-EXPR-DB class share): a label-free sanity check, large = suspicious.
    kl = float(np.sum(np.where(share > 0, share * np.log(np.maximum(share, 1e-12) / prior), 0.0)))
    return {"submission": str(written), "frames": int(len(rows)), "videos": len(reports),
            "faces_found": int(sum(r.faces for r in reports)), "models": [str(m.path) for m in models],
            "runs": [str(r) for r in runs], "fusion": method, "smoothing": smoothing, "window": window,
            "class_histogram": dict(zip(labels.CHALLENGE_COMPOUNDS, counts.astype(int).tolist())),
            "kl_to_cexpr_prior": kl, "per_video": [asdict(r) for r in reports], "left_out": left_out}


def _timelines(faces_of: dict[str, tuple[np.ndarray, np.ndarray]], rows: pd.DataFrame, path: Path) -> None:
    """One strip per video: the fused class over time, frames without a face shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    videos = sorted(faces_of)
    height = 1.1 * len(videos) + 0.6
    # Fixed margins (inches) instead of tight_layout, which draws the whole figure once more to measure it.
    fig, axes = plt.subplots(len(videos), 1, figsize=(10, height), squeeze=False,
                             gridspec_kw=dict(left=0.11, right=0.99, top=1 - 0.25 / height, bottom=0.45 / height,
                                              hspace=0.45))
    for ax, video in zip(axes[:, 0], videos):
        frames, face_found = faces_of[video]
        part = rows[rows["video"] == video]
        ax.step(part["frame"], part["label"], where="post", lw=1)
        ax.fill_between(frames, -0.5, 6.5, where=~face_found, step="mid", color="0.85", lw=0)
        ax.set_ylim(-0.5, 6.5)
        ax.set_yticks(range(7), [c.replace("_", " ") for c in labels.CHALLENGE_COMPOUNDS], fontsize=5)
        ax.set_title(video, fontsize=7, loc="left")
    axes[-1, 0].set_xlabel("frame (grey: no face found)")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def newest_finished_run(root: Path = Path("runs")) -> Path:
    """The emotion run under ``root`` whose last fold finished most recently, among the runs whose every fold
    (as many as their config.yaml says) has finished."""
    from omegaconf import OmegaConf

    candidates = []
    for config in root.glob("*/config.yaml"):
        run = config.parent
        folds = [run / f"fold_{k}" for k in range(int(OmegaConf.load(config).data.get("folds", 0) or 0))]
        if folds and all(is_finished(f) and (f / "export").is_dir() for f in folds):
            candidates.append((max((f / "status.json").stat().st_mtime for f in folds), str(run)))
    if not candidates:
        raise InputError(root, "no emotion run with every fold finished here; pass --models RUN [RUN ...]")
    return Path(max(candidates)[1])


def read_fusion_weights(path: Path) -> fusion.WeightedFusion:
    """A fitted weighted fusion (``tune_fusion``'s JSON); InputError names the file when it is not one."""
    text = "\n".join(read_text_lines(path))  # its own InputError for a missing, empty or non-UTF-8 file
    try:
        return fusion.WeightedFusion.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"not a fitted weighted fusion (expected JSON with weights and biases: "
                               f"{type(err).__name__}: {err})") from None


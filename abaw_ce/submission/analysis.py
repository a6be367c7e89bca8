"""Error analysis of a challenge file against the ground truth (``abaw-ce analyze``): where a submission goes wrong.

``analyze_submission`` writes into its folder:

- ``per_class.csv``: F1, precision, recall, support (frames) and ground-truth segments of each class;
- ``confusion.png``: the confusion matrix, rows = truth;
- ``timelines/<video>.png``: true and predicted class along the frames, wrong frames marked (x), frames without
  a detected face shaded (with the faces step's ``frames.csv`` only);
- ``position.png``: accuracy by relative position within the ground-truth segment, in 10 bins;
- ``report.md``: every table and figure (markdown, relative links); ``analysis.json``: every figure.

A segment is a maximal run of one true class over consecutive frames of a video. A frame's relative position in
its segment runs from 0 (first frame) to 1 (last); onset is below 0.25, offset above 0.75, apex in between.
The overall macro F1 is the challenge's (all 7 classes); the macro F1 of a subset of frames (with / without a
face, onset / apex / offset) averages the classes that occur in that subset's truth or predictions, as a class
absent from a subset says nothing about it.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

from abaw_ce import challenge_file, labels
from abaw_ce.errors import InputError, OptionError
from abaw_ce.files import atomic_write_json, atomic_write_text

MARKER = ".abaw-ce-analysis"
PHASES = ("onset", "apex", "offset")
ONSET_END, OFFSET_START = 0.25, 0.75
POSITION_BINS = 10
LISTED = 5  # unmatched frames named in an error


# --- inputs ------------------------------------------------------------------------------------------

def matched_frames(submission: Path, ground_truth: Path) -> tuple[pd.DataFrame, challenge_file.Score]:
    """(video, frame, true, pred) of every ground-truth frame, sorted, and the challenge score; an InputError
    naming the submission when its frames differ from the ground truth's."""
    truth = challenge_file.read_submission(ground_truth)
    pred = challenge_file.read_submission(submission)
    merged = truth[["video", "frame", "label"]].merge(pred[["video", "frame", "label"]], on=["video", "frame"],
                                                      how="outer", suffixes=("_true", "_pred"), indicator=True)
    _refuse_unmatched(merged[merged["_merge"] == "left_only"], submission,
                      f"frame(s) of the ground truth {ground_truth} have no prediction")
    _refuse_unmatched(merged[merged["_merge"] == "right_only"], submission,
                      f"frame(s) are not in the ground truth {ground_truth}")
    rows = merged.rename(columns={"label_true": "true", "label_pred": "pred"})[["video", "frame", "true", "pred"]]
    rows = rows.astype({"true": np.int64, "pred": np.int64})
    rows = rows.sort_values(["video", "frame"], kind="stable").reset_index(drop=True)
    return rows, challenge_file.score(pred, truth)


def _refuse_unmatched(unmatched: pd.DataFrame, path: Path, problem: str) -> None:
    if unmatched.empty:
        return
    first = unmatched.sort_values(["video", "frame"]).head(LISTED)
    names = ", ".join(challenge_file.frame_location(v, f) for v, f in zip(first["video"], first["frame"]))
    more = ", ..." if len(unmatched) > LISTED else ""
    raise InputError(path, f"{len(unmatched)} {problem}: {names}{more}")


def face_found(path: Path, rows: pd.DataFrame) -> np.ndarray:
    """Whether the faces step found a face in each of ``rows``' frames, from its frames.csv (extra frames of the
    table, e.g. one more decoded frame, are ignored; a frame it lacks is an InputError)."""
    if not path.is_file():
        raise InputError(path, "file not found" if not path.exists() else "not a regular file")
    try:
        table = pd.read_csv(path, dtype={"video": str})
    except (ValueError, UnicodeDecodeError) as err:  # pandas' parser and empty-file errors are ValueErrors
        raise InputError(path, f"not a CSV table ({err})") from None
    missing = {"video", "frame", "face_found"} - set(table.columns)
    if missing:
        raise InputError(path, f"expected the faces step's columns video, frame, face_found; missing "
                               f"{sorted(missing)}")
    try:
        table = table.astype({"frame": np.int64, "face_found": np.float64})
    except (ValueError, TypeError):
        raise InputError(path, "frame must be an integer and face_found 0 or 1") from None
    if table.duplicated(["video", "frame"]).any():
        raise InputError(path, "a (video, frame) appears more than once")
    merged = rows[["video", "frame"]].merge(table, on=["video", "frame"], how="left")
    _refuse_unmatched(merged[merged["face_found"].isna()], path, "frame(s) of the ground truth are not in the table")
    return merged["face_found"].to_numpy() != 0


# --- segments and positions --------------------------------------------------------------------------

def segment_ids(video: np.ndarray, frame: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Segment number of each frame (rows sorted by video and frame): a new segment starts at a new video, a
    new true class, or a gap in the frame numbers (frames the ground truth leaves out split a run)."""
    new = np.ones(len(frame), dtype=bool)
    new[1:] = (video[1:] != video[:-1]) | (true[1:] != true[:-1]) | (frame[1:] != frame[:-1] + 1)
    return np.cumsum(new) - 1


def relative_positions(segments: np.ndarray) -> np.ndarray:
    """Each frame's place in its segment, 0 = first frame, 1 = last; 0.5 for a one-frame segment (its apex)."""
    ids = pd.Series(segments)
    index = ids.groupby(ids).cumcount().to_numpy(np.float64)
    length = ids.groupby(ids).transform("size").to_numpy(np.float64)
    return np.where(length > 1, index / np.maximum(length - 1, 1), 0.5)


def phase_of(position: np.ndarray) -> np.ndarray:
    return np.select([position < ONSET_END, position > OFFSET_START], ["onset", "offset"], "apex")


def position_bin(position: np.ndarray) -> np.ndarray:
    return np.minimum((position * POSITION_BINS).astype(np.int64), POSITION_BINS - 1)  # 1.0 in the last bin


# --- figures -----------------------------------------------------------------------------------------

def subset_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Frames, accuracy and macro F1 (over the classes in this subset's truth or predictions); None if empty."""
    if len(true) == 0:
        return {"frames": 0, "accuracy": None, "macro_f1": None}
    return {"frames": int(len(true)), "accuracy": float(np.mean(true == pred)),
            "macro_f1": float(f1_score(true, pred, average="macro", zero_division=0))}


def per_class_table(rows: pd.DataFrame) -> pd.DataFrame:
    classes = list(range(challenge_file.N_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(rows["true"], rows["pred"], labels=classes,
                                                                     zero_division=0)
    first_of_segment = rows.drop_duplicates("segment")
    segments = np.bincount(first_of_segment["true"], minlength=len(classes))
    return pd.DataFrame({"class": labels.CHALLENGE_COMPOUNDS, "index": classes, "f1": f1, "precision": precision,
                         "recall": recall, "support": support, "segments": segments})


def most_confused(confusion: np.ndarray) -> list[dict[str, Any]]:
    """For each class with ground-truth frames, the class its frames are most often predicted as instead (the
    lower index on a tie; None when none is wrong), with the count and share of the class's frames."""
    out = []
    for k, name in enumerate(labels.CHALLENGE_COMPOUNDS):
        support = int(confusion[k].sum())
        if support == 0:
            continue
        errors = confusion[k].copy()
        errors[k] = 0
        other = int(np.argmax(errors))
        count = int(errors[other])
        out.append({"class": name, "mistaken_for": labels.CHALLENGE_COMPOUNDS[other] if count else None,
                    "frames": count, "share": count / support})
    return out


def grouped_scores(rows: pd.DataFrame, key: str, groups: list) -> dict:
    return {str(g): subset_scores(*_labels_of(rows[rows[key] == g])) for g in groups}


def _labels_of(part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return part["true"].to_numpy(), part["pred"].to_numpy()


def accuracy_by_position(rows: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for b in range(POSITION_BINS):
        part = rows[rows["position_bin"] == b]
        out.append({"from": b / POSITION_BINS, "to": (b + 1) / POSITION_BINS, "frames": int(len(part)),
                    "accuracy": float(np.mean(part["true"] == part["pred"])) if len(part) else None})
    return out


def per_video(rows: pd.DataFrame, timeline_files: dict[str, str]) -> list[dict[str, Any]]:
    return [{"video": video, "frames": int(len(part)), "accuracy": float(np.mean(part["true"] == part["pred"])),
             "segments": int(part["segment"].nunique()), "timeline": timeline_files[video]}
            for video, part in rows.groupby("video", sort=True)]


# --- plots -------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def timeline_name(video: str) -> str:
    """timelines/<video>.png, with characters other than letters, digits, '.', '-', '_' replaced (a video name
    may hold '/')."""
    return f"timelines/{re.sub(r'[^A-Za-z0-9._-]', '_', video)}.png"


def plot_timeline(part: pd.DataFrame, path: Path, title: str, show_faces: bool) -> None:
    plt = _pyplot()
    frame, true, pred = part["frame"].to_numpy(), part["true"].to_numpy(), part["pred"].to_numpy()
    fig, ax = plt.subplots(figsize=(min(max(7.0, len(part) / 40), 20.0), 3.6))
    if show_faces:
        ax.fill_between(frame, -0.5, 6.5, where=~part["face"].to_numpy(), step="mid", color="0.85", lw=0,
                        label="no face found")
    ax.step(frame, true, where="mid", color="black", lw=3, alpha=0.6, label="truth")
    ax.step(frame, pred, where="mid", color="tab:blue", lw=1.2, label="prediction")
    wrong = true != pred
    ax.scatter(frame[wrong], pred[wrong], marker="x", s=14, color="tab:red", zorder=3, label="wrong frame")
    ax.set_ylim(-0.5, 6.5)
    ax.set_yticks(range(challenge_file.N_CLASSES), [c.replace("_", " ") for c in labels.CHALLENGE_COMPOUNDS],
                  fontsize=7)
    ax.set_xlabel("frame")
    ax.set_title(title, fontsize=9, loc="left")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_position_accuracy(bins: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    centres = [(b["from"] + b["to"]) / 2 for b in bins]
    heights = [b["accuracy"] or 0.0 for b in bins]
    ax.bar(centres, heights, width=0.9 / POSITION_BINS, color="tab:blue")
    for x, b in zip(centres, bins):
        ax.text(x, 0.02, str(b["frames"]), ha="center", fontsize=6, color="white" if b["accuracy"] else "black")
    for x in (ONSET_END, OFFSET_START):
        ax.axvline(x, color="0.4", ls="--", lw=1)
    for x, phase in zip((ONSET_END / 2, 0.5, (1 + OFFSET_START) / 2), PHASES):
        ax.text(x, 1.04, phase, ha="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.12)
    ax.set_xlabel("relative position in the ground-truth segment (0 = first frame, 1 = last)", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (numbers: frames per bin)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- report ------------------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


def report_markdown(a: dict[str, Any]) -> str:
    lines = [f"# {a['title']}", "",
             f"Submission `{a['submission']}` against `{a['ground_truth']}`"
             + (f", faces from `{a['faces']}`" if a["faces"] else "") + ".", "",
             f"**Macro F1 {a['macro_f1']:.4f}** (the challenge's, over all 7 classes), accuracy {a['accuracy']:.4f}, "
             f"{a['frames']} frames in {a['videos']} videos. Every figure: [analysis.json](analysis.json).", "",
             "## Per class", "", "[per_class.csv](per_class.csv); support = ground-truth frames, segments = "
             "maximal runs of the class in a video.", ""]
    lines += _table(["class", "F1", "precision", "recall", "support", "segments"],
                    [[c["class"], c["f1"], c["precision"], c["recall"], c["support"], c["segments"]]
                     for c in a["per_class"]])
    lines += ["![confusion matrix, rows = truth](confusion.png)", "", "## Most confused with", ""]
    lines += _table(["class", "mistaken for", "frames", "share of the class"],
                    [[m["class"], m["mistaken_for"], m["frames"], m["share"]] for m in a["most_confused"]])
    lines += ["## With and without a face", ""]
    if a["by_face"] is None:
        lines += ["Not measured: pass `--faces` with the faces step's `frames.csv`.", ""]
    else:
        lines += ["Macro F1 of a subset averages the classes occurring in it.", ""]
        lines += _table(["subset", "frames", "macro F1", "accuracy"],
                        [[name.replace("_", " "), s["frames"], s["macro_f1"], s["accuracy"]]
                         for name, s in a["by_face"].items()])
    lines += ["## Position within the ground-truth segment", "",
              f"Relative position 0 = first frame of the segment, 1 = last; onset < {ONSET_END}, offset > "
              f"{OFFSET_START}, apex between. Macro F1 of a subset averages the classes occurring in it.", ""]
    lines += _table(["phase", "frames", "macro F1", "accuracy"],
                    [[p, s["frames"], s["macro_f1"], s["accuracy"]] for p, s in a["by_phase"].items()])
    lines += ["![accuracy by relative position in the segment](position.png)", "", "## Videos", ""]
    lines += _table(["video", "frames", "segments", "accuracy", "timeline"],
                    [[v["video"], v["frames"], v["segments"], v["accuracy"], f"[png]({v['timeline']})"]
                     for v in a["per_video"]])
    for v in a["per_video"]:
        lines += [f"![{v['video']}: truth and prediction]({v['timeline']})", ""]
    return "\n".join(lines)


# --- the command -------------------------------------------------------------------------------------

def prepare_folder(out: Path, overwrite: bool, inputs: list[Path]) -> None:
    """An empty ``out`` to write into: an earlier analysis there is replaced, any other non-empty folder only
    with ``overwrite``, and never one holding an input file (it would be deleted)."""
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists() and not overwrite:
            raise FileExistsError(f"{out} is not empty and was not written by analyze; choose another --out or "
                                  "pass --overwrite to replace it")
        held = [p for p in inputs if out.resolve() in p.resolve().parents]
        if held:
            raise OptionError(f"--out {out} holds the input {held[0]}; choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `abaw-ce analyze`; the next analysis into this folder replaces it\n")


def analyze_submission(submission: str | Path, ground_truth: str | Path, out: str | Path,
                       faces: str | Path | None = None, title: str = "", overwrite: bool = False) -> dict:
    """Write the error analysis of ``submission`` against ``ground_truth`` into ``out`` (see the module
    docstring) and return its figures, as in analysis.json."""
    submission, ground_truth, out = Path(submission), Path(ground_truth), Path(out)
    rows, score = matched_frames(submission, ground_truth)
    if faces is not None:
        faces = Path(faces)
        rows["face"] = face_found(faces, rows)
    rows["segment"] = segment_ids(rows["video"].to_numpy(), rows["frame"].to_numpy(), rows["true"].to_numpy())
    rows["position"] = relative_positions(rows["segment"].to_numpy())
    rows["phase"] = phase_of(rows["position"].to_numpy())
    rows["position_bin"] = position_bin(rows["position"].to_numpy())
    prepare_folder(out, overwrite, [p for p in (submission, ground_truth, faces) if p is not None])

    title = title or f"Error analysis of {submission.name}"
    table = per_class_table(rows)
    timelines = {video: timeline_name(video) for video in sorted(rows["video"].unique())}
    analysis = {
        "title": title, "submission": str(submission), "ground_truth": str(ground_truth),
        "faces": str(faces) if faces is not None else None,
        "frames": int(len(rows)), "videos": len(timelines), "macro_f1": score.macro_f1,
        "accuracy": float(np.mean(rows["true"] == rows["pred"])),
        "per_class": table.to_dict(orient="records"),
        "confusion": score.confusion.astype(int).tolist(),
        "most_confused": most_confused(score.confusion),
        "by_face": (grouped_scores(rows.assign(face=np.where(rows["face"], "with_face", "without_face")), "face",
                                   ["with_face", "without_face"]) if faces is not None else None),
        "by_phase": grouped_scores(rows, "phase", list(PHASES)),
        "accuracy_by_position": accuracy_by_position(rows),
        "per_video": per_video(rows, timelines),
        "files": {"report": "report.md", "per_class": "per_class.csv", "confusion": "confusion.png",
                  "position": "position.png", "timelines": list(timelines.values())},
    }

    atomic_write_text(out / "per_class.csv", table.to_csv(index=False), overwrite=True)
    challenge_file.plot_confusion(score.confusion, out / "confusion.png", f"{title}: confusion (rows = truth)")
    plot_position_accuracy(analysis["accuracy_by_position"], out / "position.png", title)
    for video, part in rows.groupby("video", sort=True):
        accuracy = float(np.mean(part["true"] == part["pred"]))
        plot_timeline(part, out / timelines[video], f"{video}: accuracy {accuracy:.1%}", faces is not None)
    atomic_write_text(out / "report.md", report_markdown(analysis), overwrite=True)
    atomic_write_json(out / "analysis.json", analysis)
    return analysis

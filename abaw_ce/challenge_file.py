"""The challenge file (shared/DESIGN.md section 6): write, read, validate and score.

Line 1 is exactly ``SUBMISSION_HEADER``; then one ``<video>/<k:05d>.jpg,<class 0-6>`` line per frame, k from
1. An organisers' template (same header, rows with or without a label) defines the rows and their order
exactly when given, whatever order its videos are in; otherwise decoded frame counts define the rows, videos
in sorted order.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from abaw_ce import labels
from abaw_ce.errors import InputError, read_text_lines
from abaw_ce.files import atomic_write_text

SUBMISSION_HEADER = "image_location," + ",".join(labels.CHALLENGE_COMPOUNDS)
N_CLASSES = len(labels.CHALLENGE_COMPOUNDS)
_LOCATION = re.compile(r"^(?P<video>[^,]+)/(?P<frame>\d{5})\.jpg$")
MAX_LISTED = 10  # problems of one kind listed before the rest are only counted


def frame_location(video: str, frame: int) -> str:
    return f"{video}/{frame:05d}.jpg"


# --- write -------------------------------------------------------------------------------------------

def predictions_frame(predictions: Mapping[str, Sequence[int]] | pd.DataFrame, keep_order: bool = False
                      ) -> pd.DataFrame:
    """(video, frame, label) rows from {video: labels of frames 1..n} or a frame with those columns, sorted by
    video and frame unless ``keep_order`` (a template's order)."""
    if isinstance(predictions, pd.DataFrame):
        missing = {"video", "frame", "label"} - set(predictions.columns)
        if missing:
            raise ValueError(f"predictions need columns video, frame, label; missing {sorted(missing)}")
        rows = predictions[["video", "frame", "label"]].copy()
    else:
        parts = [pd.DataFrame({"video": str(v), "frame": np.arange(1, len(y) + 1), "label": np.asarray(y)})
                 for v, y in predictions.items()]
        rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["video", "frame", "label"])
    rows["frame"] = rows["frame"].astype(np.int64)
    rows["label"] = rows["label"].astype(np.int64)
    if keep_order:
        return rows.reset_index(drop=True)
    return rows.sort_values(["video", "frame"], kind="stable").reset_index(drop=True)


def write_submission(path: str | Path, predictions: Mapping[str, Sequence[int]] | pd.DataFrame,
                     overwrite: bool = False, keep_order: bool = False) -> Path:
    """Write the challenge file atomically; labels must be 0..6 and each (video, frame) appear once. Rows are
    sorted by video and frame, or kept in the order given with ``keep_order`` (a template's)."""
    rows = predictions_frame(predictions, keep_order)
    bad = rows[(rows["label"] < 0) | (rows["label"] >= N_CLASSES)]
    if len(bad):
        r = bad.iloc[0]
        raise ValueError(f"label {r['label']} of {frame_location(r['video'], r['frame'])} is not a class 0..6")
    dup = rows.duplicated(["video", "frame"])
    if dup.any():
        r = rows[dup].iloc[0]
        raise ValueError(f"{frame_location(r['video'], r['frame'])} is predicted twice")
    if (rows["frame"] < 1).any():
        raise ValueError("frame numbers start at 1")
    body = [f"{frame_location(v, f)},{y}" for v, f, y in zip(rows["video"], rows["frame"], rows["label"])]
    return atomic_write_text(path, "\n".join([SUBMISSION_HEADER, *body]) + "\n", overwrite=overwrite)


# --- read --------------------------------------------------------------------------------------------

def _parse(path: Path, require_label: bool) -> tuple[pd.DataFrame, list[InputError]]:
    """Rows (video, frame, label, line) and the list of problems, each naming file and line."""
    lines = read_text_lines(path)
    problems: list[InputError] = []
    if lines[0].strip() != SUBMISSION_HEADER:
        problems.append(InputError(path, f"wrong header {lines[0].strip()!r}; expected {SUBMISSION_HEADER!r}", 1))
    videos, frames, values, line_nos = [], [], [], []
    for i, line in enumerate(lines[1:], start=2):
        text = line.strip()
        if not text:
            continue
        fields = text.split(",")
        if len(fields) > 2 or (require_label and len(fields) != 2):
            problems.append(InputError(path, f"expected '<video>/<frame:05d>.jpg,<class 0-6>', got {text!r}", i))
            continue
        m = _LOCATION.match(fields[0].strip())
        if not m or int(m.group("frame")) < 1:
            problems.append(InputError(path, f"bad image location {fields[0]!r}; expected <video>/<k:05d>.jpg, "
                                             "k from 1", i))
            continue
        label = -1
        if len(fields) == 2 and (require_label or fields[1].strip()):
            raw = fields[1].strip()
            if not raw.isdigit() or not 0 <= int(raw) < N_CLASSES:
                problems.append(InputError(path, f"label {raw!r} is not a class index 0..{N_CLASSES - 1}", i))
                continue
            label = int(raw)
        videos.append(m.group("video"))
        frames.append(int(m.group("frame")))
        values.append(label)
        line_nos.append(i)
    rows = pd.DataFrame({"video": pd.Series(videos, dtype=object), "frame": np.asarray(frames, dtype=np.int64),
                         "label": np.asarray(values, dtype=np.int64), "line": np.asarray(line_nos, dtype=np.int64)})
    dup = rows[rows.duplicated(["video", "frame"], keep=False)]
    if len(dup):
        for (v, f), d in list(dup.groupby(["video", "frame"]))[:MAX_LISTED]:
            problems.append(InputError(path, f"{frame_location(v, f)} appears again (first at line "
                                             f"{d['line'].iloc[0]})", int(d["line"].iloc[1])))
    if rows.empty and not problems:
        problems.append(InputError(path, "no frame rows after the header"))
    return rows, problems


def read_submission(path: str | Path) -> pd.DataFrame:
    """(video, frame, label, line) rows of a challenge file; an InputError at its first problem."""
    rows, problems = _parse(Path(path), require_label=True)
    if problems:
        raise problems[0]
    return rows


def read_template(path: str | Path) -> pd.DataFrame:
    """The organisers' frame list: the challenge header then one image location a line (a label optional)."""
    rows, problems = _parse(Path(path), require_label=False)
    if problems:
        raise problems[0]
    return rows[["video", "frame"]]


# --- validate ----------------------------------------------------------------------------------------

@dataclass
class ValidationReport:
    path: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        lines = [f"{'VALID' if self.ok else 'INVALID'}: {self.path}"]
        lines += [f"  {k}: {v}" for k, v in self.stats.items()]
        lines += [f"  error: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _list(problems: list[str], items: list[str], what: str) -> None:
    problems.extend(items[:MAX_LISTED])
    if len(items) > MAX_LISTED:
        problems.append(f"... and {len(items) - MAX_LISTED} more {what}")


def validate_submission(path: str | Path, template: str | Path | None = None,
                        frame_counts: Mapping[str, int] | None = None,
                        frame_tolerance: int = 0) -> ValidationReport:
    """Check a challenge file: header, rows, labels, duplicates, order and coverage.

    Coverage and order are checked against the template when given (rows must equal it exactly, in its order,
    whatever that order is); otherwise rows must be sorted by video and frame, and coverage is checked against
    ``frame_counts`` (frames 1..n of each video; a difference of at most
    ``frame_tolerance`` frames is a warning, as decoders and the organisers can disagree by a frame);
    otherwise each video's frames must run from 1 without gaps.
    """
    report = ValidationReport(str(path))
    try:
        rows, problems = _parse(Path(path), require_label=True)
    except InputError as err:
        report.errors.append(str(err))
        return report
    _list(report.errors, [str(p) for p in problems], "row problems")
    rows = rows.drop_duplicates(["video", "frame"])
    report.stats.update(frames=len(rows), videos=int(rows["video"].nunique()))
    if len(rows):
        report.stats["class_histogram"] = np.bincount(rows["label"], minlength=N_CLASSES).tolist()
    order = list(zip(rows["video"], rows["frame"]))
    if template is not None:
        expected = read_template(template)
        want = set(zip(expected["video"], expected["frame"]))
        have = set(order)
        missing = sorted(want - have)
        extra = sorted(have - want)
        _list(report.errors, [f"missing frame {frame_location(v, f)} (in the template)" for v, f in missing],
              "missing frames")
        _list(report.errors, [f"extra frame {frame_location(v, f)} (not in the template)" for v, f in extra],
              "extra frames")
        if not missing and not extra and order != list(zip(expected["video"], expected["frame"])):
            report.errors.append("rows are in a different order from the template")
        report.stats["template_frames"] = len(want)
        return report

    if order != sorted(order):
        report.errors.append("rows are not sorted by video name and then frame number")

    per_video = rows.groupby("video")["frame"]
    if frame_counts is not None:
        for video in sorted(set(frame_counts) - set(rows["video"])):
            report.errors.append(f"video {video} ({frame_counts[video]} frames) has no rows")
        for video in sorted(set(rows["video"]) - set(frame_counts)):
            report.errors.append(f"video {video} is not among the decoded videos")
    for video, frames in per_video:
        frames = np.sort(frames.to_numpy())
        n = int(frame_counts[video]) if frame_counts is not None and video in frame_counts else int(frames[-1])
        gaps = np.setdiff1d(np.arange(1, min(n, frames[-1]) + 1), frames)
        if len(gaps):
            report.errors.append(f"video {video}: {len(gaps)} frame(s) missing, first {frame_location(video, gaps[0])}")
        if frame_counts is not None and video in frame_counts and frames[-1] != n:
            diff = int(frames[-1]) - n
            msg = (f"video {video}: rows run to frame {frames[-1]} but the video decodes to {n} frames "
                   f"({diff:+d})")
            (report.warnings if abs(diff) <= frame_tolerance else report.errors).append(msg)
    return report


# --- score -------------------------------------------------------------------------------------------

@dataclass
class Score:
    macro_f1: float
    per_class_f1: dict[str, float]
    confusion: np.ndarray
    frames: int
    unscored_frames: int

    def format(self) -> str:
        lines = [f"macro F1 {self.macro_f1:.4f} over {self.frames} frames"]
        lines += [f"  {name:<22} F1 {f1:.4f}" for name, f1 in self.per_class_f1.items()]
        if self.unscored_frames:
            lines.append(f"  {self.unscored_frames} ground-truth frame(s) had no prediction and count as wrong")
        absent = [name for name, total in zip(self.per_class_f1, self.confusion.sum(axis=1)) if total == 0]
        if absent:
            lines.append(f"  the ground truth has no frame of {', '.join(absent)}: F1 0 for each, so macro F1 "
                         f"cannot exceed {(len(self.per_class_f1) - len(absent)) / len(self.per_class_f1):.4f}")
        return "\n".join(lines)


def score(predictions: pd.DataFrame, ground_truth: pd.DataFrame) -> Score:
    """Macro F1 over the 7 classes on the ground-truth frames (a frame without prediction counts as wrong)."""
    from sklearn.metrics import confusion_matrix, f1_score

    merged = ground_truth[["video", "frame", "label"]].merge(
        predictions[["video", "frame", "label"]], on=["video", "frame"], how="left", suffixes=("_true", "_pred"))
    unscored = int(merged["label_pred"].isna().sum())
    y_true = merged["label_true"].to_numpy(dtype=np.int64)
    # A missing prediction is scored as a wrong class so coverage gaps lower the score rather than vanish.
    y_pred = merged["label_pred"].fillna(-1).to_numpy(dtype=np.int64)
    y_pred = np.where(y_pred < 0, (y_true + 1) % N_CLASSES, y_pred)
    classes = list(range(N_CLASSES))
    per_class = f1_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    return Score(
        macro_f1=float(np.mean(per_class)),
        per_class_f1={name: float(v) for name, v in zip(labels.CHALLENGE_COMPOUNDS, per_class)},
        confusion=confusion_matrix(y_true, y_pred, labels=classes),
        frames=len(merged),
        unscored_frames=unscored,
    )


def plot_confusion(confusion: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix PNG with counts in the cells."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, totals, out=np.zeros_like(confusion, dtype=float), where=totals > 0)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = [n.replace("_", "\n") for n in labels.CHALLENGE_COMPOUNDS]
    ax.set_xticks(range(N_CLASSES), names, fontsize=8)
    ax.set_yticks(range(N_CLASSES), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(N_CLASSES):
        for j in range(N_CLASSES):
            ax.text(j, i, f"{confusion[i, j]}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion (rows normalised)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

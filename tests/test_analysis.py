"""abaw-ce analyze: the error analysis of a challenge file, on two hand-made videos whose figures are worked out
by hand below."""
import json
import re

import numpy as np
import pytest

from abaw_ce import challenge_file as S
from abaw_ce.cli.main import main
from abaw_ce.errors import InputError
from abaw_ce.submission.analysis import MARKER, analyze_submission, relative_positions, segment_ids

# Two videos of 8 frames, each two ground-truth segments of 4 frames (relative positions 0, 1/3, 2/3, 1:
# onset, apex, apex, offset). Wrong frames: a1 (0 -> 1, onset), a8 (1 -> 0, offset), b7 (0 -> 1, apex).
TRUTH = {"a": [0, 0, 0, 0, 1, 1, 1, 1], "b": [2, 2, 2, 2, 0, 0, 0, 0]}
PRED = {"a": [1, 0, 0, 0, 1, 1, 1, 0], "b": [2, 2, 2, 2, 0, 0, 1, 0]}
NO_FACE = {("a", 1), ("a", 8), ("b", 1)}  # frames.csv also lists b/9, which the ground truth lacks


def f1(tp, fp, fn):
    return 2 * tp / (2 * tp + fp + fn)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    truth = S.write_submission(folder / "truth.txt", TRUTH)
    pred = S.write_submission(folder / "pred.txt", PRED)
    faces = folder / "frames.csv"
    rows = [(v, k, int((v, k) not in NO_FACE)) for v, n in (("a", 8), ("b", 9)) for k in range(1, n + 1)]
    faces.write_text("video,frame,face_found\n" + "".join(f"{v},{k},{f}\n" for v, k, f in rows))
    return pred, truth, faces


@pytest.fixture(scope="module")
def analysed(files, tmp_path_factory):
    """The analysis with faces, written once for the tests that only read it: (its figures, its folder)."""
    pred, truth, faces = files
    out = tmp_path_factory.mktemp("analysed") / "analysis"
    return analyze_submission(pred, truth, out, faces=faces, title="hand-made"), out


def test_segments_and_positions():
    video = np.array(["a"] * 6 + ["b"] * 2)
    frame = np.array([1, 2, 3, 5, 6, 7, 1, 2])  # a gap after frame 3 splits the run of class 0
    true = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    segments = segment_ids(video, frame, true)
    assert segments.tolist() == [0, 0, 0, 1, 1, 2, 3, 3]
    assert relative_positions(segments) == pytest.approx([0, 0.5, 1, 0, 1, 0.5, 0, 1])


def test_figures_worked_out_by_hand(analysed):
    a, out = analysed
    assert a == json.loads((out / "analysis.json").read_text())
    assert (a["frames"], a["videos"]) == (16, 2)
    # class 0: 8 frames, 6 right, 2 taken for class 1, 1 frame of class 1 taken for it; class 1: 4 frames,
    # 3 right, 2 frames of class 0 taken for it; class 2: all 4 right; classes 3-6 absent (F1 0).
    per_class = {c["class"]: c for c in a["per_class"]}
    fs, hs, ss = (per_class[n] for n in ("Fearfully_Surprised", "Happily_Surprised", "Sadly_Surprised"))
    assert (fs["precision"], fs["recall"], fs["f1"]) == pytest.approx((6 / 7, 6 / 8, f1(6, 1, 2)))
    assert (hs["precision"], hs["recall"], hs["f1"]) == pytest.approx((3 / 5, 3 / 4, f1(3, 2, 1)))
    assert (ss["precision"], ss["recall"], ss["f1"]) == pytest.approx((1, 1, 1))
    assert [c["support"] for c in a["per_class"]] == [8, 4, 4, 0, 0, 0, 0]
    assert [c["segments"] for c in a["per_class"]] == [2, 1, 1, 0, 0, 0, 0]
    assert a["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 1) / 7)
    assert a["accuracy"] == pytest.approx(13 / 16)
    assert a["confusion"][0][:3] == [6, 2, 0] and a["confusion"][1][:3] == [1, 3, 0]
    assert a["most_confused"] == [
        {"class": "Fearfully_Surprised", "mistaken_for": "Happily_Surprised", "frames": 2, "share": 0.25},
        {"class": "Happily_Surprised", "mistaken_for": "Fearfully_Surprised", "frames": 1, "share": 0.25},
        {"class": "Sadly_Surprised", "mistaken_for": None, "frames": 0, "share": 0.0}]
    # without a face: a1 (0 -> 1), a8 (1 -> 0), b1 (2 -> 2); with a face: 13 frames, only b7 wrong.
    assert a["by_face"]["without_face"] == pytest.approx({"frames": 3, "accuracy": 1 / 3, "macro_f1": 1 / 3})
    assert a["by_face"]["with_face"] == pytest.approx(
        {"frames": 13, "accuracy": 12 / 13, "macro_f1": (f1(6, 0, 1) + f1(3, 1, 0) + 1) / 3})
    # onset a1 a5 b1 b5 (a1 wrong); apex a2 a3 a6 a7 b2 b3 b6 b7 (b7 wrong); offset a4 a8 b4 b8 (a8 wrong).
    assert a["by_phase"]["onset"] == pytest.approx(
        {"frames": 4, "accuracy": 3 / 4, "macro_f1": (f1(1, 0, 1) + f1(1, 1, 0) + 1) / 3})
    assert a["by_phase"]["apex"] == pytest.approx(
        {"frames": 8, "accuracy": 7 / 8, "macro_f1": (f1(3, 0, 1) + f1(2, 1, 0) + 1) / 3})
    assert a["by_phase"]["offset"] == pytest.approx(
        {"frames": 4, "accuracy": 3 / 4, "macro_f1": (f1(2, 1, 0) + 0 + 1) / 3})
    bins = {round(b["from"], 1): (b["frames"], b["accuracy"]) for b in a["accuracy_by_position"]}
    assert bins == {0.0: (4, 0.75), 0.1: (0, None), 0.2: (0, None), 0.3: (4, 1.0), 0.4: (0, None),
                    0.5: (0, None), 0.6: (4, 0.75), 0.7: (0, None), 0.8: (0, None), 0.9: (4, 0.75)}
    assert [(v["video"], v["accuracy"], v["segments"]) for v in a["per_video"]] == [("a", 0.75, 2), ("b", 0.875, 2)]


def test_files_and_report_links(analysed):
    out = analysed[1]
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == ["confusion.png", "position.png", "timelines/a.png", "timelines/b.png"]
    assert all((out / p).stat().st_size > 1000 for p in pngs)
    report = (out / "report.md").read_text()
    assert set(re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", report)) == set(pngs)  # every PNG embedded
    assert "(per_class.csv)" in report and "(analysis.json)" in report and "| Sadly_Surprised |" in report
    header = (out / "per_class.csv").read_text().splitlines()[0]
    assert header == "class,index,f1,precision,recall,support,segments"


def test_without_faces_and_folder_protection(files, tmp_path):
    pred, truth, _ = files
    out = tmp_path / "analysis"
    (out / "timelines").mkdir(parents=True)  # an earlier analysis: replaced
    (out / MARKER).write_text("written by `abaw-ce analyze`\n")
    (out / "timelines" / "stale.png").write_bytes(b"")
    assert analyze_submission(pred, truth, out)["by_face"] is None
    assert not (out / "timelines" / "stale.png").exists() and (out / "timelines" / "a.png").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by analyze"):
        analyze_submission(pred, truth, mine)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_unmatched_frames_name_the_file_and_rows(files, tmp_path):
    pred, truth, faces = files
    short = S.write_submission(tmp_path / "short.txt", {"a": PRED["a"], "b": PRED["b"][:6]})
    with pytest.raises(InputError, match=r"short\.txt: 2 frame\(s\) of the ground truth .* b/00007\.jpg, b/00008"):
        analyze_submission(short, truth, tmp_path / "out")
    extra = S.write_submission(tmp_path / "extra.txt", {**PRED, "c": [0]})
    with pytest.raises(InputError, match=r"extra\.txt: 1 frame\(s\) are not in the ground truth .*: c/00001\.jpg"):
        analyze_submission(extra, truth, tmp_path / "out")
    lacking = tmp_path / "lacking.csv"
    lacking.write_text("video,frame,face_found\na,1,1\n")
    with pytest.raises(InputError, match=r"lacking\.csv: 15 frame\(s\) .*a/00002\.jpg"):
        analyze_submission(pred, truth, tmp_path / "out", faces=lacking)
    assert not (tmp_path / "out").exists()  # nothing written before the inputs are checked


def test_command_line(files, tmp_path, capsys):
    """In this process (a subprocess would spend seconds importing): the exit status and what it prints."""
    pred, truth, faces = files
    out = tmp_path / "analysis"
    status = main(["analyze", str(pred), "--ground-truth", str(truth), "--faces", str(faces), "--out", str(out),
                   "--title", "hand-made"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert printed.out.splitlines() == [f"report: {out / 'report.md'}",
                                        f"macro F1: {(0.8 + 2 / 3 + 1) / 7:.4f} over 16 frames of 2 videos"]
    assert (out / "report.md").read_text().startswith("# hand-made")
    (out.parent / "mine").mkdir()
    (out.parent / "mine" / "notes.txt").write_text("keep me")
    status = main(["analyze", str(pred), "--ground-truth", str(truth), "--out", str(out.parent / "mine")])
    assert status == 2 and "not written by analyze" in capsys.readouterr().err

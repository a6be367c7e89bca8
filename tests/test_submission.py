import numpy as np
import pandas as pd
import pytest

from abaw_ce import challenge_file as S
from abaw_ce.errors import InputError

HEADER = S.SUBMISSION_HEADER


def test_header_is_the_challenge_one():
    assert HEADER == ("image_location,Fearfully_Surprised,Happily_Surprised,Sadly_Surprised,"
                      "Disgustedly_Surprised,Angrily_Surprised,Sadly_Fearful,Sadly_Angry")


def test_write_validate_score_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    truth = {"vidB": rng.integers(0, 7, 40), "vidA": rng.integers(0, 7, 25)}
    gt_path = S.write_submission(tmp_path / "gt.txt", truth)
    lines = gt_path.read_text().splitlines()
    assert lines[0] == HEADER and lines[1].startswith("vidA/00001.jpg,") and len(lines) == 66
    pred = {v: np.where(rng.random(len(y)) < 0.8, y, (y + 1) % 7) for v, y in truth.items()}
    path = S.write_submission(tmp_path / "sub.txt", pred)
    report = S.validate_submission(path, frame_counts={"vidA": 25, "vidB": 40})
    assert report.ok, report.format()
    s = S.score(S.read_submission(path), S.read_submission(gt_path))
    flat_true = np.concatenate([truth["vidA"], truth["vidB"]])
    flat_pred = np.concatenate([pred["vidA"], pred["vidB"]])
    from sklearn.metrics import f1_score
    assert s.macro_f1 == pytest.approx(f1_score(flat_true, flat_pred, average="macro", labels=range(7)))
    assert s.confusion.sum() == 65 and np.trace(s.confusion) == (flat_true == flat_pred).sum()
    perfect = S.score(S.read_submission(gt_path), S.read_submission(gt_path))
    assert perfect.macro_f1 == pytest.approx(1.0)
    png = S.plot_confusion(s.confusion, tmp_path / "cm.png")
    assert png.stat().st_size > 1000


def test_a_class_absent_from_the_ground_truth_is_flagged():
    truth = pd.DataFrame({"video": "v", "frame": range(1, 7), "label": [0, 1, 2, 3, 4, 5]})
    scored = S.score(truth, truth)
    assert scored.macro_f1 == pytest.approx(6 / 7)
    assert "no frame of Sadly_Angry" in scored.format() and "0.8571" in scored.format()
    every = pd.DataFrame({"video": "v", "frame": range(1, 8), "label": range(7)})
    assert "no frame of" not in S.score(every, every).format()


def test_missing_predictions_count_as_wrong(tmp_path):
    gt = S.predictions_frame({"v": [1, 1, 1, 1]})
    pred = S.predictions_frame({"v": [1, 1]})
    s = S.score(pred, gt)
    assert s.unscored_frames == 2 and s.confusion[1, 1] == 2 and s.confusion.sum() == 4


def test_write_refuses_overwrite_and_bad_labels(tmp_path):
    path = S.write_submission(tmp_path / "s.txt", {"v": [0, 1]})
    before = path.read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        S.write_submission(path, {"v": [2, 2]})
    assert path.read_text() == before
    S.write_submission(path, {"v": [2, 2]}, overwrite=True)
    assert path.read_text().splitlines()[1] == "v/00001.jpg,2"
    with pytest.raises(ValueError, match="label 7 of v/00002.jpg is not a class 0..6"):
        S.write_submission(tmp_path / "t.txt", {"v": [0, 7]})
    assert not (tmp_path / "t.txt").exists()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("body, line, message", [
    ("v/00001.jpg,7\n", 2, "label '7' is not a class index 0..6"),
    ("v/00001.jpg,1,3\n", 2, "expected '<video>/<frame:05d>.jpg,<class 0-6>'"),
    ("v/00001.jpg\n", 2, "expected '<video>/<frame:05d>.jpg,<class 0-6>'"),
    ("v/1.jpg,1\n", 2, "bad image location 'v/1.jpg'"),
    ("v/00000.jpg,1\n", 2, "k from 1"),
    ("v/00001.jpg,1\nv/00001.jpg,2\n", 3, "appears again \\(first at line 2\\)"),
])
def test_reader_errors_name_line(tmp_path, body, line, message):
    path = tmp_path / "s.txt"
    path.write_text(HEADER + "\n" + body)
    with pytest.raises(InputError, match=message) as err:
        S.read_submission(path)
    assert err.value.line == line
    report = S.validate_submission(path)
    assert not report.ok and f"s.txt:{line}:" in report.errors[0]


def test_reader_header_empty_and_binary(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("image,label\nv/00001.jpg,1\n")
    with pytest.raises(InputError, match="wrong header") as err:
        S.read_submission(path)
    assert err.value.line == 1
    path.write_text("")
    assert "file is empty" in S.validate_submission(path).errors[0]
    path.write_bytes(HEADER.encode() + b"\nv/0000\x9a.jpg,1\n")
    with pytest.raises(InputError, match="not valid UTF-8") as err:
        S.read_submission(path)
    assert err.value.line == 2
    path.write_text(HEADER + "\n")
    with pytest.raises(InputError, match="no frame rows"):
        S.read_submission(path)


def test_validate_against_template(tmp_path):
    template = tmp_path / "template.txt"
    template.write_text(HEADER + "\n" + "".join(f"a/{k:05d}.jpg,\n" for k in range(1, 6)) +
                        "".join(f"b/{k:05d}.jpg\n" for k in range(1, 4)))
    good = S.write_submission(tmp_path / "good.txt", {"a": [0] * 5, "b": [1] * 3})
    assert S.validate_submission(good, template=template).ok
    short = S.write_submission(tmp_path / "short.txt", {"a": [0] * 4, "b": [1] * 4})
    report = S.validate_submission(short, template=template)
    assert not report.ok
    assert "missing frame a/00005.jpg (in the template)" in report.errors
    assert "extra frame b/00004.jpg (not in the template)" in report.errors


def test_validate_against_frame_counts(tmp_path):
    path = S.write_submission(tmp_path / "s.txt", {"a": [0] * 10, "b": [1] * 5})
    report = S.validate_submission(path, frame_counts={"a": 11, "b": 5})
    assert not report.ok and "(-1)" in report.errors[0]
    lenient = S.validate_submission(path, frame_counts={"a": 11, "b": 5}, frame_tolerance=1)
    assert lenient.ok and "(-1)" in lenient.warnings[0]
    missing_video = S.validate_submission(path, frame_counts={"a": 10, "b": 5, "c": 3})
    assert "video c (3 frames) has no rows" in missing_video.errors
    gap = tmp_path / "gap.txt"
    gap.write_text(HEADER + "\na/00001.jpg,1\na/00003.jpg,1\n")
    report = S.validate_submission(gap)
    assert "video a: 1 frame(s) missing, first a/00002.jpg" in report.errors
    unsorted = tmp_path / "unsorted.txt"
    unsorted.write_text(HEADER + "\nb/00001.jpg,1\na/00001.jpg,1\n")
    assert "rows are not sorted by video name and then frame number" in S.validate_submission(unsorted).errors

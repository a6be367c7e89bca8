"""Test videos to a challenge file: faces, every fold model, fusion, smoothing, template alignment."""
import json

import numpy as np
import pytest
import torch

from abaw_ce import labels, submission
from abaw_ce.make_submission import align_to_template, main, make_submission, video_labels
from abaw_ce.models.export import save_encoder
from abaw_ce.models.vit import VitArch, build_vit

ARCH = VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def fake_fold_run(root, folds=2, names=labels.BASIC_EMOTIONS):
    for k in range(folds):
        torch.manual_seed(k)
        model = build_vit(ARCH, num_classes=6)
        save_encoder(root / f"fold_{k}" / "export", model.state_dict(), ARCH, [0.5] * 3, [0.25] * 3,
                     source={"stage": "emotion"}, head={"task": "emotion", "labels": list(names)})
        (root / f"fold_{k}" / "status.json").write_text(json.dumps({"state": "finished"}))
    return root


def test_video_labels_fill_smooth_and_fall_back():
    probs = np.full((6, 6), np.nan)
    found = np.array([True, False, True, True, False, False])
    probs[found] = [0.9, 0.1, 0.1, 0.9, 0.1, 0.1]  # happiness + surprise
    classes, notes = video_labels(found, probs, np.full(6, 0.5), window=3)
    assert classes.tolist() == [1] * 6 and "3 frame(s) without a face" in notes[0]
    fallback = np.array([0.1, 0.1, 0.1, 0.1, 0.9, 0.9])  # sadness + anger
    classes, notes = video_labels(np.zeros(4, bool), np.full((4, 6), np.nan), fallback, window=9)
    assert classes.tolist() == [6] * 4
    assert any("no face" in n for n in notes) and any("shorter than" in n for n in notes)


def test_template_alignment_pads_trims_and_fills_holes():
    decoded = np.array([1, 2, 3, 5])
    got, notes = align_to_template(decoded, np.array([0, 1, 2, 3]), np.array([2, 3, 4, 5, 6, 7]))
    assert got.tolist() == [1, 2, 2, 3, 3, 3]  # 4 -> nearest decoded (3 or 5; first wins), 6-7 padded
    assert any("padded" in n for n in notes) and any("not decoded" in n for n in notes)
    assert any("left out" in n for n in notes)


def test_make_submission_follows_the_template_and_reports(tiny_world, tmp_path, capsys):
    run = fake_fold_run(tmp_path / "runs" / "emotion-a")
    template = tiny_world / "test_ground_truth" / "template.txt"
    out = tmp_path / "sub.txt"
    code = main(["--videos", str(tiny_world / "test"), "--models", str(run), "--out", str(out), "--template",
                 str(template), "--detector", "opencv", "--crop-size", "48", "--flip"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "fold_0/export" in printed and "fold_1/export" in printed
    report = submission.validate_submission(out, template=template)
    assert report.ok, report
    written = submission.read_submission(out)
    assert written[["video", "frame"]].equals(submission.read_template(template))
    summary = json.loads((tmp_path / "sub_summary.json").read_text())
    assert summary["frames"] == len(written) and len(summary["models"]) == 2
    assert sum(summary["class_histogram"].values()) == len(written) and summary["kl_to_cexpr_prior"] >= 0
    assert (tmp_path / "sub_timelines.png").is_file()
    npz = sorted((tmp_path / "sub_work" / "probs").glob("*.npz"))
    assert len(npz) == len(set(written["video"]))
    # an earlier submission is never replaced silently
    assert main(["--videos", str(tiny_world / "test"), "--models", str(run), "--out", str(out),
                 "--detector", "opencv", "--crop-size", "48"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_bad_requests_write_nothing(tiny_world, tmp_path):
    run = fake_fold_run(tmp_path / "good")
    bad_template = tmp_path / "template.txt"
    rows = submission.read_template(tiny_world / "test_ground_truth" / "template.txt").head(3)
    bad_template.write_text(submission.SUBMISSION_HEADER + "\n" + "".join(
        f"{submission.frame_location('no_such_video', int(f))}\n" for f in rows["frame"]))
    out = tmp_path / "sub.txt"
    with pytest.raises(Exception, match="no_such_video"):
        make_submission(tiny_world / "test", [run], out, template=bad_template, detector="opencv", crop_size=48,
                        progress=False)
    assert not out.exists()
    reversed_run = fake_fold_run(tmp_path / "reversed", folds=1, names=tuple(reversed(labels.BASIC_EMOTIONS)))
    with pytest.raises(Exception, match="refusing to mix label orders"):
        make_submission(tiny_world / "test", [run, reversed_run], out, detector="opencv", progress=False)
    assert not out.exists()

"""Test videos to a challenge file: faces, every fold model, fusion, smoothing, template alignment."""
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
import scipy.stats

from abaw_ce import labels, challenge_file
from abaw_ce.errors import InputError, UserError
from abaw_ce.fusion import WeightedFusion
from abaw_ce.cli.submit import main
from abaw_ce.submission.pipeline import align_to_template, make_submission, video_labels
from abaw_ce.models.vit import VitArch
from abaw_ce.submission.random_runs import random_emotion_run
from abaw_ce.synth.world import clutter, write_video

ARCH = VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def fake_fold_run(root, folds=2, names=labels.BASIC_EMOTIONS):
    """An emotion run as the stage leaves it, with random tiny ViT folds."""
    return random_emotion_run(root, folds, ARCH, [0.5] * 3, [0.25] * 3, names=names, mean_f1=0.5)


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
    report = challenge_file.validate_submission(out, template=template)
    assert report.ok, report
    written = challenge_file.read_submission(out)
    assert written[["video", "frame"]].equals(challenge_file.read_template(template))
    summary = json.loads((tmp_path / "sub_summary.json").read_text())
    assert summary["frames"] == len(written) and len(summary["models"]) == 2
    assert sum(summary["class_histogram"].values()) == len(written)
    share = np.array(list(summary["class_histogram"].values())) / len(written)
    prior = np.array([labels.CEXPR_FRAME_COUNTS[c] for c in labels.CHALLENGE_COMPOUNDS], dtype=float)
    assert summary["kl_to_cexpr_prior"] == pytest.approx(scipy.stats.entropy(share, prior / prior.sum()))
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
    rows = challenge_file.read_template(tiny_world / "test_ground_truth" / "template.txt").head(3)
    bad_template.write_text(challenge_file.SUBMISSION_HEADER + "\n" + "".join(
        f"{challenge_file.frame_location('no_such_video', int(f))}\n" for f in rows["frame"]))
    out = tmp_path / "sub.txt"
    with pytest.raises(InputError, match=r"template.txt: lists 1 video\(s\) not found in .*\['no_such_video'\]"):
        make_submission(tiny_world / "test", [run], out, template=bad_template, detector="opencv", crop_size=48,
                        progress=False)
    assert not out.exists()
    reversed_run = fake_fold_run(tmp_path / "reversed", folds=1, names=tuple(reversed(labels.BASIC_EMOTIONS)))
    with pytest.raises(UserError, match=r"reversed/fold_0: outputs \['anger', .* not the basic emotions in the kit"):
        make_submission(tiny_world / "test", [run, reversed_run], out, detector="opencv", progress=False)
    assert not out.exists()


# --- damaged, faceless, short and missing inputs, end to end ---------------------------------------------

def videos_folder(tiny_world, folder, names=("test000", "test001")):
    """A copy of some tiny-world test videos, and the template rows for just those videos."""
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(tiny_world / "test" / f"{name}.mp4", folder / f"{name}.mp4")
    rows = challenge_file.read_template(tiny_world / "test_ground_truth" / "template.txt")
    template = folder.parent / "template.txt"
    template.write_text(challenge_file.SUBMISSION_HEADER + "\n" + "".join(
        f"{challenge_file.frame_location(v, int(f))}\n" for v, f in zip(rows["video"], rows["frame"]) if v in names))
    return folder, template


def truncate(path, keep=1 / 3):
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * keep)])


def remux_faststart(src, dst):
    """The video track of src with its index up front, so a truncated copy still decodes its first frames."""
    with av.open(str(src)) as source, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:  # the flush packet at the end carries nothing
                packet.stream = stream
                out.mux(packet)


def first_frames(path, count):
    with av.open(str(path)) as video:
        return [frame.to_ndarray(format="rgb24") for frame, _ in zip(video.decode(video=0), range(count))]


def test_an_unreadable_video_stops_a_run_without_template(tiny_world, tmp_path, capsys):
    videos, _ = videos_folder(tiny_world, tmp_path / "videos", names=("test001",))
    (videos / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    shutil.copy(videos / "test001.mp4", videos / "cut.mp4")
    truncate(videos / "cut.mp4")  # the mp4 index sits at the end: nothing of it can be opened
    run = fake_fold_run(tmp_path / "run", folds=1)
    out = tmp_path / "sub.txt"
    # without a template every video must be in the file, so a missing one is an error, not a silent gap
    assert main(["--videos", str(videos), "--models", str(run), "--out", str(out), "--detector", "opencv",
                 "--crop-size", "48"]) == 2
    err = capsys.readouterr().err
    assert "2 video(s) could not be read" in err and "broken.mp4" in err and "cut.mp4" in err
    assert "nothing was written" in err
    assert not out.exists() and not (tmp_path / "sub_summary.json").exists()


def test_a_template_leaves_out_an_unreadable_video_and_pads_a_truncated_one(tiny_world, tmp_path, capsys):
    videos, template = videos_folder(tiny_world, tmp_path / "videos")
    (videos / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    remux_faststart(tiny_world / "test" / "test000.mp4", videos / "test000.mp4")
    truncate(videos / "test000.mp4")
    run = fake_fold_run(tmp_path / "run", folds=1)
    out = tmp_path / "sub.txt"
    assert main(["--videos", str(videos), "--models", str(run), "--out", str(out), "--template", str(template),
                 "--detector", "opencv", "--crop-size", "48"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "test000: damaged video, labelled from its" in printed and "padded with the last label" in printed
    assert "broken.mp4: could not be read" in printed and "not in the template: left out" in printed
    report = challenge_file.validate_submission(out, template=template)
    assert report.ok, report
    assert challenge_file.read_submission(out)[["video", "frame"]].equals(challenge_file.read_template(template))
    cut = {r["video"]: r for r in json.loads((tmp_path / "sub_summary.json").read_text())["per_video"]}["test000"]
    assert cut["frames"] == (challenge_file.read_template(template)["video"] == "test000").sum()
    assert 0 < cut["faces"] < cut["frames"] / 2  # faces come from the decoded third only
    # the same unreadable file is an error when the template lists it (the faces cache makes this rerun cheap)
    listed = tmp_path / "listed.txt"
    listed.write_text(template.read_text() + challenge_file.frame_location("broken", 1) + "\n")
    with pytest.raises(InputError, match="video.s. the template lists could not be read: broken.mp4"):
        make_submission(videos, [run], tmp_path / "other.txt", template=listed, work_dir=tmp_path / "sub_work",
                        detector="opencv", crop_size=48, progress=False)
    assert not (tmp_path / "other.txt").exists()


def test_faceless_and_short_videos_still_label_every_frame(tiny_world, tmp_path, capsys):
    videos, _ = videos_folder(tiny_world, tmp_path / "videos", names=("test001",))
    scene = clutter(np.random.default_rng(0), 96, 128)
    write_video(videos / "empty_room.mp4", [scene] * 20, 25, 128, 96, None)
    short = first_frames(videos / "test001.mp4", 3)  # the face is in view from the first frame
    write_video(videos / "short.mp4", short, 25, short[0].shape[1], short[0].shape[0], None)
    run = fake_fold_run(tmp_path / "run", folds=1)
    out = tmp_path / "sub.txt"
    assert main(["--videos", str(videos), "--models", str(run), "--out", str(out), "--detector", "opencv",
                 "--crop-size", "48", "--window", "9"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "empty_room: no face found in any frame" in printed
    assert "short: shorter than the smoothing window (3 < 9 frames)" in printed
    report = challenge_file.validate_submission(out)
    assert report.ok, report
    written = challenge_file.read_submission(out)
    decoded = len(first_frames(videos / "test001.mp4", 10_000))
    assert written.groupby("video")["frame"].max().to_dict() == {"empty_room": 20, "short": 3, "test001": decoded}
    faces = {r["video"]: r["faces"] for r in json.loads((tmp_path / "sub_summary.json").read_text())["per_video"]}
    assert faces["empty_room"] == 0 and faces["short"] > 0


def test_a_folder_without_any_face_still_gets_a_file(tmp_path):
    scene = clutter(np.random.default_rng(0), 96, 128)
    write_video(tmp_path / "videos" / "empty_room.mp4", [scene] * 10, 25, 128, 96, None)
    run = fake_fold_run(tmp_path / "run", folds=1)
    make_submission(tmp_path / "videos", [run], tmp_path / "sub.txt", detector="opencv", crop_size=48,
                    progress=False)
    assert challenge_file.validate_submission(tmp_path / "sub.txt").ok


def test_a_folder_without_videos_writes_nothing(tmp_path):
    run = fake_fold_run(tmp_path / "run", folds=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")  # hidden files do not count
    out = tmp_path / "sub.txt"
    with pytest.raises(InputError, match="no files in this folder"):
        make_submission(empty, [run], out, detector="opencv", crop_size=48, progress=False)
    (empty / "notes.txt").write_text("the videos come later\n")
    with pytest.raises(InputError, match="no video files here .1 other file.s., e.g. notes.txt"):
        make_submission(empty, [run], out, detector="opencv", crop_size=48, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]  # no file, no work folder


def test_rows_follow_a_template_whose_videos_are_not_in_sorted_order(tiny_world, tmp_path):
    videos, sorted_template = videos_folder(tiny_world, tmp_path / "videos")
    rows = challenge_file.read_template(sorted_template)
    unsorted = pd.concat([rows[rows["video"] == "test001"], rows[rows["video"] == "test000"]])
    template = tmp_path / "organisers_order.txt"
    template.write_text(challenge_file.SUBMISSION_HEADER + "\n" + "".join(
        f"{challenge_file.frame_location(v, int(f))}\n" for v, f in zip(unsorted["video"], unsorted["frame"])))
    out = tmp_path / "sub.txt"
    make_submission(videos, [fake_fold_run(tmp_path / "run", folds=1)], out, template=template,
                    detector="opencv", crop_size=48, progress=False)
    written = challenge_file.read_submission(out)
    assert written[["video", "frame"]].reset_index(drop=True).equals(unsorted.reset_index(drop=True))
    report = challenge_file.validate_submission(out, template=template)
    assert report.ok, report.format()
    # against the sorted template the same rows are out of order
    assert "rows are in a different order from the template" in challenge_file.validate_submission(
        out, template=sorted_template).errors
    # a weighted fusion of weights 1 and biases 0 is the plain sum (the faces come from the first run's cache)
    plain = WeightedFusion(np.ones(7), np.zeros(7))
    make_submission(videos, [tmp_path / "run"], tmp_path / "weighted.txt", template=template,
                    work_dir=tmp_path / "sub_work", detector="opencv", crop_size=48, method="weighted",
                    fusion_weights=plain, progress=False)
    assert challenge_file.read_submission(tmp_path / "weighted.txt").equals(written)


def test_unfinished_folds_are_refused_unless_partial_runs_are_allowed(tiny_world, tmp_path, capsys):
    videos, template = videos_folder(tiny_world, tmp_path / "videos", names=("test001",))
    run = fake_fold_run(tmp_path / "runs" / "emotion-a", folds=3)
    (run / "fold_1" / "status.json").write_text(json.dumps({"state": "running"}))  # stopped mid-training
    shutil.rmtree(run / "fold_2")
    out = tmp_path / "sub.txt"
    args = ["--videos", str(videos), "--models", str(run), "--out", str(out), "--template", str(template),
            "--detector", "opencv", "--crop-size", "48"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{run / 'fold_1'}: not finished (state 'running')" in err
    assert f"{run}: fold_2 (fold-3 in the tables) is missing" in err and "--allow-partial" in err
    assert not out.exists() and not (tmp_path / "sub_work").exists()  # refused before any decoding
    assert main(args + ["--allow-partial"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "sub_summary.json").read_text())
    assert summary["models"] == [str(run / "fold_0" / "export")]
    assert summary["unfinished"] == [str(run / "fold_1"), str(run / "fold_2")]
    assert "--allow-partial:" in capsys.readouterr().out


def test_the_default_run_is_the_newest_whose_every_fold_finished(tmp_path, monkeypatch):
    from abaw_ce.submission.pipeline import newest_finished_run

    complete = fake_fold_run(tmp_path / "runs" / "emotion-old", folds=2)
    newer = fake_fold_run(tmp_path / "runs" / "emotion-new", folds=2)
    (newer / "fold_1" / "status.json").write_text(json.dumps({"state": "running"}))
    monkeypatch.chdir(tmp_path)
    assert newest_finished_run() == Path("runs") / "emotion-old"
    assert complete.is_dir()
    (newer / "fold_1" / "status.json").write_text(json.dumps({"state": "finished"}))
    assert newest_finished_run() == Path("runs") / "emotion-new"

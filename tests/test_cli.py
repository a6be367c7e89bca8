"""The user-facing commands, run as users run them (subprocesses), with their exit status."""
import json
import subprocess
import sys
from pathlib import Path

from abaw_ce import challenge_file as S

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True)


def test_validate_script_exit_status(tmp_path):
    good = S.write_submission(tmp_path / "good.txt", {"v": [0, 1, 2]})
    truth = S.write_submission(tmp_path / "truth.txt", {"v": [0, 1, 1]})
    ok = run("submit/validate.py", "--submission", good, "--ground-truth", truth,
             "--confusion-png", tmp_path / "cm.png")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "VALID" in ok.stdout and "macro F1" in ok.stdout and (tmp_path / "cm.png").exists()
    bad = tmp_path / "bad.txt"
    bad.write_text(S.SUBMISSION_HEADER + "\nv/00001.jpg,9\n")
    res = run("submit/validate.py", "--submission", bad)
    assert res.returncode == 1 and "bad.txt:2: label '9'" in res.stdout
    missing = run("submit/validate.py", "--submission", tmp_path / "nope.txt", "--template", tmp_path / "t.txt")
    assert missing.returncode == 1 and "file not found" in missing.stdout
    no_template = run("submit/validate.py", "--submission", good, "--template", tmp_path / "t.txt")
    assert no_template.returncode == 2 and "t.txt: file not found" in no_template.stderr


def test_demo_runs_and_protects_other_folders(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()  # an earlier demo's folder: the demo replaces it
    (out / ".abaw-ce-demo").write_text("written by `abaw-ce demo`\n")
    (out / "stale.txt").write_text("from the earlier demo")
    res = run("-m", "abaw_ce.cli.main", "demo", "--out", out, "--quick")
    assert res.returncode == 0, res.stderr
    assert not (out / "stale.txt").exists()
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["valid"] and summary["runs_valid"] and summary["quick"]
    assert set(summary["stage_seconds"]) == {"world", "mae", "au", "emotion", "cexprnet", "audio", "weights",
                                             "submission", "checks"}
    assert set(summary["macro_f1_by_runs"]) == {"5 ViT folds", "C-EXPR-NET visual", "C-EXPR-NET-A audio"}
    for fit in summary["run_weights"].values():
        assert abs(sum(fit["weights"]) - 1) < 1e-6 and fit["labelled_frames"] > 0
    assert min(summary["segments_per_class"].values()) >= 3
    for status in (Path(summary["runs"]["mae"]) / "status.json", Path(summary["runs"]["au"]) / "status.json",
                   Path(summary["runs"]["cexprnet"]) / "status.json",
                   Path(summary["runs"]["cexprnet_audio"]) / "status.json",
                   *sorted(Path(summary["runs"]["emotion"]).glob("fold_*/status.json"))):
        assert json.loads(status.read_text())["state"] == "finished", status
    template = out / "world" / "test_ground_truth" / "template.txt"
    assert S.validate_submission(out / "submission.txt", template=template).ok
    assert S.validate_submission(out / "visual_submission.txt", template=template).ok
    truth = S.read_submission(out / "world" / "test_ground_truth" / "ground_truth.txt")
    last = res.stdout.strip().splitlines()[-6:]
    assert last[0] == f"ground truth: {out / 'world' / 'test_ground_truth' / 'ground_truth.txt'}"
    assert last[1] == f"visual-only submission: {out / 'visual_submission.txt'}"
    visual = S.score(S.read_submission(out / "visual_submission.txt"), truth)
    assert last[2] == f"visual-only compound macro F1: {visual.macro_f1:.4f}"  # the file on disk, scored afresh
    audio = S.score(S.read_submission(out / "by_runs" / "C-EXPR-NET-A_audio.txt"), truth)
    assert last[3] == f"audio-only compound macro F1: {audio.macro_f1:.4f}"
    assert last[4] == f"submission: {out / 'submission.txt'}"
    scored = S.score(S.read_submission(out / "submission.txt"), truth)
    assert last[5] == f"compound macro F1: {scored.macro_f1:.4f}"
    report = (out / "analysis" / "report.md").read_text()
    assert "timelines/" in report and (out / "analysis" / "confusion.png").is_file()
    assert "| fold-5 |" in res.stdout
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = run("-m", "abaw_ce.cli.main", "demo", "--out", mine, "--quick")
    assert res.returncode == 2 and "not written by the demo" in res.stderr
    assert (mine / "notes.txt").read_text() == "keep me"

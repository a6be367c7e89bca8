"""Choosing fusion and smoothing on labelled videos, and fitting weighted fusion on out-of-fold compounds."""
import json

import numpy as np
import pandas as pd
import pytest

from abaw_ce import labels
from abaw_ce.cli.tune_fusion import main
from abaw_ce.experiments.tune_fusion import labelled_video_frames, oof_compound_probs, score_grid
from tests.test_make_submission import fake_fold_run


def probs_for(classes, rng, flicker):
    """Basic-emotion probabilities whose top pair is each frame's compound, except on flicker frames."""
    out = rng.uniform(0.0, 0.3, (len(classes), 6))
    for i, c in enumerate(classes):
        shown = rng.integers(7) if rng.random() < flicker else c
        for emotion in labels.CHALLENGE_PAIRS[shown]:
            out[i, labels.BASIC_INDEX[emotion]] = rng.uniform(0.6, 1.0)
    return out


def test_smoothing_is_scored_and_wins_over_flicker():
    rng = np.random.default_rng(0)
    truth, per_video = [], {}
    for v in range(3):
        classes = np.repeat(rng.permutation(7)[:4], 40)
        frames = np.arange(1, len(classes) + 1)
        found = rng.random(len(classes)) > 0.1
        probs = probs_for(classes, rng, flicker=0.45)
        probs[~found] = np.nan
        per_video[f"v{v}"] = (frames, found, probs)
        truth.append(pd.DataFrame({"video": f"v{v}", "frame": frames, "label": classes}))
    grid = score_grid(per_video, pd.concat(truth, ignore_index=True), np.full(6, 0.5), windows=(1, 9, 25))
    assert set(grid["method"]) == {"sum", "mean", "product", "min"}  # no weights given: no weighted row
    assert (grid[grid["smoothing"] != "none"]["window"] > 1).all()
    assert len(grid[grid["smoothing"] == "none"]) == 4
    sum_rows = grid[grid["method"] == "sum"].set_index(["smoothing", "window"])["macro_f1"]
    assert sum_rows[("median", 9)] > sum_rows[("none", 1)] + 0.1
    assert sum_rows[("gaussian", 9)] > sum_rows[("none", 1)] + 0.1


def test_out_of_fold_compounds_are_read_from_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    y = np.zeros((4, 6))
    for row, pair in enumerate([("surprise", "happiness"), ("sadness", "anger"), ("happiness", "disgust")]):
        for emotion in pair:
            y[row, labels.BASIC_INDEX[emotion]] = 1  # happiness+disgust is no challenge class
    y[3, labels.BASIC_INDEX["fear"]] = 1  # a basic row
    table = pd.DataFrame(y, columns=[f"y_{e}" for e in labels.BASIC_EMOTIONS])
    for j, e in enumerate(labels.BASIC_EMOTIONS):
        table[f"p_{e}"] = 0.1 * j
    table.to_csv(run / "oof.csv", index=False)
    probs, classes = oof_compound_probs([run, tmp_path / "no_oof_here"])
    assert classes.tolist() == [labels.CHALLENGE_COMPOUNDS.index("Happily_Surprised"),
                                labels.CHALLENGE_COMPOUNDS.index("Sadly_Angry")]
    assert probs.shape == (2, 6)


def test_the_command_writes_a_grid_and_a_choice(tiny_world, tmp_path, capsys):
    truth = labelled_video_frames(tiny_world / "cexpr")
    assert truth["label"].between(0, 6).all() and truth["video"].nunique() >= 2
    runs = [fake_fold_run(tmp_path / "run", folds=1), fake_fold_run(tmp_path / "other", folds=2)]
    out = tmp_path / "tuned"
    argv = ["--videos", str(tiny_world / "cexpr"), "--models", *map(str, runs), "--out", str(out),
            "--detector", "opencv", "--crop-size", "48", "--windows", "5", "9"]
    assert main(argv) == 0, capsys.readouterr().err
    choice = json.loads((out / "choice.json").read_text())
    grid = pd.read_csv(out / "grid.csv")
    assert choice["macro_f1"] == grid["macro_f1"].max() and choice["labelled_frames"] == len(truth)
    assert "--smoothing" in choice["make_submission_flags"] and (out / "grid.png").is_file()
    fitted = json.loads((out / "run_weights.json").read_text())
    assert sum(fitted["weights"]) == pytest.approx(1) and choice["run_weights"] == fitted["weights"]
    flags = choice["make_submission_flags"]
    assert flags[flags.index("--run-weights") + 1:][:2] == [f"{w:g}" for w in fitted["weights"]]
    assert main(argv) == 2 and "refusing to overwrite" in capsys.readouterr().err

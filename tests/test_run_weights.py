"""Run weights fitted on labelled videos: a weak run gets little weight, and the mixture scored while fitting is
the one make_submission writes with those weights."""
import numpy as np
import pandas as pd
import pytest

from abaw_ce import challenge_file
from abaw_ce.submission.pipeline import make_submission
from abaw_ce.errors import OptionError
from abaw_ce.submission.run_weights import (SCORE_FLOOR, fit_run_weights, log_loss, mixed_labels, run_frame_probs,
                                             simplex_grid)
from tests.test_make_submission import fake_fold_run, videos_folder
from tests.test_tune_fusion import probs_for


def test_simplex_grid_covers_the_weights_summing_to_one():
    grid = simplex_grid(3, 0.5)
    assert sorted(map(tuple, grid.tolist())) == sorted([(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0),
                                                        (0.5, 0, 0.5), (0, 0.5, 0.5)])
    assert np.allclose(simplex_grid(4, 0.1).sum(1), 1) and len(simplex_grid(4, 0.1)) == 286


def test_a_run_of_noise_gets_no_weight():
    rng = np.random.default_rng(0)
    good, noise, truth = {}, {}, []
    for v in range(3):
        classes = np.repeat(rng.permutation(7)[:4], 30)
        frames = np.arange(1, len(classes) + 1)
        found = np.ones(len(classes), bool)
        p = probs_for(classes, rng, flicker=0.2)
        good[f"v{v}"] = (frames, found, p / p.sum(1, keepdims=True))
        q = rng.uniform(0, 1, p.shape)
        noise[f"v{v}"] = (frames, found, q / q.sum(1, keepdims=True))
        truth.append(pd.DataFrame({"video": f"v{v}", "frame": frames, "label": classes}))
    truth = pd.concat(truth, ignore_index=True)
    for criterion in ("log_loss", "macro_f1"):
        fit = fit_run_weights([noise, good], truth, windows=(1, 9), step=0.25, criterion=criterion)
        assert fit.criterion == criterion and fit.weights[1] >= 0.75 and fit.weights[0] <= 0.25
        assert fit.alone_macro_f1[1] > 0.8 > 0.4 > fit.alone_macro_f1[0]
        assert len(fit.grid) == 5 * 2  # 5 weightings of 2 runs at step 0.25, 2 windows
        chosen = (fit.grid["w1"] == fit.weights[1]) & (fit.grid["window"] == fit.window)
        if criterion == "macro_f1":
            assert fit.macro_f1 >= fit.equal_macro_f1 and fit.macro_f1 >= max(fit.alone_macro_f1)
        else:
            assert fit.log_loss == fit.grid["log_loss"].min() == float(fit.grid.loc[chosen, "log_loss"].iloc[0])
    with pytest.raises(ValueError, match="without predictions"):
        fit_run_weights([noise, good], truth.assign(video="elsewhere"))
    with pytest.raises(OptionError, match="criterion"):
        fit_run_weights([noise, good], truth, criterion="accuracy")


def test_log_loss_of_fused_scores_by_hand():
    keys = pd.DataFrame({"video": ["a", "a", "b"], "frame": [1, 2, 1]})
    scores = np.zeros((3, 7))
    scores[0, [0, 1]] = [3.0, 1.0]   # the true class 0 holds 3/4 of the scores
    scores[1, [2, 3]] = [1.0, 1.0]   # the true class 3 holds 1/2
    scores[2, 5] = 2.0               # the true class 4 holds nothing: the floor
    truth = pd.DataFrame({"video": ["a", "a", "b", "b"], "frame": [1, 2, 1, 9], "label": [0, 3, 4, 1]})
    expected = -(np.log(0.75) + np.log(0.5) + 2 * np.log(SCORE_FLOOR)) / 4  # frame b/9 was never decoded
    assert log_loss(keys, scores, truth) == pytest.approx(expected)


def test_fitted_mixture_is_what_make_submission_writes(tiny_world, tmp_path):
    videos, _ = videos_folder(tiny_world, tmp_path / "videos", names=("test000", "test001"))
    for old, new in (("test000", "007"), ("test001", "012")):  # C-EXPR-DB names videos by number: 007 is not 7
        (videos / f"{old}.mp4").rename(videos / f"{new}.mp4")
    runs = [fake_fold_run(tmp_path / "a", folds=1), fake_fold_run(tmp_path / "b", folds=2)]
    per_run = run_frame_probs(videos, runs, tmp_path / "work", detector="opencv", crop_size=48)
    assert set(per_run[0]) == {"007", "012"}
    for frames, found, probs in per_run[1].values():
        assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-5) and len(frames) == len(found)
        assert found.mean() > 0.5  # the faces found are matched to their frames
    weights = [0.3, 0.7]
    expected = mixed_labels(per_run, weights, "gaussian", 5)
    made = make_submission(videos, runs, tmp_path / "sub.txt", work_dir=tmp_path / "work", detector="opencv",
                           crop_size=48, window=5, run_weights=weights, progress=False)
    written = challenge_file.read_submission(tmp_path / "sub.txt")
    merged = written.merge(expected, on=["video", "frame"], suffixes=("", "_fit"))
    assert len(merged) == len(written) and (merged["label"] == merged["label_fit"]).all()
    assert made["run_weights"] == weights

import numpy as np
import pandas as pd
import pytest

from abaw_ce.data import folds as F
from abaw_ce.data.table import make_table


def mixed_table(seed=0):
    rng = np.random.default_rng(seed)
    names = ["happiness", "sadness", "fear", "anger", "surprise", "disgust", "neutral"]
    # a video-grouped source (many frames per video) and a one-image-per-group source
    videos = [f"v{i}" for i in rng.integers(0, 40, size=600)]
    a = make_table([f"a/{i}.jpg" for i in range(600)], "videos", videos,
                   [names[int(v[1:]) % 7] for v in videos], frame=list(range(1, 601)))
    b = make_table([f"b/{i}.jpg" for i in range(300)], "stills", [f"s{i}" for i in range(300)],
                   [names[i % 7] for i in range(300)])
    return pd.concat([a, b], ignore_index=True)


def test_folds_group_disjoint_balanced_and_deterministic():
    table = mixed_table()
    folds = F.assign_folds(table, 5, seed=3)
    assert np.array_equal(folds, F.assign_folds(table, 5, seed=3))
    assert not np.array_equal(folds, F.assign_folds(table, 5, seed=4))
    t = table.assign(fold=folds)
    assert (t.groupby("group")["fold"].nunique() == 1).all()
    for source, part in t.groupby("source"):
        assert sorted(part["fold"].unique()) == [0, 1, 2, 3, 4]   # every source in every fold
    stills = t[t["source"] == "stills"]
    # stratified: each label spread evenly over the 5 parts of the one-image-per-group source
    per_label = stills.groupby(["expression", "fold"]).size().unstack()
    assert (per_label.max(axis=1) - per_label.min(axis=1)).max() <= 1
    train, val = F.split(table, folds, 2)
    assert len(train) + len(val) == len(table)
    assert not set(train["group"]) & set(val["group"])


def test_check_folds_catches_leak():
    table = mixed_table()
    folds = F.assign_folds(table, 5)
    broken = folds.copy()
    first_video = table.index[table["group"] == table["group"].iloc[0]]
    broken[first_video[0]] = (broken[first_video[0]] + 1) % 5
    with pytest.raises(ValueError, match="appear in more than one fold"):
        F.check_folds(table.assign(fold=broken))


def test_too_few_groups_is_explained():
    t = make_table(["x.jpg"] * 6, "tiny", ["g1", "g1", "g2", "g2", "g3", "g3"], ["happiness"] * 6)
    with pytest.raises(ValueError, match="source 'tiny' has 3 group.*no other source gives fold"):
        F.assign_folds(t, 5)


def test_a_small_source_beside_larger_ones_goes_whole_group_to_a_fold(caplog):
    small = make_table([f"t/{i}.jpg" for i in range(6)], "tiny", ["g1", "g1", "g2", "g2", "g3", "g3"],
                       ["happiness"] * 6, frame=list(range(1, 7)))
    table = pd.concat([mixed_table(), small], ignore_index=True)
    folds = F.assign_folds(table, 5, seed=1)
    assert np.array_equal(folds, F.assign_folds(table, 5, seed=1))
    t = table.assign(fold=folds)
    tiny = t[t["source"] == "tiny"]
    assert tiny.groupby("group")["fold"].nunique().eq(1).all() and tiny["fold"].nunique() == 3  # a fold each
    assert sorted(t[t["source"] == "stills"]["fold"].unique()) == [0, 1, 2, 3, 4]  # the others untouched
    assert "source 'tiny' has 3 group(s) for 5 folds" in caplog.text


def test_save_and_reload(tmp_path):
    table = mixed_table()
    folds = F.assign_folds(table, 5, seed=1)
    F.save_folds(table, folds, tmp_path, 5, 1)
    assert np.array_equal(F.load_folds(table, tmp_path / "folds.csv"), folds)
    assert (tmp_path / "folds.json").exists()
    extra = pd.concat([table, table.iloc[:1].assign(path="new.jpg")], ignore_index=True)
    with pytest.raises(ValueError, match="1 sample\\(s\\) have no saved fold, e.g. new.jpg"):
        F.load_folds(extra, tmp_path / "folds.csv")


def test_a_frame_in_two_sources_reloads_with_each_source_s_fold(tmp_path):
    """Aff-Wild2's EXPR, AU and VA sets list the same frames: each source is split on its own, and a reload
    (a resumed run, or a second process) must give every row its own source's fold, one row each."""
    videos = make_table([f"a/{i}.jpg" for i in range(600)], "videos", [f"v{i % 40}" for i in range(600)],
                        ["happiness"] * 600, frame=list(range(1, 601)))
    table = pd.concat([videos, videos.assign(source="videos_au", expression="")], ignore_index=True)
    folds = F.assign_folds(table, 5, seed=2)
    F.save_folds(table, folds, tmp_path, 5, 2)
    np.testing.assert_array_equal(F.load_folds(table, tmp_path / "folds.csv"), folds)


def test_validation_rows_from_named_sources_only(tmp_path):
    from omegaconf import OmegaConf

    from abaw_ce.errors import OptionError
    from abaw_ce.train.engine import validation_rows

    table = mixed_table()
    data = OmegaConf.create({"folds": 5, "val_fold": 1, "fold_seed": 0, "val_sources": None})
    every = validation_rows(table, tmp_path / "a", data)
    assert set(table.loc[every, "source"]) == {"videos", "stills"}  # by default every source validates
    data.val_sources = ["stills"]
    only = validation_rows(table, tmp_path / "b", data)
    # the same stills validate; every video row trains
    assert np.array_equal(only, every & (table["source"] == "stills").to_numpy())
    assert only.any() and not (only & (table["source"] == "videos").to_numpy()).any()
    data.val_sources = ["rafdb"]
    with pytest.raises(OptionError, match=r"names \['rafdb'\].*the sources here are \['stills', 'videos'\]"):
        validation_rows(table, tmp_path / "c", data)

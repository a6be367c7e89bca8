"""The demo's split of the labelled videos: the held-out ones must show a challenge class."""
import pytest

from abaw_ce.data import writers
from abaw_ce.experiments.demo import split_labelled_videos


def _labelled(root, classes_by_video):
    for name, classes in classes_by_video.items():
        (root / "videos").mkdir(parents=True, exist_ok=True)
        (root / "videos" / f"{name}.mp4").write_bytes(name.encode())  # content only copied, never decoded
        writers.write_cexpr_annotation(root / "annotation" / f"{name}.csv",
                                       [(float(i), float(i) + 1.0, c) for i, c in enumerate(classes)])


def test_the_last_videos_showing_a_challenge_class_are_held_out(tmp_path):
    _labelled(tmp_path / "all", {"000": ["Happily_Surprised"], "001": ["Other", "Sadly_Angry"],
                                 "002": ["Happily_Disgusted"], "003": ["Other"]})
    train, validation = split_labelled_videos(tmp_path / "all", tmp_path / "out", 1)
    assert sorted(p.stem for p in (validation / "annotation").glob("*.csv")) == ["001"]
    assert sorted(p.stem for p in (train / "annotation").glob("*.csv")) == ["000", "002", "003"]
    assert sorted(p.name for p in (train / "videos").iterdir()) == ["000.mp4", "002.mp4", "003.mp4"]
    assert (validation / "videos" / "001.mp4").read_bytes() == b"001"

    train, validation = split_labelled_videos(tmp_path / "all", tmp_path / "out2", 2)
    assert sorted(p.stem for p in (validation / "annotation").glob("*.csv")) == ["000", "001"]


def test_too_few_videos_with_a_challenge_class_is_an_error(tmp_path):
    _labelled(tmp_path / "all", {"000": ["Other"], "001": ["Happily_Disgusted"], "002": ["Sadly_Angry"]})
    with pytest.raises(ValueError, match="1 labelled video.* showing a challenge class; 2 are needed"):
        split_labelled_videos(tmp_path / "all", tmp_path / "out", 2)
    with pytest.raises(ValueError, match="3 labelled video.*3 held out would leave none"):
        split_labelled_videos(tmp_path / "all", tmp_path / "out", 3)

"""Command-line overrides as a shell passes them: flow mappings without spaces, alone or in a list."""
import pytest

from abaw_ce.errors import OptionError
from abaw_ce.train import runs


def test_flow_mappings_without_spaces_parse_alone_and_inside_lists():
    config = runs.load_config("emotion", [], [
        "train.curriculum={epochs:[1,1],compound_share:[0,1],generate:both}",
        "data.datasets=[{format:rafdb_basic,root:/data/raf},{format:affectnet,csv_path:/d/a.csv,images:/d/img}]",
        "output.dir=/runs/x"])
    assert list(config.train.curriculum.epochs) == [1, 1] and config.train.curriculum.generate == "both"
    assert [dict(d) for d in config.data.datasets] == [
        {"format": "rafdb_basic", "root": "/data/raf"},
        {"format": "affectnet", "csv_path": "/d/a.csv", "images": "/d/img"}]
    assert config.output.dir == "/runs/x"  # a plain value is left as it is
    assert list(runs.load_config("emotion", [], ["data.folds=[0,2]"]).data.folds) == [0, 2]


def test_an_unknown_key_inside_an_override_is_named():
    with pytest.raises(OptionError, match="unknown config key"):
        runs.load_config("emotion", [], ["train.curriculum={epoch:[1,1]}"])

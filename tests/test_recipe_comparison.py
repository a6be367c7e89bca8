"""`abaw-ce recipe`: fold runs of the recipes trained on a world, scored on its test videos, a stopped comparison
continued; here the tiny world, timm's test_resnet as the CNN and a two-epoch curriculum."""
import json

import pytest
from omegaconf import OmegaConf

from abaw_ce.experiments.recipe_comparison import run_recipe_comparison
from abaw_ce.train.loop import read_status


def test_cnn_with_the_curriculum_then_a_vit_it_teaches(tiny_world, tmp_path, capsys):
    out = tmp_path / "recipe"
    out.mkdir()
    (out / "world").symlink_to(tiny_world)
    kwargs = dict(seed=0, scale="tiny", cnn="timm:test_resnet", epochs=(1, 1), shares=(0.0, 1.0))
    results = run_recipe_comparison(out, only=["cnn+curriculum", "vit+curriculum<-cnn"], **kwargs)
    assert list(results) == ["cnn+curriculum", "vit+curriculum<-cnn"]
    for name, result in results.items():
        assert 0.0 <= result["compound_f1"] <= 1.0 and len(result["per_class_f1"]) == 7
        assert result["folds"] == [0] and result["seconds_per_epoch"] > 0
        status = read_status(out / "runs" / name / "fold_0")
        assert status["state"] == "finished" and status["epoch"] == 2
        records = [r for r in json.loads((out / "runs" / name / "fold_0" / "metrics.json").read_text())
                   if "val_score" in r]
        assert [r["compound_share"] for r in records] == [0.0, 1.0]
        assert (out / "submissions" / f"{name}.txt").is_file()
    student = OmegaConf.load(out / "runs" / "vit+curriculum<-cnn" / "config.yaml")
    assert student.distill.teachers == str(out / "runs" / "cnn+curriculum") and student.model.backbone == "vit"
    assert OmegaConf.load(out / "runs" / "cnn+curriculum" / "config.yaml").model.backbone == "timm:test_resnet"
    table = (out / "recipe.md").read_text()
    assert "| cnn+curriculum | timm:test_resnet | ✓ | – | 0 |" in table
    assert "| vit+curriculum<-cnn | vit | ✓ | cnn+curriculum | 0 |" in table
    capsys.readouterr()
    assert run_recipe_comparison(out, only=["cnn+curriculum"], **kwargs) == results  # finished: reused
    assert "cnn+curriculum: done earlier" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown recipe"):
        run_recipe_comparison(out, only=["resnet"], **kwargs)

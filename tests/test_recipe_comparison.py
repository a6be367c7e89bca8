"""`abaw-ce recipe`: fold runs of the recipes trained on a world, scored on its test videos, a stopped comparison
continued, and the summary over world seeds; here the tiny world, timm's test_resnet as the CNN and a two-epoch
curriculum."""
import json

import pytest
from omegaconf import OmegaConf

from abaw_ce.experiments.recipe_comparison import run_recipe_seeds, seeds_summary, seeds_table
from abaw_ce.train.loop import read_status


def test_cnn_with_the_curriculum_then_a_vit_it_teaches(tiny_world, tmp_path, capsys):
    out = tmp_path / "recipe"
    (out / "seed_0").mkdir(parents=True)
    (out / "seed_0" / "world").symlink_to(tiny_world)
    kwargs = dict(seeds=[0], scale="tiny", cnn="timm:test_resnet", epochs=(1, 1), shares=(0.0, 1.0))
    results = run_recipe_seeds(out, only=["cnn+curriculum", "vit+curriculum<-cnn"], **kwargs)[0]
    assert list(results) == ["cnn+curriculum", "vit+curriculum<-cnn"]
    runs_dir = out / "seed_0" / "runs"
    for name, result in results.items():
        assert 0.0 <= result["compound_f1"] <= 1.0 and len(result["per_class_f1"]) == 7
        assert result["folds"] == [0] and result["seconds_per_epoch"] > 0
        status = read_status(runs_dir / name / "fold_0")
        assert status["state"] == "finished" and status["epoch"] == 2
        records = [r for r in json.loads((runs_dir / name / "fold_0" / "metrics.json").read_text())
                   if "val_score" in r]
        assert [r["compound_share"] for r in records] == [0.0, 1.0]
        assert (out / "seed_0" / "submissions" / f"{name}.txt").is_file()
    student = OmegaConf.load(runs_dir / "vit+curriculum<-cnn" / "config.yaml")
    teacher = OmegaConf.load(runs_dir / "cnn+curriculum" / "config.yaml")
    assert student.distill.teachers == str(runs_dir / "cnn+curriculum") and student.model.backbone == "vit"
    assert teacher.model.backbone == "timm:test_resnet"
    teacher_meta = json.loads((runs_dir / "cnn+curriculum" / "fold_0" / "export" / "timm_classifier.json").read_text())
    assert list(student.data.mean) == teacher_meta["mean"]  # the student sees faces as its teacher does
    table = (out / "seed_0" / "recipe.md").read_text()
    assert "| cnn+curriculum | timm:test_resnet | ✓ | – | 0 |" in table
    assert "| vit+curriculum<-cnn | vit | ✓ | cnn+curriculum | 0 |" in table
    summary = json.loads((out / "recipe_seeds.json").read_text())
    assert summary["recipes"]["cnn+curriculum"]["mean_f1"] == results["cnn+curriculum"]["compound_f1"]
    assert (out / "recipe_seeds.png").stat().st_size > 0
    capsys.readouterr()
    assert run_recipe_seeds(out, only=["cnn+curriculum"], **kwargs)[0] == results  # finished: reused
    assert "cnn+curriculum: done earlier" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown recipe"):
        run_recipe_seeds(out, only=["resnet"], **kwargs)


def test_the_summary_over_seeds_gives_each_seed_the_mean_and_the_spread():
    def result(f1, seconds, curriculum=False):
        return {"backbone": "vit", "curriculum": curriculum, "teacher": None, "folds": [0], "compound_f1": f1,
                "per_class_f1": {}, "seconds_per_epoch": seconds}
    by_seed = {0: {"vit": result(0.2, 10.0), "vit+curriculum": result(0.3, None, True)},
               1: {"vit": result(0.4, 14.0)}}
    summary = seeds_summary(by_seed)
    assert summary["vit"]["f1"] == {0: 0.2, 1: 0.4}
    assert summary["vit"]["mean_f1"] == pytest.approx(0.3) and summary["vit"]["std_f1"] == pytest.approx(0.1)
    assert summary["vit"]["seconds_per_epoch"] == 12.0
    assert summary["vit+curriculum"]["seconds_per_epoch"] is None  # a resumed run's time is unknown
    table = seeds_table(summary, [0, 1], "small")
    assert "| vit | vit | × | – | 0.2000 | 0.4000 | 0.3000 ± 0.1000 | 12.0 |" in table
    assert "| vit+curriculum | vit | ✓ | – | 0.3000 | – | 0.3000 ± 0.0000 | – |" in table

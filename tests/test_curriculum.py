"""The ABAW7 winner's curriculum over compound data (train.curriculum): stages, the share of compound samples in
real batches, generated compounds, resume mid-stage, and the emotion and C-EXPR-NET stages with it on."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from abaw_ce.cli.cexprnet import main_cexprnet
from abaw_ce.cli.emotion import main_emotion
from abaw_ce.data.labelled import FaceTransform, TableSamples
from abaw_ce.data.table import targets as table_targets
from abaw_ce.errors import OptionError
from abaw_ce.train import curriculum as cl
from abaw_ce.train import runs
from abaw_ce.train.engine import load_tables
from abaw_ce.train.reports import write_ablation_table
from abaw_ce.train.sampling import EpochSampler, SeededSamples
from tests.test_cexprnet_stage import datasets
from tests.test_finetune_stages import rafdb

SEED = 7
FOUR_STAGES = cl.Curriculum(epochs=(1, 1, 1, 1), compound_share=(0.0, 0.2, 0.4, 1.0), generate="both")
TINY_VIT = ["train.num_workers=0", "train.batch_size=16", "train.log_every=4", "train.keep_checkpoints=1",
            "model.encoder=none", "model.arch.img_size=32", "model.arch.patch_size=8", "model.arch.embed_dim=32",
            "model.arch.depth=2", "model.arch.num_heads=2", "--folds", "0"]
CURRICULUM = "train.curriculum={enabled: true, epochs: [1, 2], compound_share: [0, 0.5], generate: both}"


def positives(target: torch.Tensor) -> torch.Tensor:
    return (target > 0).sum(dim=-1)


@pytest.fixture(scope="module")
def rafdb_rows(tiny_world):
    """A third of the tiny world's RAF-DB basic + compound rows and their 6-way targets (compounds have two
    positives)."""
    table = load_tables([{"format": "rafdb_basic", "root": str(tiny_world / "rafdb_basic")},
                         {"format": "rafdb_compound", "root": str(tiny_world / "rafdb_compound")}], "zero")
    table = table[table["has_target"]].iloc[::3].reset_index(drop=True)
    return table, table_targets(table)


def samples(table, y, curriculum=FOUR_STAGES, seed=SEED):
    base = SeededSamples(TableSamples(table, y), FaceTransform(16, [0.5] * 3, [0.25] * 3, train=True), seed)
    return base, cl.CurriculumSamples(base, y, curriculum, seed)


def test_stages_epochs_and_bad_settings():
    c = FOUR_STAGES
    assert c.total_epochs == 4 and [c.stage(e) for e in range(6)] == [0, 1, 2, 3, 3, 3]
    assert c.final_stage_start == 3 and cl.Curriculum((5, 5, 3, 3), (0, 0.2, 0.4, 1.0)).final_stage_start == 13
    long = cl.Curriculum((5, 5, 3, 3), (0, 0.2, 0.4, 1.0))
    assert [long.selection_start(e) for e in (16, 20, 13, 10, 3)] == [13, 13, 10, 5, 0]  # the stage a run ends in
    c = cl.Curriculum(epochs=(5, 5, 3, 3), compound_share=(0, 0.2, 0.4, 1.0))
    assert [c.stage(e) for e in (0, 4, 5, 9, 10, 12, 13, 15)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert c.epoch_info(11) == {"curriculum_stage": 2, "compound_share": 0.4}
    for bad, key in ((dict(epochs=(2, 0), compound_share=(0, 1)), "epochs"),
                     (dict(epochs=(2, 2), compound_share=(0,)), "compound_share"),
                     (dict(epochs=(2,), compound_share=(1.5,)), "compound_share"),
                     (dict(epochs=(2,), compound_share=(0,), generate="blend"), "generate"),
                     (dict(epochs=(2,), compound_share=(0,), lam_range=(0.0, 0.5)), "lam_range")):
        with pytest.raises(OptionError, match=f"train.curriculum.{key}"):
            cl.Curriculum(**bad)
    # a set without compounds and nothing generated cannot serve a compound stage
    y = np.eye(6, dtype=np.float32)[np.arange(40) % 6]
    with pytest.raises(OptionError, match="no compound label"):
        cl.CurriculumSamples(list(range(40)), y, cl.Curriculum((1, 1), (0, 0.5), generate="none"), 0)
    with pytest.raises(OptionError, match="two different emotions"):
        cl.CurriculumSamples(list(range(40)), np.eye(6, dtype=np.float32)[np.zeros(40, int)],
                             cl.Curriculum((1, 1), (0, 0.5)), 0)


def test_compound_share_per_stage_on_real_batches(rafdb_rows):
    table, y = rafdb_rows
    _, dataset = samples(table, y)
    size, real = len(dataset), int((positives(torch.as_tensor(y)) >= 2).sum())
    assert 0 < real < size
    sampler = EpochSampler(size, seed=SEED)
    loader = DataLoader(dataset, batch_size=64, sampler=sampler, num_workers=0)
    for epoch, share in enumerate(FOUR_STAGES.compound_share):
        sampler.set_epoch(epoch)
        compound = generated = seen = 0
        for batch in loader:
            compound += int((positives(batch["target"]) >= 2).sum())
            generated += int(batch["generated"].sum())
            seen += len(batch["target"])
            assert torch.all(positives(batch["target"][~batch["generated"]]) <= 2)
        assert seen == size
        assert compound == round(share * size), (epoch, compound)  # 0 in stage 0, then the configured share
        assert generated == max(0, round(share * size) - real)  # real compounds first, generated for the rest
    counts = dataset.plan(3).counts()
    assert counts == {"single": 0, "real": real, "generated": size - real}


def test_generated_compounds_carry_both_emotions_and_are_reproducible(rafdb_rows):
    table, y = rafdb_rows
    base, dataset = samples(table, y)
    plan = dataset.plan(3)
    slots = np.flatnonzero(plan.kind == cl.GENERATED)
    modes = set()
    again = samples(table, y)[1]  # a fresh dataset: everything comes from (seed, epoch, slot)
    for slot in slots[:12].tolist():
        first, second = int(plan.first[slot]), int(plan.second[slot])
        assert positives(torch.as_tensor(y[first])) == 1 and positives(torch.as_tensor(y[second])) == 1
        assert y[first].argmax() != y[second].argmax()  # two different emotions
        item = dataset[(3, slot)]
        assert torch.equal(item["target"], torch.as_tensor(np.maximum(y[first], y[second])))  # the union
        assert torch.equal(item["mask"], torch.ones(6))  # both masks all 1: their AND
        mix = cl.mix_params(SEED, 3, slot, "both", 16, 16)
        assert mix == cl.mix_params(SEED, 3, slot, "both", 16, 16)
        a, b = base[(3, first, slot, 0)]["image"], base[(3, second, slot, 1)]["image"]
        assert torch.equal(item["image"], cl.mix_images(a, b, mix))
        assert torch.equal(item["image"], again[(3, slot)]["image"]) and item["generated"]
        if mix.mode == "cutmix":
            top, left, h, w = mix.box
            assert mix.lam == pytest.approx(1 - h * w / 256) and 0.25 < mix.lam < 0.75
            inside = torch.zeros(16, 16, dtype=torch.bool)
            inside[top:top + h, left:left + w] = True
            assert torch.equal(item["image"][:, inside], b[:, inside])
            assert torch.equal(item["image"][:, ~inside], a[:, ~inside])
        else:
            assert 0.3 <= mix.lam <= 0.7
        modes.add(mix.mode)
    assert modes == {"cutmix", "mixup"}
    # another seed or epoch, another plan and mix
    assert not np.array_equal(samples(table, y, seed=SEED + 1)[1].plan(3).first, plan.first)
    assert not np.array_equal(dataset.plan(2).first, plan.first)
    # the KL head's form, and label columns after the expression ones left unlabelled
    target, mask = cl.mix_labels(torch.tensor([1.0, 0, 1, 0]), torch.tensor([0, 1.0, 0, 1]),
                                 torch.tensor([1.0, 1, 1, 1]), torch.tensor([1.0, 0, 1, 1]), columns=2, normalise=True)
    assert target.tolist() == [0.5, 0.5, 0, 0] and mask.tolist() == [1, 0, 0, 0]


def test_ablation_table_has_a_curriculum_column(tmp_path):
    rows = [{"name": "+mixup", "mae": True, "distillation": True, "ema": True, "mixup": True, "curriculum": False,
             "f1": 0.4}, {"name": "+curriculum", "mae": True, "distillation": True, "ema": True, "mixup": True,
                          "curriculum": True, "f1": 0.5}]
    md = write_ablation_table(rows, tmp_path).read_text()
    assert "| Mixup | Curriculum | F1 score |" in md
    assert "| +mixup | ✓ | ✓ | ✓ | ✓ | × | 0.4000 |" in md and "| +curriculum | ✓ | ✓ | ✓ | ✓ | ✓ | 0.5000 |" in md


@pytest.fixture(scope="module")
def emotion_run(tiny_world, tmp_path_factory):
    run = tmp_path_factory.mktemp("curriculum") / "straight"
    code = main_emotion(["--demo", *TINY_VIT, rafdb(tiny_world), CURRICULUM, f"output.dir={run}"])
    return run, code


def fold_records(run):
    return [r for r in json.loads((run / "fold_0" / "metrics.json").read_text()) if "val_score" in r]


def test_emotion_stage_trains_a_fold_with_the_curriculum(emotion_run, capsys):
    run, code = emotion_run
    assert code == 0
    status = json.loads((run / "fold_0" / "status.json").read_text())
    assert status["state"] == "finished" and status["epoch"] == 3  # 1 + 2 epochs: train.epochs null = the stages' sum
    records = fold_records(run)
    assert [r["curriculum_stage"] for r in records] == [0, 1, 1]
    assert [r["compound_share"] for r in records] == [0.0, 0.5, 0.5]
    # the model is chosen in the last stage only: epoch 0 (no compounds yet) is never the best
    assert records[0]["best_epoch"] == -1 and status["best_epoch"] in (1, 2)
    report = (run / "fold_report.md").read_text()
    assert "Curriculum (train.curriculum)" in report and "| Epoch | Stage | Compound share | fold-1 |" in report
    assert "| 2 | 1 | 0.5 |" in report and "Best epochs: fold-1 epoch" in report


def test_resume_mid_stage_equals_uninterrupted(emotion_run, tiny_world, tmp_path):
    straight, code = emotion_run
    assert code == 0
    per_epoch = json.loads((straight / "fold_0" / "status.json").read_text())["update"] // 3
    run = tmp_path / "interrupted"
    stop = per_epoch + per_epoch // 2  # in the middle of the second epoch, the first of stage 1
    assert main_emotion(["--demo", *TINY_VIT, rafdb(tiny_world), CURRICULUM, f"train.stop_after_updates={stop}",
                         f"output.dir={run}"]) == 0
    status = json.loads((run / "fold_0" / "status.json").read_text())
    assert status["state"] == "stopped" and status["epoch"] == 1 and status["update"] == stop
    assert main_emotion(["--resume", str(run), "--folds", "0", "train.stop_after_updates=null"]) == 0
    weights = sorted((straight / "fold_0" / "export").glob("*.safetensors"))
    assert weights
    for path in weights:
        a, b = load_file(str(path)), load_file(str(run / "fold_0" / "export" / path.name))
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert (straight / "fold_0" / "oof.csv").read_bytes() == (run / "fold_0" / "oof.csv").read_bytes()
    assert [r["val_score"] for r in fold_records(straight)] == [r["val_score"] for r in fold_records(run)]
    # a resumed run may not change the curriculum
    assert main_emotion(["--resume", str(run), "--folds", "0", "train.curriculum.compound_share=[0, 1]"]) == 2


def test_cexprnet_runs_a_one_epoch_per_stage_curriculum(tiny_world, tmp_path, capsys):
    run = tmp_path / "cexprnet"
    expression = datasets(tiny_world, "rafdb_basic", "rafdb_compound")
    # train.validate_every=2: of the first stage's epochs 0 and 1 only epoch 0 is validated; the last stage's always
    code = main_cexprnet(["--demo", "train.batch_size=16", "train.log_every=4", "model.img_size=32", "loss.au=0",
                          "train.curriculum={enabled: true, epochs: [2, 1], compound_share: [0, 0.6]}", expression,
                          "train.validate_every=2", f"output.dir={run}"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "curriculum of 2 stages" in out.out and "3 epochs in all" in out.out
    records = [r for r in json.loads((run / "metrics.json").read_text()) if "val_score" in r]
    assert [(r["epoch"], r["curriculum_stage"], r["compound_share"]) for r in records] == [(0, 0, 0.0), (2, 1, 0.6)]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["best_epoch"] == 2  # chosen in the last stage
    assert "(the best is chosen from epoch 2 on)" in out.out
    # the multi-class head cannot carry two emotions: the curriculum (on by default) is skipped, and said
    assert main_cexprnet(["--demo", "model.expr_head=multiclass", "loss.dist=0", "loss.au=0", expression,
                          "model.img_size=32", "train.batch_size=16", "train.stop_after_updates=1",
                          f"output.dir={tmp_path / 'multiclass'}"]) == 0
    assert "training without train.curriculum: it mixes the 6 basic emotions" in capsys.readouterr().out


def test_curriculum_on_by_default_and_train_epochs_sets_the_length(rafdb_rows, capsys):
    for stage in ("emotion", "cexprnet"):
        config = runs.load_config(stage)
        assert config.train.epochs is None and config.train.ema_warmup
        configured, curriculum = cl.configure(config, stage)
        assert curriculum.epochs == (5, 5, 3, 3) and configured.train.epochs == 16
        short, _ = cl.configure(runs.load_config(stage, [], ["train.epochs=7"]), stage)
        assert short.train.epochs == 7 and "stops the run in stage 1" in capsys.readouterr().out
        long, _ = cl.configure(runs.load_config(stage, [], ["train.epochs=20"]), stage)
        assert long.train.epochs == 20 and "goes on for 4 more" in capsys.readouterr().out
        skipped, none = cl.configure(config, stage, skip="a reason")
        assert none is None and skipped.train.epochs == 16 and "without train.curriculum: a reason" in \
            capsys.readouterr().out
        off = runs.load_config(stage, [], ["train.curriculum.enabled=false"])
        assert cl.from_config(off.train) is None
        with pytest.raises(OptionError, match="train.epochs is null"):
            cl.configure(off, stage)
        plain = runs.load_config(stage, [], ["train.curriculum.enabled=false", "train.epochs=3"])
        assert cl.configure(plain, stage) == (plain, None)
    table, y = rafdb_rows
    base, _ = samples(table, y)
    plain = base[(2, 5)]  # a key without salt seeds as before the curriculum existed
    assert torch.equal(plain["image"], base[(2, 5)]["image"])
    assert not torch.equal(plain["image"], base[(2, 5, 0)]["image"])

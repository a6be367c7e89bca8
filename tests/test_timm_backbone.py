"""Emotion folds with any timm backbone (``model.backbone=timm:<name>``): the fold run on the synthetic world, its
timm classifier export read back through ``load_export``, a submission from it (alone and beside a ViT run), a
CNN teacher distilled into a ViT student, weights from local files; and the EMA warm-up (``train.ema_warmup``)."""
import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from abaw_ce import challenge_file, labels
from abaw_ce.cli.emotion import main_emotion
from abaw_ce.errors import InputError
from abaw_ce.finetune import ProbabilityEnsemble, load_teacher, resolve_teacher_paths
from abaw_ce.models.registry import export_kind, load_export
from abaw_ce.models.timm_classifier import (META_FILE, MODEL_FILE, build_timm_classifier, classifier_meta,
                                            save_timm_classifier)
from abaw_ce.models.vit import VitArch, build_vit
from abaw_ce.submission.pipeline import make_submission
from abaw_ce.submission.run_checks import check_runs
from abaw_ce.train import runs
from abaw_ce.train.engine import FROZEN_ON_RESUME, layer_decay_of, make_ema

SIZE, HALF = 48, [0.5, 0.5, 0.5]  # timm's test_resnet normalises with mean = std = 0.5
QUICK = ["--demo", "train.batch_size=16", "train.log_every=4", "train.epochs=1", "data.folds=2",
         f"model.img_size={SIZE}"]
TIMM = ["model.backbone=timm:test_resnet"]
TINY_VIT = ["model.encoder=none", "model.arch.patch_size=8", "model.arch.embed_dim=32", "model.arch.depth=2",
            "model.arch.num_heads=2", f"data.mean={HALF}", f"data.std={HALF}"]


def rafdb(world) -> str:
    return (f"data.datasets=[{{format: rafdb_basic, root: {world}/rafdb_basic}},"
            f"{{format: rafdb_compound, root: {world}/rafdb_compound}}]")


def train(capsys, *args) -> str:
    code = main_emotion([*QUICK, *map(str, args)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out


@pytest.fixture(scope="module")
def timm_run(tiny_world, tmp_path_factory):
    """Both folds of a test_resnet emotion run (1 epoch each), with the EMA warm-up on."""
    run = tmp_path_factory.mktemp("timm") / "run"
    assert main_emotion([*QUICK, *TIMM, rafdb(tiny_world), "train.ema_warmup=true", f"output.dir={run}"]) == 0
    return run


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One work folder for the submissions of this module: the faces step runs once (its cache)."""
    return tmp_path_factory.mktemp("submission_work")


def test_timm_fold_run_exports_reloads_and_submits(timm_run, tiny_world, work, tmp_path):
    for k in (0, 1):
        export = timm_run / f"fold_{k}" / "export"
        assert export_kind(export) == "timm" and (export / MODEL_FILE).is_file()
        meta = json.loads((export / META_FILE).read_text())
        assert meta["kind"] == "timm" and meta["model_name"] == "test_resnet" and meta["num_classes"] == 6
        assert meta["img_size"] == SIZE and meta["mean"] == HALF and meta["std"] == HALF
        assert meta["head"]["labels"] == list(labels.BASIC_EMOTIONS) and meta["head"]["task"] == "emotion"
        assert meta["source"]["stage"] == "emotion" and meta["history"][0]["source"] == {"stage": "random-init"}
        module, loaded = load_export(export)
        assert loaded["scores"] == "sigmoid_logits" and loaded["img_size"] == SIZE and not module.training
        with torch.no_grad():
            assert module(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 6)
    config = runs.resumed_config(timm_run, [], FROZEN_ON_RESUME)
    assert config.train.ema_warmup is True  # what the engine was given (its summary line: "warm-up")
    assert check_runs([timm_run]).ok
    template = tiny_world / "test_ground_truth" / "template.txt"
    out = tmp_path / "sub.txt"
    summary = make_submission(tiny_world / "test", [timm_run], out, template=template, detector="opencv",
                              crop_size=SIZE, progress=False, work_dir=work)
    assert challenge_file.validate_submission(out, template=template).ok
    assert len(summary["models"]) == 2


def test_cnn_teacher_into_vit_student_and_a_mixed_ensemble(timm_run, tiny_world, work, tmp_path, capsys):
    """Each fold of a tiny ViT learns from the same fold of the CNN run (1 epoch of 10 updates); the two runs then
    make one submission."""
    vit_run = tmp_path / "vit"
    printed = train(capsys, *TINY_VIT, rafdb(tiny_world), f"distill.teachers={timm_run}", f"output.dir={vit_run}")
    assert printed.count("distillation on") == 2
    assert export_kind(vit_run / "fold_1" / "export") == "vit"
    assert check_runs([vit_run, timm_run]).ok  # one input signature across the folds of both kinds
    template = tiny_world / "test_ground_truth" / "template.txt"
    summary = make_submission(tiny_world / "test", [vit_run, timm_run], tmp_path / "sub.txt", template=template,
                              detector="opencv", crop_size=SIZE, progress=False, work_dir=work)
    assert len(summary["models"]) == 4 and challenge_file.validate_submission(tmp_path / "sub.txt").ok
    # and the other way: a ViT teacher beside the CNN one, for any student of the same input
    teacher = load_teacher(resolve_teacher_paths([str(vit_run), str(timm_run)], 0), SIZE, HALF, HALF)
    assert isinstance(teacher, ProbabilityEnsemble) and len(teacher.models) == 2
    with torch.no_grad():
        assert teacher(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 6)
    with pytest.raises(InputError, match="teacher expects 48 px"):
        load_teacher([timm_run / "fold_0" / "export"], 64, HALF, HALF)


def test_stopped_run_without_the_warmup_key_resumes_as_before(tiny_world, tmp_path, capsys):
    """A run saved before train.ema_warmup existed resumes without the warm-up; the key cannot change on resume."""
    run = tmp_path / "run"
    train(capsys, *TIMM, rafdb(tiny_world), "train.stop_after_updates=2", "--folds", "0", f"output.dir={run}")
    saved = (run / "config.yaml").read_text()
    assert "ema_warmup: true" in saved
    (run / "config.yaml").write_text("".join(line for line in saved.splitlines(keepends=True)
                                             if "ema_warmup" not in line))
    assert main_emotion(["--resume", str(run), "--folds", "0", "train.ema_warmup=true"]) == 2
    assert "train.ema_warmup" in capsys.readouterr().err
    assert main_emotion(["--resume", str(run), "--folds", "0", "train.stop_after_updates=null"]) == 0
    printed = capsys.readouterr().out
    assert "EMA on (decay 0.99)" in printed and "warm-up" not in printed
    assert json.loads((run / "fold_0" / "status.json").read_text())["state"] == "finished"


def test_backbone_settings_are_checked(tiny_world, tmp_path, capsys):
    def fails(*args) -> str:
        assert main_emotion([*QUICK, rafdb(tiny_world), "--folds", "0", *map(str, args)]) == 2
        return capsys.readouterr().err

    assert "timm:<name>" in fails("model.backbone=resnet18", f"output.dir={tmp_path / 'a'}")
    assert "has no model 'no_such_net'" in fails("model.backbone=timm:no_such_net", f"output.dir={tmp_path / 'b'}")
    assert "model.weights" in fails(*TIMM, "model.encoder=somewhere", f"output.dir={tmp_path / 'c'}")
    assert "timm:<name> backbones only" in fails("model.encoder=none", "model.weights=w.pth",
                                                 f"output.dir={tmp_path / 'd'}")
    assert "unknown config key" in fails("model.backbone_name=x", f"output.dir={tmp_path / 'e'}")
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_weights_come_from_local_files_and_exports_check_their_labels(tmp_path):
    torch.manual_seed(0)
    source, meta = build_timm_classifier("test_convnext", 6, img_size=32)
    assert meta["img_size"] == 32 and meta["mean"] == HALF and meta["source"] == {"stage": "random-init"}
    native, native_meta = build_timm_classifier("test_efficientnet", 3)
    assert native_meta["img_size"] == 160 and native_meta["mean"] == [0.485, 0.456, 0.406]  # pretrained config
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        model, meta = build_timm_classifier("test_convnext", 12, img_size=32, weights=path)
        assert meta["source"] == {"weights": str(path)} and model.num_classes == 12  # a fresh head
        for key, value in source.state_dict().items():
            if not key.startswith("head.fc."):
                assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(InputError, match="w.pth.*do not fit timm model"):
        build_timm_classifier("test_resnet", 6, weights=tmp_path / "w.pth")
    au = [f"AU{n}" for n in labels.AFFWILD2_AUS]
    save_timm_classifier(tmp_path / "au", build_timm_classifier("test_resnet", len(au))[0], "test_resnet", 32,
                         HALF, HALF, {"task": "au", "labels": au}, {"stage": "au"})
    assert classifier_meta(tmp_path / "au")["labels"] == au
    with pytest.raises(InputError, match=r"au.*expected the basic emotions in the kit's order"):
        load_export(tmp_path / "au")
    model, meta = build_timm_classifier("test_resnet", 6, weights=tmp_path / "au")  # an earlier stage's export
    assert meta["img_size"] == 32 and meta["head"]["task"] == "au" and model.num_classes == 6


def test_layer_decay_needs_a_group_matcher():
    cnn, _ = build_timm_classifier("test_efficientnet", 6)
    assert layer_decay_of(cnn, 0.75) == 0.75 and layer_decay_of(cnn, 1.0) is None
    assert layer_decay_of(nn.Sequential(nn.Linear(2, 2)), 0.75) is None
    vit = build_vit(VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), num_classes=6)
    assert layer_decay_of(vit, 0.65) == 0.65


def test_ema_warmup_forgets_the_starting_weights():
    """Both copy the weights at the first update (timm's step 1); from the second on, the plain EMA moves by
    1 - decay per update while the warm-up's decay starts near 0 and grows to ``decay``."""
    model = nn.Linear(3, 2)
    plain, warm = make_ema(model, 0.999), make_ema(model, 0.999, warmup=True)
    assert not plain.use_warmup and warm.use_warmup
    for ema in (plain, warm):
        ema.update(model, step=1)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for ema in (plain, warm):
        ema.update(model, step=2)
    assert torch.allclose(plain.module.weight, 0.999 * start + 0.001 * model.weight, atol=1e-6)
    first = warm.get_decay(2)
    assert first < 0.5 and torch.allclose(warm.module.weight, first * start + (1 - first) * model.weight, atol=1e-6)
    for step in range(3, 30):
        for ema in (plain, warm):
            ema.update(model, step=step)
    gap = {name: (ema.module.weight - model.weight).abs().max().item() for name, ema in (("plain", plain),
                                                                                          ("warm", warm))}
    assert gap["warm"] < 0.1 < 0.9 < gap["plain"]
    decays = [warm.get_decay(s) for s in range(2, 100000, 997)]
    assert decays == sorted(decays) and max(decays) == 0.999

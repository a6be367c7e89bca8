"""Stages 2 and 3 through their real scripts on the synthetic world, with a tiny encoder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from abaw_ce import labels
from abaw_ce.models.export import encoder_state_from_pretraining, load_classifier, save_encoder
from abaw_ce.models.mae import DecoderArch, MaskedAutoencoder
from abaw_ce.models.vit import VitArch
from abaw_ce.train import runs
from abaw_ce.cli.emotion import main_emotion

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TINY = ["train.precision=fp32", "train.num_workers=0", "train.batch_size=16", "train.eval_batch_size=64",
        "train.log_every=4", "train.ema_decay=0.9", "model.drop_path=0.0", "optim.lr=1e-3",
        "optim.layer_decay=0.8", "train.keep_checkpoints=1"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    torch.manual_seed(0)
    mae = MaskedAutoencoder(VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
                            DecoderArch(embed_dim=16, depth=1, num_heads=2))
    return save_encoder(tmp_path_factory.mktemp("enc") / "export", encoder_state_from_pretraining(mae.encoder),
                        mae.arch, MEAN, STD, source={"stage": "mae", "run": "fixture"})


def rafdb(world: Path) -> str:
    return (f"data.datasets=[{{format: rafdb_basic, root: {world}/rafdb_basic}},"
            f"{{format: rafdb_compound, root: {world}/rafdb_compound}}]")


def run_script(script: str, *args, launcher=None, check=True):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    command = [*(launcher or [sys.executable]), str(ROOT / script), *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def test_emotion_folds_write_exports_reports_and_never_leak_groups(tiny_world, encoder, tmp_path):
    run = tmp_path / "emotion"
    result = run_script("finetune/emotion.py", *TINY, f"model.encoder={encoder}", rafdb(tiny_world),
                        "train.epochs=2", "--folds", "0,1", f"output.dir={run}")
    assert "| fold-1 |" in result.stdout and "| fold-2 |" in result.stdout
    for k in (0, 1):
        model, meta = load_classifier(run / f"fold_{k}" / "export")
        assert meta["head"]["labels"] == list(labels.BASIC_EMOTIONS) and meta["head"]["task"] == "emotion"
        assert meta["history"][0]["source"] == {"stage": "mae", "run": "fixture"}
        assert set(meta["head"]["thresholds"]) == set(labels.BASIC_EMOTIONS)
        validation = json.loads((run / f"fold_{k}" / "validation.json").read_text())
        assert set(validation["f1"]) == set(labels.BASIC_EMOTIONS) and "mean_f1_tuned" in validation
        assert json.loads((run / f"fold_{k}" / "status.json").read_text())["state"] == "finished"
    assert not (run / "fold_2").exists()
    report = pd.read_csv(run / "fold_report.csv")
    assert list(report["fold"]) == ["fold-1", "fold-2"]
    assert list(report.columns[1:]) == [e.capitalize() for e in labels.BASIC_EMOTIONS] + ["Average"]
    assert (run / "fold_report.png").is_file() and (run / "fold_report.md").is_file()
    oof = pd.read_csv(run / "oof.csv")
    assert set(oof["fold"]) == {0, 1} and {f"p_{e}" for e in labels.BASIC_EMOTIONS} <= set(oof.columns)
    folds = pd.read_csv(run / "folds.csv")
    for k in range(5):
        val_groups = set(folds[folds.fold == k].group)
        train_groups = set(folds[folds.fold != k].group)
        assert not val_groups & train_groups
    assert set(oof[oof.fold == 0].path) == set(folds[folds.fold == 0].path)
    # the other folds later, in the same run
    run_script("finetune/emotion.py", "--resume", run, "--folds", "2", "train.epochs=1")
    assert (run / "fold_2" / "export").is_dir() and "| fold-3 |" in (run / "fold_report.md").read_text()


def test_emotion_resume_mid_epoch_equals_uninterrupted(tiny_world, encoder, tmp_path):
    common = [*TINY, f"model.encoder={encoder}", rafdb(tiny_world), "train.epochs=2", "train.mixup_alpha=0.4",
              "--folds", "0", "train.patience=5"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_script("finetune/emotion.py", *common, f"output.dir={straight}")
    first = run_script("finetune/emotion.py", *common, "train.stop_after_updates=20", f"output.dir={interrupted}")
    assert "continue with --resume" in first.stdout
    assert json.loads((interrupted / "fold_0" / "status.json").read_text())["state"] == "stopped"
    run_script("finetune/emotion.py", "--resume", interrupted, "--folds", "0", "train.stop_after_updates=null")
    a = load_file(str(straight / "fold_0" / "export" / "encoder.safetensors"))
    b = load_file(str(interrupted / "fold_0" / "export" / "encoder.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_processes_share_one_run_folder(tiny_world, encoder, tmp_path):
    """Under torchrun every process runs the stage: only the main one creates the folder, its config and the
    fold split (the others wait and read them), and the fold report is written once."""
    run = tmp_path / "emotion"
    result = run_script("finetune/emotion.py", *TINY, f"model.encoder={encoder}", rafdb(tiny_world),
                        "train.epochs=1", "train.batch_size=8", "--folds", "0", f"output.dir={run}",
                        launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                  "--master_port", "29537"))
    assert result.stdout.count("F1 of the 6 basic emotions on each fold") == 1  # one report, from one process
    assert json.loads((run / "fold_0" / "status.json").read_text())["state"] == "finished"
    assert (run / "fold_0" / "export").is_dir() and (run / "folds.csv").is_file()


def partly_annotated_au(world: Path, out: Path, share: float = 0.4, seed: int = 0) -> Path:
    """The world's Aff-Wild2 AU files with about ``share`` of the annotated entries set to -1, so that the
    half-batches of two processes carry different numbers of labelled AUs."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    for txt in sorted((world / "affwild2" / "annotations" / "AU").glob("*.txt")):
        header, *rows = txt.read_text().splitlines()
        lines = [header]
        for row in rows:
            values = row.split(",")
            if "-1" not in values:  # an unannotated frame stays as it is
                hidden = rng.random(len(values)) < share
                hidden[rng.integers(len(values))] = False  # each frame keeps one label
                values = ["-1" if h else v for h, v in zip(hidden, values)]
            lines.append(",".join(values))
        (out / txt.name).write_text("\n".join(lines) + "\n")
    return out


def test_two_processes_match_one_on_masked_au_batches(tiny_world, encoder, tmp_path):
    """The masked AU loss is a mean over the labelled entries of the global batch: two processes with 8
    images each, whose labelled counts differ, update the weights as one process with those 16 images."""
    annotations = partly_annotated_au(tiny_world, tmp_path / "AU")
    common = [*TINY, f"model.encoder={encoder}", "train.ema=false", "optim.warmup_epochs=0", "train.log_every=1",
              "train.stop_after_updates=3",
              f"data.datasets=[{{format: affwild2_au, images: {tiny_world}/affwild2/cropped_aligned, "
              f"annotations: {annotations}}}]"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_script("finetune/au.py", *common, "train.batch_size=16", f"output.dir={one}")
    run_script("finetune/au.py", *common, "train.batch_size=8", f"output.dir={two}",
               launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                         "--master_port", "29543"))
    a, b = (load_file(str(run / runs.CHECKPOINT_DIR / runs.checkpoint_name(3) / "model.safetensors"))
            for run in (one, two))
    for key in a:  # AdamW turns float noise in tiny gradients into ~1e-5 steps; per-process counts gave ~3e-3
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-4), key
    losses = [[r["loss"] for r in json.loads((run / "metrics.json").read_text())] for run in (one, two)]
    assert np.allclose(losses[0], losses[1], rtol=1e-4)


def test_early_stopping_ends_a_run_that_stops_improving(tiny_world, encoder, tmp_path):
    run = tmp_path / "run"
    run_script("finetune/emotion.py", *TINY, f"model.encoder={encoder}", rafdb(tiny_world), "optim.lr=0",
               "train.epochs=10", "train.patience=2", "train.curriculum.enabled=false", "--folds", "0",
               f"output.dir={run}")  # a curriculum chooses in its last stage only (test_curriculum)
    status = json.loads((run / "fold_0" / "status.json").read_text())
    assert status["stopped_early"] and status["epoch"] == 3 and status["best_epoch"] == 0


def test_ablation_writes_table_two(tiny_world, encoder, tmp_path):
    out = tmp_path / "ablation"
    result = run_script("finetune/emotion.py", *TINY, f"model.encoder={encoder}", rafdb(tiny_world),
                        "train.epochs=1", "model.arch.img_size=32", "model.arch.patch_size=8",
                        "model.arch.embed_dim=32", "model.arch.depth=2", "model.arch.num_heads=2",
                        "train.curriculum.epochs=[1, 1]", "train.curriculum.compound_share=[0, 0.5]",
                        "--folds", "0", "--ablation", out)
    table = pd.read_csv(out / "ablation.csv")
    assert list(table["name"]) == ["baseline", "+MAE", "+distillation", "+EMA", "+mixup", "+curriculum"]
    assert table["f1"].between(0, 1).all()
    md = (out / "ablation.md").read_text()
    assert "| +mixup | ✓ | ✓ | ✓ | ✓ | × |" in md and "| baseline | × | × | × | × | × |" in md
    assert "| +curriculum | ✓ | ✓ | ✓ | ✓ | ✓ |" in md
    assert "(EMA warm-up (train.ema_warmup): on; 1 epoch(s) per fold)" in md.splitlines()[0]
    curriculum = __import__("omegaconf").OmegaConf.load(out / "+curriculum" / "config.yaml").train.curriculum
    assert curriculum.enabled and list(curriculum.epochs) == [1, 1]
    assert "Curriculum (train.curriculum)" in (out / "+curriculum" / "fold_report.md").read_text()
    config = json.loads(json.dumps(__import__("omegaconf").OmegaConf.to_container(
        __import__("omegaconf").OmegaConf.load(out / "+distillation" / "config.yaml"))))
    assert config["distill"]["teachers"] == str(out / "+MAE") and config["model"]["encoder"] == str(encoder)
    assert "distillation on" in result.stdout


def test_au_stage_through_accelerate_launch(tiny_world, encoder, tmp_path):
    run = tmp_path / "au"
    dataset = (f"data.datasets=[{{format: affwild2_au, images: {tiny_world}/affwild2/cropped_aligned, "
               f"annotations: {tiny_world}/affwild2/annotations/AU}}]")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = run_script("finetune/au.py", *TINY, f"model.encoder={encoder}", dataset, "train.epochs=2",
                        f"output.dir={run}", launcher=launcher)
    assert "AU mean F1" in result.stdout
    model, meta = load_classifier(run / "export")
    assert meta["head"]["labels"] == [f"AU{n}" for n in labels.AFFWILD2_AUS]
    assert meta["source"]["stage"] == "au" and meta["history"][0]["source"]["stage"] == "mae"
    validation = json.loads((run / "validation.json").read_text())
    assert len(validation["f1"]) == 12 and 0 <= validation["mean_f1_tuned"] <= 1
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 12)


def test_bad_inputs_are_refused_with_clear_messages(tiny_world, encoder, tmp_path, capsys):
    def fails(*args):
        assert main_emotion([*TINY, *map(str, args)]) == 2
        return capsys.readouterr().err

    base = [rafdb(tiny_world), "--folds", "0"]
    assert "model.encoder is required" in fails(*base, f"output.dir={tmp_path / 'a'}")
    err = fails(f"model.encoder={encoder}", "model.img_size=48", *base, f"output.dir={tmp_path / 'b'}")
    assert "trained at 32 px" in err and "resize_pos_embed" in err
    err = fails(f"model.encoder={encoder}", "data.mean=[0.5,0.5,0.5]", *base, f"output.dir={tmp_path / 'c'}")
    assert "data.mean" in err and "normalisation" in err
    assert not any((tmp_path / n).exists() for n in "abc")  # nothing left behind by a refused setup
    # a teacher whose outputs are in another order
    state = load_file(str(Path(encoder) / "encoder.safetensors"))
    state.update({"head.weight": torch.zeros(6, 32), "head.bias": torch.zeros(6)})
    teacher = save_encoder(tmp_path / "teacher", state, VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                                num_heads=2), MEAN, STD, source={},
                           head={"task": "emotion", "labels": list(reversed(labels.BASIC_EMOTIONS))})
    err = fails(f"model.encoder={encoder}", f"distill.teachers=[{teacher}]", *base, f"output.dir={tmp_path / 'd'}")
    assert "refusing to distil" in err and "teacher" in err
    # a source too small to give every fold a validation part
    manifest = tmp_path / "few.csv"
    images = sorted((tiny_world / "rafdb_basic" / "Image" / "aligned").glob("*.jpg"))[:3]
    manifest.write_text("path,expression\n" + "".join(f"{p},happiness\n" for p in images))
    err = fails(f"model.encoder={encoder}", f"data.datasets=[{{format: manifest, csv_path: {manifest}}}]",
                "--folds", "0", f"output.dir={tmp_path / 'e'}")
    assert "few" in err and "5 folds need at least 5" in err

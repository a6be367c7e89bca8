"""The C-EXPR-NET AU teacher: its outputs cached in the run folder (a resume reuses them), its rows shared
between the launched processes, its labels those of the teacher run directly on the images."""
import json
import os
import sys

import numpy as np
import torch

from abaw_ce import labels
from abaw_ce.cexprnet.train import teacher_au_labels
from abaw_ce.data.images import read_rgb
from abaw_ce.data.labelled import FaceTransform
from abaw_ce.data.table import au_arrays
from abaw_ce.models.export import WEIGHTS_FILE, save_encoder
from abaw_ce.models.timm_classifier import build_timm_classifier, load_any_classifier, save_timm_classifier
from abaw_ce.models.vit import VitArch, build_vit
from abaw_ce.train import runs
from abaw_ce.train.engine import load_tables
from abaw_ce.cli.cexprnet import main_cexprnet
from tests.test_cexprnet_stage import QUICK, datasets
from tests.test_finetune_stages import run_script

ONE_UPDATE = [*QUICK, "train.epochs=1", "train.stop_after_updates=1"]
TEACHER_DIR, TEACHER_PROBS_FILE = "au_teacher", "probs.npy"  # <run>/au_teacher/probs.npy, stamped by done.json


def au_export(path):
    """A tiny AU-stage export over the Aff-Wild2 AUs (random weights, fixed seed)."""
    arch = VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    return save_encoder(path, build_vit(arch, num_classes=12).state_dict(), arch, [0.5] * 3, [0.25] * 3,
                        source={"stage": "au"}, head={"task": "au", "labels": [f"AU{n}" for n in labels.AFFWILD2_AUS]})


def expression_table(world):
    """The stage's table for the RAF-DB sets: no row has an AU label, so the teacher labels them all."""
    config = runs.load_config("cexprnet", [runs.packaged_config("cexprnet_demo")],
                              [datasets(world, "rafdb_basic", "rafdb_compound")])
    return load_tables(config.data.datasets, non_basic="zero")


def direct_probs(teacher, paths):
    """The teacher run on the images by hand: one batch, one process, float32 sigmoids."""
    model, info = load_any_classifier(teacher)
    transform = FaceTransform(info["img_size"], info["mean"], info["std"], train=False)
    images = torch.stack([transform(read_rgb(p))["image"] for p in paths])
    with torch.no_grad():
        return torch.sigmoid(model.eval()(images)).numpy()


def assert_teacher_cache(cache, teacher, paths):
    """The cache holds the teacher's probabilities of ``paths``: equal to a direct computation, and the
    same 0/1 labels at 0.5."""
    cached, direct = np.load(cache / TEACHER_PROBS_FILE), direct_probs(teacher, paths)
    np.testing.assert_allclose(cached, direct, atol=1e-5)
    assert ((cached >= 0.5) == (direct >= 0.5)).all()


def test_teacher_outputs_are_cached_and_restamped_when_the_export_or_rows_change(tiny_world, tmp_path):
    teacher, cache = au_export(tmp_path / "au_export"), tmp_path / "cache"
    table = expression_table(tiny_world)

    def label(rows=table):
        return teacher_au_labels(rows, *au_arrays(rows, "cexpr"), teacher, cache_dir=cache, progress=False)

    taught, taught_mask, first = label()
    assert (first.labelled, first.reused) == (len(table), False) and taught_mask.any(axis=1).all()
    assert_teacher_cache(cache, teacher, table["path"])
    on = direct_probs(teacher, table["path"]) >= 0.5
    for j, au in enumerate(labels.AFFWILD2_AUS):  # each teacher AU fills its C-EXPR-DB column
        np.testing.assert_array_equal(taught[:, list(labels.CEXPR_AUS).index(au)], on[:, j])
    written = (cache / TEACHER_PROBS_FILE).stat().st_mtime_ns

    again, _, second = label()
    assert second.reused and (cache / TEACHER_PROBS_FILE).stat().st_mtime_ns == written
    np.testing.assert_array_equal(again, taught)
    assert not label(table.iloc[1:])[2].reused  # other rows
    assert label(table.iloc[1:])[2].reused
    weights = teacher / WEIGHTS_FILE
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert not label(table.iloc[1:])[2].reused  # a rewritten export


def test_a_timm_au_export_teaches_too_and_its_files_stamp_the_cache(tiny_world, tmp_path):
    au = [f"AU{n}" for n in labels.AFFWILD2_AUS]
    torch.manual_seed(0)
    teacher = save_timm_classifier(tmp_path / "timm_au", build_timm_classifier("test_resnet", len(au))[0],
                                   "test_resnet", 40, [0.5] * 3, [0.25] * 3, {"task": "au", "labels": au},
                                   {"stage": "au"})
    table, cache = expression_table(tiny_world), tmp_path / "cache"
    taught, _, report = teacher_au_labels(table, *au_arrays(table, "cexpr"), teacher, cache_dir=cache,
                                          progress=False)
    assert (report.labelled, report.reused) == (len(table), False)
    assert_teacher_cache(cache, teacher, table["path"])
    on = direct_probs(teacher, table["path"]) >= 0.5
    for j, name in enumerate(labels.AFFWILD2_AUS):  # each teacher AU fills its C-EXPR-DB column
        np.testing.assert_array_equal(taught[:, list(labels.CEXPR_AUS).index(name)], on[:, j])
    weights = teacher / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert not teacher_au_labels(table, *au_arrays(table, "cexpr"), teacher, cache_dir=cache,
                                 progress=False)[2].reused  # the timm export's weights file is in the stamp


def test_stage_caches_teacher_outputs_and_a_resume_reuses_them(tiny_world, tmp_path, capsys):
    teacher, run = au_export(tmp_path / "au_export"), tmp_path / "taught"
    expression_only = datasets(tiny_world, "rafdb_basic", "rafdb_compound")
    assert main_cexprnet(["--demo", *ONE_UPDATE, f"output.dir={run}", expression_only,
                          f"loss.au_teacher={teacher}"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "labelled the AUs of 350 image(s) without AU labels\n" in out
    cache = run / TEACHER_DIR
    assert_teacher_cache(cache, teacher, expression_table(tiny_world)["path"])
    stamp = (cache / "done.json").read_text()
    written = (cache / TEACHER_PROBS_FILE).stat().st_mtime_ns

    assert main_cexprnet(["--resume", str(run), "train.stop_after_updates=2"]) == 0, capsys.readouterr().err
    assert f"labelled the AUs of 350 image(s) without AU labels (its outputs reused from {cache})" in \
        capsys.readouterr().out
    assert (cache / "done.json").read_text() == stamp and (cache / TEACHER_PROBS_FILE).stat().st_mtime_ns == written


def test_two_processes_label_one_share_each_and_match_one_process(tiny_world, tmp_path):
    teacher, run = au_export(tmp_path / "au_export"), tmp_path / "two"
    result = run_script("finetune/cexprnet.py", "--demo", *ONE_UPDATE, "train.batch_size=8", f"output.dir={run}",
                        datasets(tiny_world, "rafdb_basic", "rafdb_compound"), f"loss.au_teacher={teacher}",
                        launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                  "--master_port", "29551"))
    assert result.stdout.count("labelled the AUs of 350 image(s)") == 1  # said once, by the main process
    assert_teacher_cache(run / TEACHER_DIR, teacher, expression_table(tiny_world)["path"])
    assert json.loads((run / TEACHER_DIR / "done.json").read_text())["rows_per_process"] == [175, 175]

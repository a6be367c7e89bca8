"""The C-EXPR-NET stage through its script on the synthetic world: export, reload, AU teacher, bad input."""
import json

import torch

from abaw_ce import labels
from abaw_ce.cexprnet.train import expression_targets, load_cexprnet
from abaw_ce.models.export import save_encoder
from abaw_ce.models.vit import VitArch, build_vit
from abaw_ce.train.finetune_cli import main_cexprnet
from tests.test_finetune_stages import run_script

QUICK = ["train.epochs=2", "train.batch_size=16", "train.log_every=4", "model.img_size=32"]


def datasets(world, *names):
    specs = json.loads((world / "world.json").read_text())["datasets"]
    body = ",".join("{" + ", ".join(f"{k}: {v}" for k, v in specs[n].items()) + "}" for n in names)
    return f"data.datasets=[{body}]"


def test_stage_script_trains_exports_and_reloads(tiny_world, tmp_path):
    run = tmp_path / "cexprnet"
    result = run_script("finetune/cexprnet.py", "--demo", *QUICK, f"output.dir={run}",
                        datasets(tiny_world, "rafdb_basic", "rafdb_compound", "affwild2_au"))
    assert "C-EXPR-NET expression F1" in result.stdout
    validation = json.loads((run / "validation.json").read_text())
    assert set(validation["expr_f1"]) == set(labels.BASIC_EMOTIONS)
    assert set(validation["au_f1"]) == {f"AU{n}" for n in labels.AFFWILD2_AUS}  # the AUs Aff-Wild2 labels
    net, meta = load_cexprnet(run / "export")
    assert meta["backbone"] == {"kind": "timm", "name": "resnet10t"} and meta["img_size"] == 32
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 32, 32))
    assert out["expr_logits"].shape == (2, 6) and out["au_logits"].shape == (2, 17)
    assert (run / "curves.png").is_file() and json.loads((run / "status.json").read_text())["state"] == "finished"


def test_au_teacher_labels_images_without_aus_and_missing_aus_are_refused(tiny_world, tmp_path, capsys):
    expression_only = datasets(tiny_world, "rafdb_basic", "rafdb_compound")
    code = main_cexprnet(["--demo", *QUICK, f"output.dir={tmp_path / 'none'}", expression_only])
    assert code == 2 and "loss.au_teacher" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # nothing left behind
    arch = VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    teacher = save_encoder(tmp_path / "au_export", build_vit(arch, num_classes=12).state_dict(), arch,
                           [0.5] * 3, [0.25] * 3, source={"stage": "au"},
                           head={"task": "au", "labels": [f"AU{n}" for n in labels.AFFWILD2_AUS]})
    code = main_cexprnet(["--demo", *QUICK, "train.epochs=1", f"output.dir={tmp_path / 'taught'}",
                          expression_only, f"loss.au_teacher={teacher}"])
    assert code == 0, capsys.readouterr().err
    assert "labelled the AUs of 350 image(s)" in capsys.readouterr().out
    # the DM-only and expression-only ablation rows need no AU labels
    assert main_cexprnet(["--demo", *QUICK, "train.epochs=1", f"output.dir={tmp_path / 'no_au'}",
                          expression_only, "loss.au=0"]) == 0


def test_expression_targets_cover_basic_and_compound_rows():
    import pandas as pd

    table = pd.DataFrame({"expression": ["happiness", "Sadly_Angry", "neutral", ""]})
    targets, has = expression_targets(table)
    assert has.tolist() == [True, True, False, False]
    assert targets[1, labels.BASIC_INDEX["anger"]] == 0.5 and targets[2:].sum() == 0


def test_make_submission_ensembles_the_two_tracks(tiny_world, tmp_path):
    from abaw_ce import submission
    from abaw_ce.cexprnet.train import build, save_export
    from abaw_ce.inference import load_models
    from abaw_ce.make_submission import make_submission
    from abaw_ce.train import runs
    from tests.test_make_submission import fake_fold_run, videos_folder

    config = runs.load_config("cexprnet", [runs.packaged_config("cexprnet_demo")], ["model.img_size=32"])
    torch.manual_seed(0)
    net, tokenizer, meta = build(config)
    save_export(tmp_path / "cx" / "export", net.eval(), meta, tokenizer)
    emotion = fake_fold_run(tmp_path / "emotion", folds=1)
    models = load_models([emotion, tmp_path / "cx"])
    assert [m.track for m in models] == ["emotion", "cexprnet"]
    probs = models[1].probabilities(torch.zeros(2, 3, 32, 32))
    torch.testing.assert_close(probs.sum(1), torch.ones(2))  # the expression softmax
    videos, template = videos_folder(tiny_world, tmp_path / "videos", names=("test002",))
    summary = make_submission(videos, [emotion, tmp_path / "cx"], tmp_path / "sub.txt",
                              template=template, detector="opencv", crop_size=48, progress=False)
    assert len(summary["models"]) == 2
    assert submission.validate_submission(tmp_path / "sub.txt", template=template).ok


def test_runs_are_averaged_first_then_weighted(tmp_path):
    import numpy as np
    import pytest

    from abaw_ce.data.packed import PackedWriter
    from abaw_ce.inference import load_models, predict_crops
    from tests.test_make_submission import fake_fold_run

    with PackedWriter(tmp_path / "store", 32, 32) as writer:
        for k, value in enumerate((0, 90, 200)):
            writer.add(np.random.default_rng(k).integers(0, 255, (32, 32, 3), dtype=np.uint8) // 2 + value // 2,
                       f"v/{k}", video="v", frame=k + 1)
    five, one = fake_fold_run(tmp_path / "five", folds=5), fake_fold_run(tmp_path / "one", folds=1)
    models = load_models([five, one])
    assert [m.run for m in models] == [0] * 5 + [1]
    per_run = [predict_crops(tmp_path / "store", [m for m in models if m.run == r], progress=False) for r in (0, 1)]
    both = predict_crops(tmp_path / "store", models, progress=False)
    np.testing.assert_allclose(both, (per_run[0] + per_run[1]) / 2, rtol=1e-5)
    weighted = predict_crops(tmp_path / "store", models, progress=False, run_weights=[1, 3])
    np.testing.assert_allclose(weighted, 0.25 * per_run[0] + 0.75 * per_run[1], rtol=1e-5)
    with pytest.raises(ValueError, match="one per run"):
        predict_crops(tmp_path / "store", models, progress=False, run_weights=[1])

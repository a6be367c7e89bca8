"""The C-EXPR-NET stage through its script on the synthetic world: export, reload, AU teacher, bad input."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from abaw_ce import fusion, labels
from abaw_ce.cexprnet.train import compound_f1, expression_targets
from abaw_ce.experiments.tune_fusion import oof_compound_probs
from abaw_ce.models.cexprnet import load_cexprnet
from abaw_ce.models.export import save_encoder
from abaw_ce.models.vit import VitArch, build_vit
from abaw_ce.cli.cexprnet import main_cexprnet
from tests.test_finetune_stages import run_script

QUICK = ["train.epochs=2", "train.batch_size=16", "train.log_every=4", "model.img_size=32"]


def datasets(world, *names):
    specs = json.loads((world / "world.json").read_text())["datasets"]
    body = ",".join("{" + ", ".join(f"{k}: {v}" for k, v in specs[n].items()) + "}" for n in names)
    return f"data.datasets=[{body}]"


def test_stage_script_trains_exports_and_reloads(tiny_world, tmp_path):
    run = tmp_path / "cexprnet"
    # RAF-DB basic gives every row to training: only the two sources named validate
    result = run_script("finetune/cexprnet.py", "--demo", *QUICK, f"output.dir={run}",
                        datasets(tiny_world, "rafdb_basic", "rafdb_compound", "affwild2_au"),
                        "data.val_sources=[rafdb_compound,affwild2_au]")
    assert "C-EXPR-NET (visual) expression F1" in result.stdout
    validation = json.loads((run / "validation.json").read_text())
    assert set(validation["expr_f1"]) == set(labels.BASIC_EMOTIONS)
    assert set(validation["au_f1"]) == {f"AU{n}" for n in labels.AFFWILD2_AUS}  # the AUs Aff-Wild2 labels
    net, meta = load_cexprnet(run / "export")
    assert meta["backbone"] == {"kind": "timm", "name": "abaw_plain_cnn", "in_chans": 3} and meta["img_size"] == 32
    assert meta["modality"] == "visual" and meta["expr_head"] == "kl"
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 32, 32))
    assert out["expr_logits"].shape == (2, 6) and out["au_logits"].shape == (2, 17)
    assert (run / "curves.png").is_file() and json.loads((run / "status.json").read_text())["state"] == "finished"
    # The exported epoch's predictions on the validation part, in the fold runs' oof.csv layout: they give back
    # its challenge F1, and tune_fusion finds its compound rows there for weighted fusion.
    oof = pd.read_csv(run / "oof.csv")
    assert len(oof) == validation["samples"] and oof["path"].map(lambda p: (tiny_world / p).is_file()).all()
    folds = pd.read_csv(run / "folds.csv")
    assert set(oof["path"].map(lambda p: Path(p).relative_to(tiny_world).parts[0])) == {"rafdb_compound", "affwild2"}
    assert len(oof) == folds["source"].isin(["rafdb_compound", "affwild2_au"]).mul(folds["fold"] == 0).sum()
    y = oof[[f"y_{e}" for e in labels.BASIC_EMOTIONS]].to_numpy()
    probs = oof[[f"p_{e}" for e in labels.BASIC_EMOTIONS]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # the KL head's softmax
    truth = labels.pair_classes(y, labels.CEXPR_PAIR_INDEX)
    scores = fusion.pair_scores(probs, "sum", pairs=labels.CEXPR_PAIRS)
    assert compound_f1(scores, truth, len(labels.CHALLENGE_COMPOUNDS)) == validation["challenge_f1"]
    oof_probs, oof_classes = oof_compound_probs([run])
    assert len(oof_classes) == ((truth >= 0) & (truth < len(labels.CHALLENGE_COMPOUNDS))).sum() > 0


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
    from abaw_ce import challenge_file
    from abaw_ce.cexprnet.train import build
    from abaw_ce.models.cexprnet import save_export
    from abaw_ce.submission.inference import load_models
    from abaw_ce.submission.pipeline import make_submission
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
    assert challenge_file.validate_submission(tmp_path / "sub.txt", template=template).ok
    import pytest

    from abaw_ce.submission.pipeline import check_track

    check_track(models[1:], "cexprnet")
    with pytest.raises(ValueError, match="another track"):
        check_track(models, "cexprnet")
    cx_only = make_submission(videos, [tmp_path / "cx"], tmp_path / "cx.txt", template=template,
                              detector="opencv", crop_size=48, progress=False, track="cexprnet")
    assert cx_only["models"] == [str(tmp_path / "cx" / "export")]


def test_runs_are_averaged_first_then_weighted(tmp_path):
    import numpy as np
    import pytest

    from abaw_ce.data.packed import PackedWriter
    from abaw_ce.submission.inference import RunShares, load_models, predict_crops
    from tests.test_make_submission import fake_fold_run

    with PackedWriter(tmp_path / "store", 32, 32) as writer:
        for k, value in enumerate((0, 90, 200)):
            writer.add(np.random.default_rng(k).integers(0, 255, (32, 32, 3), dtype=np.uint8) // 2 + value // 2,
                       f"v/{k}", video="v", frame=k + 1)
    five, one = fake_fold_run(tmp_path / "five", folds=5), fake_fold_run(tmp_path / "one", folds=1)
    models = load_models([five, one])
    assert [m.run_index for m in models] == [0] * 5 + [1]
    per_run = [predict_crops(tmp_path / "store", [m for m in models if m.run_index == r], progress=False)
               for r in (0, 1)]
    both = predict_crops(tmp_path / "store", models, progress=False)
    np.testing.assert_allclose(both, (per_run[0] + per_run[1]) / 2, rtol=1e-5)
    weighted = predict_crops(tmp_path / "store", models, RunShares.of(models, [1, 3]), progress=False)
    np.testing.assert_allclose(weighted, 0.25 * per_run[0] + 0.75 * per_run[1], rtol=1e-5)
    with pytest.raises(ValueError, match="one per run"):
        RunShares.of(models, [1])


def strip_audio(src, dst):
    """A copy of a video without its audio track (the video packets remuxed, nothing re-encoded)."""
    import av

    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        video = source.streams.video[0]
        stream = out.add_stream_from_template(video)
        for packet in source.demux(video):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)


def test_audio_track_trains_on_video_frames_and_late_fuses(tiny_world, tmp_path, capsys):
    import numpy as np

    from abaw_ce import challenge_file
    from abaw_ce.cexprnet.train import build
    from abaw_ce.models.cexprnet import save_export
    from abaw_ce.submission.inference import RunShares, load_models
    from abaw_ce.submission.pipeline import make_submission
    from abaw_ce.train import runs
    from tests.test_make_submission import videos_folder

    audio_run = tmp_path / "audio"
    code = main_cexprnet(["--demo", "train.epochs=1", "train.batch_size=16", f"output.dir={audio_run}",
                          "model.modality=audio", "loss.au=0", datasets(tiny_world, "cexpr")])
    assert code == 0, capsys.readouterr().err
    net, meta = load_cexprnet(audio_run / "export")
    assert meta["modality"] == "audio" and meta["backbone"]["in_chans"] == 1
    assert meta["audio"]["n_mels"] == 64 and meta["audio"]["std"] > 0
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 64, meta["audio"]["width"]))["expr_logits"].shape == (2, 6)
    # the audio track takes no AU teacher, and needs video rows
    assert main_cexprnet(["--demo", "model.modality=audio", f"output.dir={tmp_path / 'x'}",
                          datasets(tiny_world, "rafdb_compound"), "loss.au=0"]) == 2
    assert "video-frame rows" in capsys.readouterr().err

    config = runs.load_config("cexprnet", [runs.packaged_config("cexprnet_demo")], ["model.img_size=32"])
    torch.manual_seed(0)
    visual, tokenizer, vmeta = build(config)
    save_export(tmp_path / "visual" / "export", visual.eval(), vmeta, tokenizer)
    models = load_models([tmp_path / "visual", audio_run])
    assert [m.modality for m in models] == ["visual", "audio"]
    assert RunShares.of(models, [1, 3]).modality_share("audio") == 0.75

    videos, template = videos_folder(tiny_world, tmp_path / "videos", names=("test000", "test001"))
    strip_audio(tiny_world / "test" / "test001.mp4", videos / "test001.mp4")
    fused = make_submission(videos, [tmp_path / "visual", audio_run], tmp_path / "lf.txt", template=template,
                            detector="opencv", crop_size=48, progress=False)
    assert fused["audio_weight"] == 0.5 and fused["videos_without_audio"] == ["test001"]
    notes = {r["video"]: r["notes"] for r in fused["per_video"]}
    assert any("no audio track" in n for n in notes["test001"])
    assert not any("no audio track" in n for n in notes["test000"])
    assert challenge_file.validate_submission(tmp_path / "lf.txt", template=template).ok
    heard = make_submission(videos, [audio_run], tmp_path / "audio.txt", template=template, detector="opencv",
                            crop_size=48, progress=False)
    assert heard["audio_weight"] == 1.0
    assert challenge_file.validate_submission(tmp_path / "audio.txt", template=template).ok
    silent = challenge_file.read_submission(tmp_path / "audio.txt")
    assert len(np.unique(silent.loc[silent["video"] == "test001", "label"])) == 1  # one fallback distribution


def test_expression_heads_targets_losses_and_compound_scores():
    import numpy as np
    import pandas as pd
    import pytest

    from abaw_ce.cexprnet.model import LossWeights, cexprnet_loss
    from abaw_ce.cexprnet.train import compound_f1, compound_truth, evaluate
    from abaw_ce.models.cexprnet import expression_outputs

    table = pd.DataFrame({"expression": ["happiness", "Sadly_Angry", "other", "", "Happily_Disgusted"]})
    multi, has = expression_targets(table, "multiclass")
    assert has.tolist() == [False, True, True, False, True] and multi.shape == (5, 13)
    assert multi[1, labels.compound_index("Sadly_Angry")] == 1 and multi[2, labels.CEXPR_OTHER_INDEX] == 1
    binary, has = expression_targets(table, "sigmoid")
    assert has.tolist() == [True, True, False, False, True] and binary[1].sum() == 2 and binary[1].max() == 1
    kl, _ = expression_targets(table, "kl")
    truths = [compound_truth(t, h, head).tolist() for t, h, head in
              ((kl, has, "kl"), (binary, has, "sigmoid"), (multi, multi.max(1) > 0, "multiclass"))]
    assert truths[0] == truths[1] == truths[2][:2] + [-1, -1, labels.compound_index("Happily_Disgusted")]
    assert truths[2][2] == -1  # Other is not one of the 12 compounds
    # a hand example: 2 of 3 compound rows right, classes 0 and 1 present
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert compound_f1(scores, np.array([0, 1, 1]), 2) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert compound_f1(scores, np.array([-1, -1, -1]), 2) is None
    for head in ("kl", "sigmoid", "multiclass"):
        n = expression_outputs(head)
        outputs = {"expr_logits": torch.randn(5, n, requires_grad=True), "au_logits": torch.randn(5, 17)}
        target = torch.as_tensor({"kl": kl, "sigmoid": binary, "multiclass": multi}[head])
        mask = torch.as_tensor(expression_targets(table, head)[1])
        dist = 0.0 if head == "multiclass" else 1.0
        total, parts = cexprnet_loss(outputs, target, mask, torch.zeros(5, 17), torch.zeros(5, 17),
                                     labels.emotion_au_prior("cexpr", "ones"), LossWeights(1, 1, dist), head)
        total.backward()
        assert torch.isfinite(total) and parts["expr"] > 0 and outputs["expr_logits"].grad.abs().sum() > 0
        probs = np.concatenate([np.full((5, n), 1.0 / n), np.full((5, 17), 0.1)], axis=1)
        targets = np.concatenate([target.numpy(), np.zeros((5, 17))], axis=1)
        masks = np.concatenate([np.repeat(mask.numpy()[:, None], n, 1), np.zeros((5, 17))], axis=1)
        result = evaluate(probs, targets, masks, head)
        assert result["score_name"] == "compound_f1" and 0 <= result["score"] <= 1
    with pytest.raises(ValueError, match="expr_head"):
        expression_outputs("softmax")


def test_a_multiclass_export_reloads_but_is_kept_out_of_the_pairwise_fusion(tmp_path):
    import pytest

    from abaw_ce.cexprnet.train import build
    from abaw_ce.models.cexprnet import save_export
    from abaw_ce.errors import InputError
    from abaw_ce.submission.inference import load_models
    from abaw_ce.train import runs

    config = runs.load_config("cexprnet", [runs.packaged_config("cexprnet_demo")],
                              ["model.img_size=32", "model.expr_head=multiclass"])
    torch.manual_seed(0)
    net, tokenizer, meta = build(config)
    save_export(tmp_path / "mc" / "export", net.eval(), meta, tokenizer)
    again, meta = load_cexprnet(tmp_path / "mc" / "export")
    assert meta["expression_labels"] == list(labels.CEXPR_CLASSES)
    with torch.no_grad():
        assert again(torch.zeros(1, 3, 32, 32))["expr_logits"].shape == (1, 13)
    with pytest.raises(InputError, match="ablation only"):
        load_models([tmp_path / "mc"])


def test_ablation_command_trains_every_row_and_scores_them_on_videos(tiny_world, tmp_path, capsys):
    import pandas as pd

    from tests.test_make_submission import videos_folder

    videos, template = videos_folder(tiny_world, tmp_path / "videos", names=("test002",))
    from abaw_ce import challenge_file

    rows = challenge_file.read_submission(tiny_world / "test_ground_truth" / "ground_truth.txt")
    truth = challenge_file.write_submission(tmp_path / "truth.txt", rows[rows["video"] == "test002"])
    out = tmp_path / "ablation"
    data = datasets(tiny_world, "rafdb_compound", "rafdb_basic", "affwild2_au", "cexpr")
    args = ["--demo", "train.epochs=1", "train.batch_size=16", "model.img_size=32", "data.frame_crops.size=48",
            "data.frame_crops.detector=none",  # whole frames: the detector is tested elsewhere, here only time
            data, "--ablation", str(out), "--videos", str(videos), "--ground-truth", str(truth),
            "--template", str(template), "--detector", "opencv", "--crop-size", "48"]
    assert main_cexprnet(args) == 0, capsys.readouterr().err
    table = pd.read_csv(out / "ablation.csv")
    assert table["name"].tolist() == ["multi-class", "multi-label sigmoid", "multi-label softmax KL",
                                      "+ data augmentation", "+ AU branch", "+ distribution matching", "audio",
                                      "late fusion"]
    assert table["video_f1"].between(0, 1).all() and table["seconds_per_epoch"].iloc[:7].gt(0).all()
    assert (out / "ablation.md").read_text().count("\n|") == 10 and (out / "ablation.png").is_file()  # 8 rows
    configs = {name: (out / d / "config.yaml").read_text() for name, d in
               (("mc", "multi_class"), ("au", "plus_AU_branch"), ("audio", "audio"))}
    assert "expr_head: multiclass" in configs["mc"] and "rows: compound" in configs["mc"]
    assert "modality: audio" in configs["audio"]
    assert len(list((out / "frame_crops").glob("*/done.json"))) == 10  # the visual rows share one extraction
    # a second call finds every row finished and only scores again
    capsys.readouterr()
    assert main_cexprnet(args) == 0
    assert capsys.readouterr().out.count("already finished") == 7

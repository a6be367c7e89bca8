"""submit/validate.py on fold runs: a good run passes, a missing, unfinished or broken fold fails."""
import json
import shutil


from abaw_ce import labels
from abaw_ce.cli.validate import validate_main
from abaw_ce.models.export import save_encoder
from abaw_ce.models.vit import VitArch, build_vit

ARCH = VitArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def make_run(root, scores, mean=(0.5, 0.5, 0.5)):
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(f"data:\n  folds: {len(scores)}\n")
    state = build_vit(ARCH, num_classes=6).state_dict()
    for k, score in enumerate(scores):
        fold = root / f"fold_{k}"
        save_encoder(fold / "export", state, ARCH, list(mean), [0.25] * 3, source={},
                     head={"task": "emotion", "labels": list(labels.BASIC_EMOTIONS)})
        (fold / "status.json").write_text(json.dumps({"state": "finished"}))
        (fold / "validation.json").write_text(json.dumps({"mean_f1": score}))
    return root


def test_good_runs_pass_and_broken_ones_fail(tmp_path, capsys):
    good = make_run(tmp_path / "good", [0.61, 0.64, 0.60])
    assert validate_main([str(good)]) == 0
    assert "fold-1 0.6100" in capsys.readouterr().out

    broken = make_run(tmp_path / "broken", [0.61, 0.64, 0.20])
    assert validate_main([str(broken)]) == 1
    assert "fold 2 validation F1 0.2000" in capsys.readouterr().out

    missing = make_run(tmp_path / "missing", [0.61, 0.64, 0.62])
    shutil.rmtree(missing / "fold_1")
    (missing / "fold_2" / "status.json").write_text(json.dumps({"state": "stopped"}))
    assert validate_main([str(missing)]) == 1
    out = capsys.readouterr().out
    assert "fold_1 (fold-2 in the tables) is missing" in out and "fold_2: not finished" in out

    # Runs may differ in preprocessing (each model's input is prepared for it); a run's folds may not.
    other = make_run(tmp_path / "other", [0.6, 0.6, 0.6], mean=(0.4, 0.4, 0.4))
    assert validate_main([str(good), str(other)]) == 0
    assert "runs expect different inputs, each model gets its own" in capsys.readouterr().out
    mixed = make_run(tmp_path / "mixed", [0.6, 0.6, 0.6])
    shutil.rmtree(mixed / "fold_2")
    shutil.copytree(other / "fold_2", mixed / "fold_2")
    assert validate_main([str(mixed)]) == 1
    assert "its folds expect different inputs" in capsys.readouterr().out

    assert validate_main([str(tmp_path / "nowhere")]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_runs_and_a_corrupted_submission_are_checked_together(tmp_path, capsys):
    good = make_run(tmp_path / "good", [0.61, 0.64, 0.60])
    bad_file = tmp_path / "sub.txt"
    bad_file.write_text("image_location,wrong header\nv/00001.jpg,9\n")
    assert validate_main([str(good), "--submission", str(bad_file)]) == 1
    out = capsys.readouterr().out
    assert "runs: OK" in out

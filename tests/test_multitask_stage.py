"""The multi-task track's SJMT method through its script on the synthetic world: targets, export, submission."""
import json

import numpy as np
import pandas as pd
import torch

from abaw_ce import labels
from abaw_ce.multitask.train import BASIC_COLUMNS, N_EXPR, OUTPUTS, load_multitask, sjmt_targets
from abaw_ce.train.finetune_cli import main_multitask
from tests.test_cexprnet_stage import datasets

QUICK = ["train.epochs=2", "train.batch_size=16", "train.log_every=4", "model.img_size=32"]


def test_sjmt_targets_cover_only_each_rows_own_labels():
    au = {col: np.nan for col in labels.AU_COLUMNS}
    rows = [{"expression": "happiness", **au}, {"expression": "Sadly_Angry", **au}, {"expression": "neutral", **au},
            {"expression": "other", **au}, {"expression": "", **au, "AU12": 1.0, "AU4": 0.0}]
    targets, mask = sjmt_targets(pd.DataFrame(rows))
    assert targets.shape == mask.shape == (5, len(OUTPUTS))
    assert mask[:4, :N_EXPR].all() and not mask[:4, N_EXPR:].any()  # expression images: the 7 expressions only
    assert targets[0, BASIC_COLUMNS].tolist() == labels.multilabel_target("happiness").tolist()
    assert targets[1].sum() == 2 and targets[2, labels.SEVEN_EXPRESSIONS.index("neutral")] == 1
    assert targets[3].sum() == 0  # Other: a negative for each of the 7
    assert not mask[4, :N_EXPR].any() and mask[4, N_EXPR:].sum() == 2  # the AU image: its two annotated AUs
    assert targets[4, OUTPUTS.index("AU12")] == 1 and targets[4, OUTPUTS.index("AU4")] == 0


def test_sjmt_stage_trains_exports_and_feeds_make_submission(tiny_world, tmp_path, capsys):
    from abaw_ce import submission
    from abaw_ce.inference import load_models
    from abaw_ce.make_submission import make_submission
    from tests.test_make_submission import videos_folder

    run = tmp_path / "sjmt"
    data = datasets(tiny_world, "rafdb_basic", "rafdb_compound", "affwild2_au")
    assert main_multitask(["--demo", "--method", "sjmt", *QUICK, f"output.dir={run}", data]) == 0
    out = capsys.readouterr().out
    assert "multi-task (sjmt) basic F1" in out and "compound F1" in out
    validation = json.loads((run / "validation.json").read_text())
    assert set(validation["au_f1"]) == {f"AU{n}" for n in labels.AFFWILD2_AUS}
    net, meta = load_multitask(run / "export")
    assert meta["method"] == "sjmt" and meta["outputs"] == list(OUTPUTS)
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, len(OUTPUTS))
    models = load_models([run])
    assert models[0].track == "multitask"
    probs = models[0].probabilities(torch.zeros(2, 3, 32, 32))
    assert probs.shape == (2, 6) and ((probs > 0) & (probs < 1)).all()
    videos, template = videos_folder(tiny_world, tmp_path / "videos", names=("test002",))
    made = make_submission(videos, [run], tmp_path / "sub.txt", template=template, detector="opencv",
                           crop_size=48, progress=False, track="multitask")
    assert made["models"] == [str(run / "export")]
    assert submission.validate_submission(tmp_path / "sub.txt", template=template).ok
    assert main_multitask(["--demo", "--method", "fbn-typo", f"output.dir={tmp_path / 'bad'}", data]) == 2
    assert "model.method must be one of" in capsys.readouterr().err

"""The multi-task track: SJMT and FaceBehaviorNet targets, coupling and loss, MML's meta step and statistics,
and every method through the --compare command on the synthetic world."""
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from abaw_ce import labels
from abaw_ce.models.multitask import BASIC_COLUMNS, N_EXPR, OUTPUTS, load_multitask
from abaw_ce.multitask.train import sjmt_targets
from abaw_ce.cli.multitask import main_multitask
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


def test_fbn_targets_coupling_and_loss():
    from abaw_ce.multitask import fbn

    au = {col: np.nan for col in labels.AU_COLUMNS}
    rows = [{"expression": "happiness", "valence": 0.5, "arousal": 0.3, **au},
            {"expression": "Sadly_Angry", "valence": np.nan, "arousal": np.nan, **au},
            {"expression": "", "valence": np.nan, "arousal": np.nan, **au, "AU6": 1.0, "AU12": 1.0, "AU25": 1.0},
            {"expression": "other", "valence": -0.2, "arousal": 0.1, **au}]
    table = pd.DataFrame(rows)
    plain, plain_mask = fbn.fbn_targets(table)
    assert plain_mask[:, fbn.VA.start].tolist() == [1, 0, 0, 1] and plain[0, fbn.VA].tolist() == pytest.approx([0.5, 0.3])
    assert plain_mask[:, fbn.EXPR.start].tolist() == [1, 1, 0, 0]  # Other has no 7-way target
    sadly_angry = plain[1, fbn.EXPR]
    assert sadly_angry[labels.SEVEN_EXPRESSIONS.index("sadness")] == 0.5 and sadly_angry.sum() == 1
    assert plain_mask[0, fbn.AU].sum() == 0 and plain_mask[2, fbn.AU].sum() == 3
    coupled, coupled_mask = fbn.fbn_targets(table, fbn.Coupling(True, True, True))
    au12 = fbn.AU.start + labels.CEXPR_AUS.index(12)
    au6 = fbn.AU.start + labels.CEXPR_AUS.index(6)
    assert coupled[0, au12] == 1 and coupled_mask[0, au12] == 1 and coupled_mask[0, au6] == pytest.approx(0.51)
    happy = labels.SEVEN_EXPRESSIONS.index("happiness")
    assert coupled_mask[2, fbn.EXPR.start] == 1 and coupled[2, fbn.EXPR.start + happy] == 1  # AUs -> happiness
    assert coupled_mask[2, fbn.SOFT.start] == 1 and coupled[2, fbn.SOFT].sum() == pytest.approx(1, rel=1e-5)
    assert coupled_mask[[0, 1, 3], fbn.SOFT.start].sum() == 0
    assert {k: v.tolist() for k, v in fbn.task_groups(coupled_mask).items()} == {"va": [0, 3], "expr": [1, 2]}
    torch.manual_seed(0)
    outputs = torch.randn(4, len(fbn.OUTPUTS), requires_grad=True)
    prior = fbn.fbn_prior()
    none = fbn.fbn_loss(outputs, torch.as_tensor(coupled), torch.as_tensor(coupled_mask), fbn.Coupling(),
                        fbn.FbnWeights(), prior)
    every = fbn.fbn_loss(outputs, torch.as_tensor(coupled), torch.as_tensor(coupled_mask),
                         fbn.Coupling(True, True, True), fbn.FbnWeights(), prior)
    assert torch.isfinite(every) and every.item() > none.item()  # the soft label and DM terms add
    every.backward()
    assert outputs.grad[:, fbn.VA].abs().sum() > 0 and outputs.grad[:, fbn.AU].abs().sum() > 0


@pytest.mark.parametrize("hidden", [0, 16])
def test_mml_meta_step_learns_weights_through_the_inner_update(hidden):
    from abaw_ce.models.backbones import build_backbone
    from abaw_ce.models.multitask import MMLNet
    from abaw_ce.multitask import mml

    torch.manual_seed(0)
    backbone, _ = build_backbone("timm:resnet10t", 32)
    net = MMLNet(backbone)
    meta = mml.MetaWeightNet(backbone.num_features, hidden)
    optimizer = torch.optim.SGD(meta.parameters(), lr=1.0)
    stats = torch.rand(7, 17)
    images, val_images = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    targets, masks = torch.zeros(4, 24), torch.zeros(4, 24)
    targets[:, 1], masks[:, :7] = 1.0, 1.0  # surprise
    targets[:, 7:] = (torch.rand(4, 17) > 0.5).float()
    masks[:2, 7:] = 1.0
    val_targets = torch.zeros(4, 24)
    val_targets[:, 4] = 1.0  # happiness
    before = [p.detach().clone() for p in meta.parameters()]
    outputs = net(images)
    features = net.last_features
    weights = meta(features.detach())
    assert ((weights >= 0) & (weights <= 1)).all()
    if hidden == 0:  # the paper's meta net starts from zero parameters: every weight 0.5
        assert torch.equal(weights, torch.full_like(weights, 0.5))
    val_loss = mml.meta_step(net, meta, optimizer, outputs, features, targets, masks, val_images, val_targets,
                             masks, stats, inner_lr=0.1)
    assert torch.isfinite(val_loss)
    moved = [not torch.equal(b, p) for b, p in zip(before, meta.parameters())]
    assert all(moved)  # the validation loss reached psi through theta*: every meta parameter got a gradient
    after = meta(features.detach())
    assert not torch.allclose(after, weights) and ((after >= 0) & (after <= 1)).all()
    # the engine's own update still has its graph
    mml.weighted_loss(outputs, targets, masks, stats, after.detach()).backward()
    assert net.expr.weight.grad is not None


def test_mml_merges_the_labels_of_one_frame_for_its_statistics(tiny_world):
    from abaw_ce.data.adapters import load_dataset
    from abaw_ce.data.table import concat_tables
    from abaw_ce.multitask import mml

    specs = json.loads((tiny_world / "world.json").read_text())["datasets"]
    expr, au = load_dataset(specs["affwild2_expr"]), load_dataset(specs["affwild2_au"])
    merged = mml.merge_same_images(concat_tables([expr, au]))
    both = merged[(merged["expression"] != "") & merged["AU12"].notna()]
    assert len(merged) < len(expr) + len(au) and len(both) > 0
    targets, masks = mml.mml_targets(merged)
    stats = mml.statistics_from(merged, targets, masks)
    assert stats.shape == (7, 17) and 0 <= stats.min() and stats.max() <= 1
    happy = labels.SEVEN_EXPRESSIONS.index("happiness")
    assert stats[happy, labels.CEXPR_AUS.index(12)] > 0.5  # the world's happy faces raise the lip corners


def test_mml_resume_mid_epoch_equals_uninterrupted(tiny_world, tmp_path):
    """The meta network, its optimiser and its meta-validation batches come back on resume: an interrupted
    and resumed MML run ends with the same weights as one that ran straight through."""
    from safetensors.torch import load_file

    common = ["--demo", "--method", "mml", *QUICK, "train.epochs=1", "train.batch_size=8",
              "train.eval_batch_size=32", datasets(tiny_world, "affwild2_expr", "affwild2_au")]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main_multitask([*common, f"output.dir={straight}"]) == 0
    assert main_multitask([*common, "train.stop_after_updates=7", f"output.dir={interrupted}"]) == 0
    assert json.loads((interrupted / "status.json").read_text())["state"] == "stopped"
    assert main_multitask(["--resume", str(interrupted), "train.stop_after_updates=null"]) == 0
    a = load_file(str(straight / "export" / "model.safetensors"))
    b = load_file(str(interrupted / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_mml_trains_in_two_processes(tiny_world, tmp_path):
    """MML under torchrun: the second-order meta step runs beside the data-parallel base network."""
    from tests.test_finetune_stages import run_script

    run = tmp_path / "mml"
    run_script("finetune/multitask.py", "--demo", "--method", "mml", *QUICK, "train.epochs=1", "train.batch_size=8",
               datasets(tiny_world, "affwild2_expr", "affwild2_au"), f"output.dir={run}",
               launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                         "--master_port", "29539"))
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert load_multitask(run / "export")[1]["method"] == "mml"


def _average_in_group(rank: int, world: int, port: int, results) -> None:
    from abaw_ce.multitask.mml import average_over_processes

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    params = [torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4))]
    params[0].grad = torch.full((2, 3), float(rank + 1))
    # the second parameter has no gradient on rank 0: it counts as zero there
    params[1].grad = torch.full((4,), 4.0) if rank == 1 else None
    average_over_processes(params)
    results[rank] = (params[0].grad.tolist(), params[1].grad.tolist())
    torch.distributed.destroy_process_group()


def test_meta_gradients_are_averaged_over_processes():
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_average_in_group, args=(2, 29541, results), nprocs=2)
        for rank in (0, 1):
            first, second = results[rank]
            assert first == [[1.5] * 3] * 2 and second == [2.0] * 4


def test_comparison_trains_every_method_and_scores_them_on_videos(tiny_world, tmp_path, capsys):
    """One short run of each method through the --compare command: the table, each export's reload and its
    probabilities for make_submission, FaceBehaviorNet's joined batches, zero-shot and CCC, MML's statistics."""
    from abaw_ce import challenge_file
    from abaw_ce.submission.inference import load_models
    from tests.test_make_submission import videos_folder

    videos, template = videos_folder(tiny_world, tmp_path / "videos", names=("test002",))
    rows = challenge_file.read_submission(tiny_world / "test_ground_truth" / "ground_truth.txt")
    truth = challenge_file.write_submission(tmp_path / "truth.txt", rows[rows["video"] == "test002"])
    out = tmp_path / "compare"
    data = datasets(tiny_world, "affwild2_expr", "affwild2_au", "affwild2_va", "rafdb_compound")
    args = ["--demo", "--compare", str(out), "--epochs", "1", data, "train.batch_size=16", "model.img_size=32",
            "--videos", str(videos), "--ground-truth", str(truth), "--template", str(template),
            "--detector", "opencv", "--crop-size", "48"]
    assert main_multitask(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "each batch of 16 joins va" in printed  # FaceBehaviorNet's VA / expression / AU shares
    assert "AU statistics counted on the training images" in printed and "held out for the meta step" in printed
    table = pd.read_csv(out / "comparison.csv")
    assert table["method"].tolist() == ["SJMT", "FaceBehaviorNet", "MML", "C-EXPR-NET", "basic-emotion ViT (fold 1)"]
    assert table["video_f1"].between(0, 1).all() and table["seconds_per_epoch"].gt(0).all()
    assert table["va_ccc"].notna().tolist() == [False, True, False, False, False]
    assert (out / "comparison.md").read_text().count("\n|") == 7
    fbn_validation = json.loads((out / "facebehaviornet" / "validation.json").read_text())
    assert fbn_validation["zero_shot_f1"] is not None and -1 <= fbn_validation["va_ccc"] <= 1
    for name, method in (("sjmt", "sjmt"), ("facebehaviornet", "fbn"), ("mml", "mml")):
        net, meta = load_multitask(out / name / "export")
        assert meta["method"] == method and meta["img_size"] == 32
        model = load_models([out / name])[0]
        probs = model.probabilities(torch.zeros(2, 3, 32, 32))
        assert model.track == "multitask" and probs.shape == (2, 6) and ((probs >= 0) & (probs <= 1)).all()
        assert challenge_file.validate_submission(out / name / "submission.txt", template=template).ok
    assert "img_size: 32" in (out / "c_expr_net" / "config.yaml").read_text()  # overrides reach every stage
    bad = main_multitask(["--demo", "--method", "fbn-typo", f"output.dir={tmp_path / 'bad'}", data])
    assert bad == 2 and "model.method must be one of" in capsys.readouterr().err
    typo = main_multitask([*args[:-10], "model.img_sise=32", *args[-10:]])
    assert typo == 2 and "name no key" in capsys.readouterr().err

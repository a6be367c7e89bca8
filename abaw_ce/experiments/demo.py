"""`abaw-ce demo`: the whole pipeline on embedded data, on a CPU, with no downloads.

The synthetic world (tiny) is rendered in every real format; a tiny MAE is pretrained on its faces, tuned on
its action units, then trained as 5 basic-emotion fold models on its labelled sets; a C-EXPR-NET (the
second track) trains on the same sets and a C-EXPR-NET-A on the sound of the labelled videos; the test videos
go through make_submission (faces, the three runs late-fused, pairwise fusion, smoothing), the fold runs and
the file are validated and scored against the ground truth, and each run is scored alone too. ``quick``
shortens every training stage for tests.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from abaw_ce import challenge_file
from abaw_ce.cexprnet.train import train_cexprnet
from abaw_ce.finetune import train_au, train_emotion
from abaw_ce.pretrain import pretrain_mae
from abaw_ce.submission.pipeline import make_submission
from abaw_ce.submission.run_checks import check_runs
from abaw_ce.synth.world import generate_world
from abaw_ce.train import runs

# Epochs of (MAE, AU, emotion, C-EXPR-NET, C-EXPR-NET-A) for the full demo and for a quick smoke run.
DEMO_EPOCHS = {"full": (60, 30, 30, 30, 15), "quick": (2, 1, 1, 1, 1)}


DEMO_MARKER = ".abaw-ce-demo"


def _config(stage: str, run_dir: Path, epochs: int, **values) -> DictConfig:
    config = runs.load_config(stage, [runs.packaged_config(f"{stage}_demo")],
                              [f"output.dir={run_dir}", f"train.epochs={epochs}"])
    for key, value in values.items():
        OmegaConf.update(config, key, value, merge=False)
    return config


def run_demo(out: str | Path, seed: int = 0, overwrite: bool = False, quick: bool = False) -> dict:
    """Run the demo into ``out``; an earlier demo there is replaced, any other non-empty folder is refused."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).exists() and not overwrite:
            raise FileExistsError(f"{out} is not empty and was not written by the demo; choose another --out "
                                  "or pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by `abaw-ce demo`; the next demo run replaces this folder\n")
    started = time.perf_counter()
    mae_epochs, au_epochs, emotion_epochs, cexprnet_epochs, audio_epochs = DEMO_EPOCHS["quick" if quick else "full"]
    summary: dict = {"quick": quick}
    times: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"      ({times[name]} s)")

    t0 = time.perf_counter()
    print(f"[1/8] rendering the synthetic world (tiny) in every real format under {out / 'world'}")
    world = generate_world(out / "world", seed=seed, scale="tiny")
    specs = world["datasets"]
    print(f"      contact sheet of rendered expressions: {out / 'world' / 'contact_sheet.png'}")
    stage("world", t0)

    t0 = time.perf_counter()
    print(f"[2/8] MAE pretraining of a tiny ViT on the unlabeled and RAF-DB-style faces ({mae_epochs} epochs)")
    root = out / "world"
    sources = [str(root / "faces"), str(root / "rafdb_basic" / "Image" / "aligned"),
               str(root / "rafdb_compound" / "Image" / "aligned")]
    mae_run = pretrain_mae(_config("mae", out / "runs" / "mae", mae_epochs, **{"data.sources": sources,
                                                                              "train.seed": seed}))
    metrics = json.loads((mae_run / "metrics.json").read_text())
    summary["mae_loss"] = [metrics[0]["loss"], metrics[-1]["loss"]]
    print(f"      loss {metrics[0]['loss']:.3f} -> {metrics[-1]['loss']:.3f}; reconstructions in "
          f"{mae_run / 'reconstructions'}")
    stage("mae", t0)

    t0 = time.perf_counter()
    print(f"[3/8] action-unit fine-tuning on the Aff-Wild2-style AU videos ({au_epochs} epochs)")
    au_run = train_au(_config("au", out / "runs" / "au", au_epochs, **{
        "model.encoder": str(mae_run / "export"), "data.datasets": [specs["affwild2_au"]], "train.seed": seed}))
    summary["au_mean_f1"] = json.loads((au_run / "validation.json").read_text())["mean_f1"]
    stage("au", t0)

    t0 = time.perf_counter()
    print(f"[4/8] 5 basic-emotion fold models on RAF-DB basic + compound, AffectNet and Aff-Wild2 EXPR "
          f"({emotion_epochs} epochs each)")
    labelled = [specs[k] for k in ("rafdb_basic", "rafdb_compound", "affectnet", "affwild2_expr")]
    emotion_run = train_emotion(_config("emotion", out / "runs" / "emotion", emotion_epochs, **{
        "model.encoder": str(au_run / "export"), "data.datasets": labelled, "data.fold_seed": seed,
        "train.seed": seed}))
    stage("emotion", t0)

    t0 = time.perf_counter()
    print(f"[5/8] the C-EXPR-NET track (ResNet-10t from scratch, 64 px) on the same sets and the AU videos "
          f"({cexprnet_epochs} epochs)")
    cexprnet_run = train_cexprnet(_config("cexprnet", out / "runs" / "cexprnet", cexprnet_epochs, **{
        "data.datasets": labelled + [specs["affwild2_au"]], "data.fold_seed": seed, "train.seed": seed}))
    stage("cexprnet", t0)

    t0 = time.perf_counter()
    print(f"[6/8] C-EXPR-NET-A: the same network on log-mel windows of the C-EXPR-DB-style labelled videos' "
          f"sound ({audio_epochs} epochs)")
    audio_run = train_cexprnet(_config("cexprnet", out / "runs" / "cexprnet_audio", audio_epochs, **{
        "model.modality": "audio", "loss.au": 0.0, "data.datasets": [specs["cexpr"]], "data.fold_seed": seed,
        "train.seed": seed}))
    stage("audio", t0)

    t0 = time.perf_counter()
    print("[7/8] make_submission on the test videos (OpenCV detector; the 5 fold models averaged, then the "
          "three runs late-fused with equal weights; sum fusion, smoothing)")
    gt_dir = out / "world" / "test_ground_truth"
    sub_path = out / "submission.txt"
    every_run = [emotion_run, cexprnet_run, audio_run]
    made = make_submission(out / "world" / "test", every_run, sub_path, template=gt_dir / "template.txt",
                           detector="opencv", crop_size=112, progress=False)
    for report in made["per_video"]:
        for note in report["notes"]:
            print(f"      {report['video']}: {note}")
    visible = pd.read_csv(gt_dir / "face_visible.csv")
    found = visible.merge(pd.read_csv(sub_path.with_name("submission_work") / "faces" / "frames.csv"),
                          on=["video", "frame"])
    shown = found[found["face_visible"] == 1]
    summary["detection_rate"] = float(shown["face_found"].mean())
    print(f"      face found in {summary['detection_rate']:.1%} of {len(shown)} frames that show one")
    stage("submission", t0)

    print("[8/8] validation of the fold runs and of the file, and the score against the ground truth")
    checked = check_runs([emotion_run])
    print("      " + checked.format().replace("\n", "\n      "))
    report = challenge_file.validate_submission(sub_path, template=gt_dir / "template.txt")
    print("      " + report.format().replace("\n", "\n      "))
    scored = challenge_file.score(challenge_file.read_submission(sub_path),
                              challenge_file.read_submission(gt_dir / "ground_truth.txt"))
    challenge_file.plot_confusion(scored.confusion, out / "confusion.png", "demo predictions")
    print("      " + scored.format().replace("\n", "\n      "))
    summary["macro_f1_by_runs"] = _score_subsets(out, every_run, gt_dir)
    summary.update(submission=str(sub_path), valid=report.ok, runs_valid=checked.ok, macro_f1=scored.macro_f1,
                   seconds=round(time.perf_counter() - started, 1), stage_seconds=times,
                   runs={"mae": str(mae_run), "au": str(au_run), "emotion": str(emotion_run),
                         "cexprnet": str(cexprnet_run), "cexprnet_audio": str(audio_run)})
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"demo finished in {summary['seconds']} s; summary in {out / 'demo_summary.json'}")
    print(f"ground truth: {gt_dir / 'ground_truth.txt'}")
    print(f"submission: {sub_path}")
    print(f"compound macro F1: {scored.macro_f1:.4f}")
    return summary


def _score_subsets(out: Path, every_run: list[Path], gt_dir: Path) -> dict[str, float]:
    """Compound macro F1 of each run alone and of the two visual runs together (the faces step is cached)."""
    emotion_run, cexprnet_run, audio_run = every_run
    subsets = {"5 ViT folds": [emotion_run], "C-EXPR-NET visual": [cexprnet_run],
               "C-EXPR-NET-A (audio)": [audio_run], "visual runs together": [emotion_run, cexprnet_run]}
    truth = challenge_file.read_submission(gt_dir / "ground_truth.txt")
    scores = {}
    print("      the same test videos scored per run (the submission above late-fuses all three):")
    for name, chosen in subsets.items():
        path = out / "by_runs" / (name.split(" (")[0].replace(" ", "_") + ".txt")
        make_submission(out / "world" / "test", chosen, path, template=gt_dir / "template.txt",
                        work_dir=out / "submission_work", detector="opencv", crop_size=112, progress=False,
                        overwrite=True)
        scores[name] = challenge_file.score(challenge_file.read_submission(path), truth).macro_f1
        print(f"        {name:<24} compound macro F1 {scores[name]:.4f}")
    return scores

"""`abaw-ce demo`: the whole pipeline on embedded data, on a CPU, with no downloads.

The synthetic world (tiny) is rendered in every real format, and its labelled C-EXPR-DB-style videos are split
into training videos and a few held-out validation videos. A tiny MAE is pretrained on its faces, tuned on its
action units, then trained as 5 basic-emotion fold models on its labelled stills; a C-EXPR-NET (the second track)
trains on the stills, the AU videos and the training videos' face crops, and a C-EXPR-NET-A on the training
videos' sound. Each run's weight in the ensemble and the smoothing window are fitted on the validation videos
(never on the test videos), for the visual runs alone and for all three. The test videos go through
make_submission twice (visual only; all runs late-fused), the runs and files are validated and scored, each run
is scored alone, and the error analysis (``abaw-ce analyze``) is written for both files. ``quick`` shortens every
training stage for tests.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from abaw_ce import challenge_file
from abaw_ce.cexprnet.train import train_cexprnet
from abaw_ce.finetune import train_au, train_emotion
from abaw_ce.pretrain import pretrain_mae
from abaw_ce.experiments.tune_fusion import labelled_video_frames
from abaw_ce.submission.analysis import analyze_submission
from abaw_ce.submission.pipeline import make_submission
from abaw_ce.submission.run_checks import check_runs
from abaw_ce.submission.run_weights import fit_run_weights, run_frame_probs
from abaw_ce.synth.world import dataset_specs, generate_world
from abaw_ce.train import runs
from abaw_ce.train.loop import cpu_has_native_bf16, in_own_process

# Epochs of each training stage for the full demo and for a quick smoke run.
DEMO_EPOCHS = {"full": {"mae": 40, "au": 30, "emotion": 8, "cexprnet": 53, "audio": 15},
               "quick": {"mae": 2, "au": 1, "emotion": 1, "cexprnet": 1, "audio": 1}}
# Labelled C-EXPR-DB-style videos held out from training: the run weights and the smoothing window are fitted
# on them, never on the test videos.
VALIDATION_VIDEOS = 3

DEMO_MARKER = ".abaw-ce-demo"
# The demo's C-EXPR-NET (53 epochs): the curriculum's four stages, then a fifth of 8 epochs like the fourth (all
# compounds) in a last cosine cycle at 0.3x the peak lr; the model is chosen in that fifth stage. The cycles: one
# per first stage, one over the next two. Without the fifth stage (45 epochs) the five worlds' C-EXPR-NET
# averaged 0.791 test F1, with it 0.825 (README, demo section); 30 epochs in [10, 10, 5, 5] left it undertrained.
# The epochs before the last stage are validated every 5th only, and one loader worker overlaps reading with the
# steps.
CEXPRNET_SCHEDULE = {"train.curriculum.epochs": [15, 15, 8, 7, 8],
                     "train.curriculum.compound_share": [0.0, 0.2, 0.4, 1.0, 1.0],
                     "optim.restart_epochs": [15, 15, 14, 8], "optim.restart_lr_scale": [1.0, 1.0, 1.0, 0.3],
                     "train.validate_every": 5, "train.num_workers": 1}
# The sources whose fold 0 validates the demo's C-EXPR-NET (chooses its epoch); every other source gives all its
# rows to training. The labelled and the Aff-Wild2-style videos hold 7 and 6 identities, and the test videos'
# errors follow identities: with their fold-0 videos trained on too, worlds 2 and 4 scored higher (README, demo).
VALIDATION_SOURCES = ("rafdb_compound",)
# The world's labelled stills that the fold runs and C-EXPR-NET train on (keys of synth.world.dataset_specs).
STILLS = ("rafdb_basic", "rafdb_compound", "affectnet", "affwild2_expr")


def _config(stage: str, run_dir: Path, epochs: int, overrides: Sequence[str] = (), **values) -> DictConfig:
    config = runs.load_config(stage, [runs.packaged_config(f"{stage}_demo")],
                              [f"output.dir={run_dir}", f"train.epochs={epochs}"])
    for key, value in values.items():
        OmegaConf.update(config, key, value, merge=False)
    return runs.apply_overrides(config, overrides, stage)


def _labelled_train(out: Path) -> dict:
    """The data spec of the labelled training videos that ``split_labelled_videos`` wrote under ``out``."""
    return {"format": "cexpr", "root": str(out / "labelled" / "train")}


def cexprnet_config(out: Path, run_dir: Path, seed: int, train_seed: int,
                    epochs: int = DEMO_EPOCHS["full"]["cexprnet"], overrides: Sequence[str] = ()) -> DictConfig:
    """The demo's visual C-EXPR-NET run on the demo folder ``out`` (world of ``seed``, labelled training videos,
    cached frame crops): the stills, the AU videos and the training videos' face crops; ``overrides``
    (``key=value``, as the stage scripts take them) on top, for experiments on the same data
    (benchmarks/cexprnet_spread.py)."""
    specs = dataset_specs(out / "world")
    crops = {"dir": str(out / "runs" / "frame_crops"), "detector": "opencv", "size": 112}  # cropped once
    # bf16 autocast where the CPU computes in bf16 (1.4x the fp32 training rate here): it pays for the 53 epochs
    precision = "bf16" if cpu_has_native_bf16() else "fp32"
    return _config("cexprnet", run_dir, epochs, overrides, **{
        "data.datasets": [specs[k] for k in STILLS] + [specs["affwild2_au"], _labelled_train(out)],
        "data.frame_crops": crops, "data.fold_seed": seed, "data.val_sources": list(VALIDATION_SOURCES),
        "train.seed": train_seed, "train.precision": precision, **CEXPRNET_SCHEDULE})


def split_labelled_videos(root: Path, out: Path, validation: int) -> tuple[Path, Path]:
    """Copy a C-EXPR-DB-style folder (videos/ + annotation/) into ``out/train`` and ``out/validation``, the
    last ``validation`` videos (by name) held out; returns the two roots."""
    names = sorted(p.stem for p in (root / "annotation").glob("*.csv"))
    if len(names) <= validation:
        raise ValueError(f"{root} has {len(names)} labelled video(s); {validation} held out would leave none")
    for part, chosen in (("train", names[:-validation]), ("validation", names[-validation:])):
        for name in chosen:
            for kind, pattern in (("videos", f"{name}.*"), ("annotation", f"{name}.csv")):
                for path in (root / kind).glob(pattern):
                    (out / part / kind).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out / part / kind / path.name)
    return out / "train", out / "validation"


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
    epochs = DEMO_EPOCHS["quick" if quick else "full"]
    summary: dict = {"quick": quick, "seed": seed}
    times: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"      ({times[name]} s)")

    t0 = time.perf_counter()
    print(f"[1/9] rendering the synthetic world (tiny, seed {seed}) in every real format under {out / 'world'}")
    world = generate_world(out / "world", seed=seed, scale="tiny")
    specs = world["datasets"]
    train_videos, validation_videos = split_labelled_videos(out / "world" / "cexpr", out / "labelled",
                                                            VALIDATION_VIDEOS)
    print(f"      contact sheet of rendered expressions: {out / 'world' / 'contact_sheet.png'}")
    print(f"      labelled C-EXPR-DB-style videos: {train_videos} for training, {validation_videos} held out "
          f"to fit the run weights and the smoothing")
    stage("world", t0)

    t0 = time.perf_counter()
    print(f"[2/9] MAE pretraining of a tiny ViT on the unlabeled and RAF-DB-style faces ({epochs['mae']} epochs)")
    root = out / "world"
    sources = [str(root / "faces"), str(root / "rafdb_basic" / "Image" / "aligned"),
               str(root / "rafdb_compound" / "Image" / "aligned")]
    mae_run = pretrain_mae(_config("mae", out / "runs" / "mae", epochs["mae"], **{"data.sources": sources,
                                                                                 "train.seed": seed}))
    metrics = json.loads((mae_run / "metrics.json").read_text())
    summary["mae_loss"] = [metrics[0]["loss"], metrics[-1]["loss"]]
    print(f"      loss {metrics[0]['loss']:.3f} -> {metrics[-1]['loss']:.3f}; reconstructions in "
          f"{mae_run / 'reconstructions'}")
    stage("mae", t0)

    t0 = time.perf_counter()
    print(f"[3/9] action-unit fine-tuning on the Aff-Wild2-style AU videos ({epochs['au']} epochs)")
    au_run = train_au(_config("au", out / "runs" / "au", epochs["au"], **{
        "model.encoder": str(mae_run / "export"), "data.datasets": [specs["affwild2_au"]], "train.seed": seed}))
    summary["au_mean_f1"] = json.loads((au_run / "validation.json").read_text())["mean_f1"]
    stage("au", t0)

    t0 = time.perf_counter()
    print(f"[4/9] 5 basic-emotion fold models (the ViT of stages 2-3) on RAF-DB basic + compound, AffectNet and "
          f"Aff-Wild2 EXPR ({epochs['emotion']} epochs each)")
    stills = [specs[k] for k in STILLS]
    # 8 epochs (curriculum 3+3+1+1): the tiny ViT gains little from more on a CPU (README, demo section), and
    # the time goes to the plain CNN of step 5
    emotion_run = train_emotion(_config("emotion", out / "runs" / "emotion", epochs["emotion"], **{
        "model.encoder": str(au_run / "export"), "data.datasets": stills, "data.fold_seed": seed,
        "train.seed": seed, **({} if quick else {"train.curriculum.epochs": [3, 3, 1, 1]})}))
    stage("emotion", t0)

    t0 = time.perf_counter()
    cexprnet = cexprnet_config(out, out / "runs" / "cexprnet", seed, seed, epochs["cexprnet"])
    print(f"[5/9] the C-EXPR-NET track (a plain CNN from scratch, 64 px) on the same sets, the AU videos and the "
          f"labelled training videos' face crops ({epochs['cexprnet']} epochs, {cexprnet.train.precision}, in its "
          f"own process; its epoch chosen on fold {cexprnet.data.val_fold} of {', '.join(VALIDATION_SOURCES)}, "
          f"the videos all trained on)")
    # its own process: Accelerate fixes one precision per process, and this run's may differ from the others'
    cexprnet_run = in_own_process(train_cexprnet, cexprnet)
    stage("cexprnet", t0)

    t0 = time.perf_counter()
    print(f"[6/9] C-EXPR-NET-A: the same network on log-mel windows of the labelled training videos' sound "
          f"({epochs['audio']} epochs)")
    audio_run = train_cexprnet(_config("cexprnet", out / "runs" / "cexprnet_audio", epochs["audio"], **{
        "model.modality": "audio", "model.backbone": "timm:resnet10t", "loss.au": 0.0,
        "data.datasets": [_labelled_train(out)], "data.fold_seed": seed, "train.seed": seed}))
    stage("audio", t0)

    every_run = {"5 ViT folds": emotion_run, "C-EXPR-NET visual": cexprnet_run, "C-EXPR-NET-A audio": audio_run}
    visual = ["5 ViT folds", "C-EXPR-NET visual"]
    t0 = time.perf_counter()
    print(f"[7/9] run weights and smoothing window fitted on the {VALIDATION_VIDEOS} held-out labelled videos")
    per_run = run_frame_probs(validation_videos / "videos", list(every_run.values()), out / "validation_work",
                              detector="opencv", crop_size=112)
    truth_val = labelled_video_frames(validation_videos)
    fits = {"visual": fit_run_weights(per_run[:len(visual)], truth_val),
            "all": fit_run_weights(per_run, truth_val)}
    for name, fit in fits.items():
        chosen = visual if name == "visual" else list(every_run)
        print(f"      {name} runs: weights " + ", ".join(f"{r} {w:.1f}" for r, w in zip(chosen, fit.weights))
              + f", window {fit.window}: validation log loss {fit.log_loss:.4f} (the criterion), F1 {fit.macro_f1:.4f} "
              + f"(equal weights {fit.equal_macro_f1:.4f}; "
              + ", ".join(f"{r} alone {f:.4f}" for r, f in zip(chosen, fit.alone_macro_f1)) + ")")
    summary["run_weights"] = {name: {"runs": visual if name == "visual" else list(every_run), **fit.to_dict(),
                                     "labelled_frames": int(len(truth_val))} for name, fit in fits.items()}
    stage("weights", t0)

    t0 = time.perf_counter()
    print("[8/9] make_submission on the test videos (OpenCV detector; each run's folds averaged, the runs mixed "
          "with the fitted weights; sum fusion, Gaussian smoothing with the fitted window)")
    gt_dir = out / "world" / "test_ground_truth"
    work = out / "submission_work"
    visual_path, sub_path = out / "visual_submission.txt", out / "submission.txt"
    made = make_submission(out / "world" / "test", [every_run[r] for r in visual], visual_path,
                           template=gt_dir / "template.txt", work_dir=work, detector="opencv", crop_size=112,
                           progress=False, run_weights=fits["visual"].weights, window=fits["visual"].window)
    for report in made["per_video"]:
        for note in report["notes"]:
            print(f"      {report['video']}: {note}")
    make_submission(out / "world" / "test", list(every_run.values()), sub_path, template=gt_dir / "template.txt",
                    work_dir=work, detector="opencv", crop_size=112, progress=False,
                    run_weights=fits["all"].weights, window=fits["all"].window)
    visible = pd.read_csv(gt_dir / "face_visible.csv")
    found = visible.merge(pd.read_csv(work / "faces" / "frames.csv"), on=["video", "frame"])
    shown = found[found["face_visible"] == 1]
    summary["detection_rate"] = float(shown["face_found"].mean())
    print(f"      face found in {summary['detection_rate']:.1%} of {len(shown)} frames that show one")
    summary["macro_f1_by_runs"] = _score_runs(out, every_run, gt_dir, fits["all"].window)
    stage("submission", t0)

    t0 = time.perf_counter()
    print("[9/9] validation of the fold runs and of the files, the score against the ground truth, error analysis")
    checked = check_runs([emotion_run])
    print("      " + checked.format().replace("\n", "\n      "))
    truth = challenge_file.read_submission(gt_dir / "ground_truth.txt")
    scores = {}
    for name, path in (("visual-only", visual_path), ("final", sub_path)):
        report = challenge_file.validate_submission(path, template=gt_dir / "template.txt")
        print(f"      {path.name}: " + report.format().replace("\n", "\n      "))
        summary[f"valid_{name}"] = report.ok
        scores[name] = challenge_file.score(challenge_file.read_submission(path), truth)
    challenge_file.plot_confusion(scores["final"].confusion, out / "confusion.png", "demo predictions")
    analysis = analyze_submission(sub_path, gt_dir / "ground_truth.txt", out / "analysis",
                                  faces=work / "faces" / "frames.csv", title="Error analysis of the demo's submission")
    analysis_visual = analyze_submission(visual_path, gt_dir / "ground_truth.txt", out / "analysis_visual",
                                         faces=work / "faces" / "frames.csv",
                                         title="Error analysis of the demo's visual-only submission")
    print("      per class on the test videos (F1 of the visual-only and of the final file):")
    print(f"        {'class':<22} {'segments':>8} {'frames':>6} {'visual':>7} {'final':>7}")
    for mine, theirs in zip(analysis_visual["per_class"], analysis["per_class"]):
        print(f"        {mine['class']:<22} {mine['segments']:>8} {mine['support']:>6} {mine['f1']:>7.4f} "
              f"{theirs['f1']:>7.4f}")
    print(f"      error analysis: {out / 'analysis' / 'report.md'} (visual-only: "
          f"{out / 'analysis_visual' / 'report.md'})")
    stage("checks", t0)
    summary.update(submission=str(sub_path), visual_submission=str(visual_path), valid=summary["valid_final"],
                   runs_valid=checked.ok, macro_f1=scores["final"].macro_f1,
                   visual_macro_f1=scores["visual-only"].macro_f1,
                   audio_macro_f1=summary["macro_f1_by_runs"]["C-EXPR-NET-A audio"],
                   segments_per_class={c["class"]: c["segments"] for c in analysis["per_class"]},
                   seconds=round(time.perf_counter() - started, 1), stage_seconds=times,
                   runs={"mae": str(mae_run), "au": str(au_run), "emotion": str(emotion_run),
                         "cexprnet": str(cexprnet_run), "cexprnet_audio": str(audio_run)})
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"demo finished in {summary['seconds']} s; summary in {out / 'demo_summary.json'}")
    print(f"ground truth: {gt_dir / 'ground_truth.txt'}")
    print(f"visual-only submission: {visual_path}")
    print(f"visual-only compound macro F1: {scores['visual-only'].macro_f1:.4f}")
    print(f"audio-only compound macro F1: {summary['audio_macro_f1']:.4f}")
    print(f"submission: {sub_path}")
    print(f"compound macro F1: {scores['final'].macro_f1:.4f}")
    return summary


def _score_runs(out: Path, every_run: dict[str, Path], gt_dir: Path, window: int) -> dict[str, float]:
    """Compound macro F1 of each run alone on the test videos (the faces step is cached), files in by_runs/."""
    truth = challenge_file.read_submission(gt_dir / "ground_truth.txt")
    scores = {}
    print(f"      each run alone on the same test videos (window {window}):")
    for name, run in every_run.items():
        path = out / "by_runs" / (name.replace(" ", "_") + ".txt")
        make_submission(out / "world" / "test", [run], path, template=gt_dir / "template.txt",
                        work_dir=out / "submission_work", detector="opencv", crop_size=112, progress=False,
                        overwrite=True, window=window)
        scores[name] = challenge_file.score(challenge_file.read_submission(path), truth).macro_f1
        print(f"        {name:<20} compound macro F1 {scores[name]:.4f}  ({path})")
    return scores

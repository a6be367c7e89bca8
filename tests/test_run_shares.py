"""How runs are weighed in a submission: one share per requested run, whatever its track or modality, and every
model's probabilities on one scale, so that a run with weight w holds share w of the fused decision."""
import json

import numpy as np
import pytest
import torch

from abaw_ce import labels, challenge_file
from abaw_ce.submission.pipeline import make_submission
from abaw_ce.models.export import save_encoder
from abaw_ce.models.vit import build_vit
from tests.test_make_submission import ARCH, first_frames

FS = labels.CHALLENGE_COMPOUNDS.index("Fearfully_Surprised")
SA = labels.CHALLENGE_COMPOUNDS.index("Sadly_Angry")


def confident(first: str, second: str) -> np.ndarray:
    """Six sigmoid outputs of a model sure of two emotions: 0.99 for them, 0.01 for the others."""
    p = np.full(len(labels.BASIC_EMOTIONS), 0.01)
    p[[labels.BASIC_INDEX[first], labels.BASIC_INDEX[second]]] = 0.99
    return p


def constant_emotion_run(root, probs):
    """A one-fold emotion run whose model answers ``probs`` (sigmoids) for any face: a zero head, its bias."""
    model = build_vit(ARCH, num_classes=6)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.logit(torch.as_tensor(probs, dtype=torch.float32)))
    fold = root / "fold_0"
    save_encoder(fold / "export", model.state_dict(), ARCH, [0.5] * 3, [0.25] * 3, source={"stage": "emotion"},
                 head={"task": "emotion", "labels": list(labels.BASIC_EMOTIONS)})
    (root / "config.yaml").write_text("data:\n  folds: 1\n")
    (fold / "status.json").write_text(json.dumps({"state": "finished"}))
    (fold / "validation.json").write_text(json.dumps({"mean_f1": 0.5}))
    return root


def constant_cexprnet_run(root, probs, modality="visual"):
    """A finished C-EXPR-NET run (KL head: a softmax) answering ``probs`` (normalised) for any input."""
    from abaw_ce.cexprnet.train import build
    from abaw_ce.models.cexprnet import save_export
    from abaw_ce.train import runs

    overrides = ["model.img_size=32", f"model.modality={modality}"]
    config = runs.load_config("cexprnet", [runs.packaged_config("cexprnet_demo")], overrides)
    torch.manual_seed(0)
    net, tokenizer, meta = build(config)
    with torch.no_grad():
        net.expr_head.weight.zero_()
        net.expr_head.bias.copy_(torch.log(torch.as_tensor(probs, dtype=torch.float32)))
    if modality == "audio":
        meta["audio"] = {"sample_rate": 16000, "n_mels": 64, "width": 32, "mean": -6.0, "std": 3.0}
    save_export(root / "export", net.eval(), meta, tokenizer)
    (root / "status.json").write_text(json.dumps({"state": "finished"}))
    return root


@pytest.fixture(scope="module")
def scene(tiny_world, tmp_path_factory):
    """One short video with a face and sound, the constant runs, and a work folder whose faces are cached."""
    from abaw_ce.synth.world import write_video

    root = tmp_path_factory.mktemp("shares")
    frames = first_frames(tiny_world / "test" / "test001.mp4", 30)
    sound = np.random.default_rng(0).normal(0, 0.1, 16000 * 30 // 25)
    write_video(root / "videos" / "clip.mp4", frames, 25, frames[0].shape[1], frames[0].shape[0], sound)
    surprised_fear = constant_emotion_run(root / "emotion_fs", confident("fear", "surprise"))
    sad_anger = confident("sadness", "anger")
    runs = {"emotion_fs": surprised_fear,
            "cexprnet_sa": constant_cexprnet_run(root / "cexprnet_sa", sad_anger / sad_anger.sum()),
            "audio_sa": constant_cexprnet_run(root / "audio_sa", sad_anger / sad_anger.sum(), "audio")}
    return root, runs


def labels_of(scene, names, weights, tag):
    root, runs = scene
    out = root / f"{tag}.txt"
    summary = make_submission(root / "videos", [runs[n] for n in names], out, work_dir=root / "work",
                              detector="opencv", crop_size=48, progress=False, run_weights=weights, overwrite=True)
    return set(challenge_file.read_submission(out)["label"]), summary


@pytest.mark.parametrize("names, weights, expected, audio_weight", [
    (["emotion_fs"], None, FS, 0.0),
    (["audio_sa"], None, SA, 1.0),
    (["emotion_fs", "audio_sa"], [0.6, 0.4], FS, 0.4),
    (["emotion_fs", "audio_sa"], [0.4, 0.6], SA, 0.6),
    (["audio_sa", "emotion_fs"], [0.4, 0.6], FS, 0.4),  # the audio run first in the list
    (["emotion_fs", "audio_sa"], [0, 1], SA, 1.0),  # a visual weight of 0 next to an audio weight
    (["emotion_fs", "audio_sa"], [1, 0], FS, 0.0),
    (["emotion_fs", "cexprnet_sa", "audio_sa"], [1, 2, 1], SA, 0.25),  # the reported command
    (["emotion_fs", "cexprnet_sa", "audio_sa"], [3, 1, 1], FS, 0.2),
])
def test_run_weights_work_for_every_mix_of_visual_and_audio_runs(scene, names, weights, expected, audio_weight):
    found, summary = labels_of(scene, names, weights, "mix")
    assert found == {expected}
    total = sum(weights) if weights else len(names)
    assert summary["run_shares"] == pytest.approx([w / total for w in (weights or [1] * len(names))])
    assert summary["audio_weight"] == pytest.approx(audio_weight)


@pytest.mark.parametrize("emotion_weight, expected", [(0.6, FS), (0.4, SA)])
def test_a_run_with_weight_w_holds_share_w_of_the_decision(scene, emotion_weight, expected):
    """A sigmoid run (pair sums near 2) against a softmax run (near 1) that is exactly as sure of another
    compound: the run with the larger weight decides, as it would between two runs of one track."""
    found, _ = labels_of(scene, ["emotion_fs", "cexprnet_sa"], [emotion_weight, 1 - emotion_weight], "scale")
    assert found == {expected}


def test_every_model_output_is_a_distribution_over_the_six_emotions(scene):
    from abaw_ce.submission.inference import load_models

    _, runs = scene
    models = load_models([runs["emotion_fs"], runs["cexprnet_sa"]])
    faces = torch.zeros(3, 3, 32, 32)
    emotion, cexprnet = (m.probabilities(faces) for m in models)
    expected = confident("fear", "surprise") / confident("fear", "surprise").sum()
    torch.testing.assert_close(emotion, torch.as_tensor(expected, dtype=torch.float32).expand(3, 6))
    torch.testing.assert_close(cexprnet.sum(dim=1), torch.ones(3))

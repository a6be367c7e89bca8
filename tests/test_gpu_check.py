"""The precision rule and the GPU paths, run on the CPU: bf16 fold training and inference, and the device check's
smoke run (the same code as on a GPU, tiny sizes)."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from abaw_ce import challenge_file
from abaw_ce.errors import InputError, OptionError, read_text_lines
from abaw_ce.submission.pipeline import make_submission
from abaw_ce.train.loop import cpu_has_native_bf16, in_own_process, inference_bf16, make_accelerator, resolve_precision
from tests.test_curriculum import TINY_VIT
from tests.test_finetune_stages import rafdb, run_script
from tests.test_make_submission import fake_fold_run, videos_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


def test_one_precision_rule_for_training_and_inference(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "no" and resolve_precision("fp32") == "no" and resolve_precision(False) == "no"
    assert not inference_bf16("auto", "cpu") and inference_bf16("bf16", "cpu") and not inference_bf16("fp32", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_precision("auto") == expected
        assert inference_bf16("auto", "cuda") is supported and inference_bf16("bf16", "cuda:0") is supported
    with pytest.raises(OptionError, match="train.precision"):
        resolve_precision("int8")


def test_native_bf16_read_from_the_cpu_flags(tmp_path):
    x86, arm, plain = (tmp_path / n for n in ("x86", "arm", "plain"))
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\nmodel name\t: bf16-less\n")
    assert cpu_has_native_bf16(x86) and cpu_has_native_bf16(arm)
    assert not cpu_has_native_bf16(plain) and not cpu_has_native_bf16(tmp_path / "missing")


def _precision_of_a_new_accelerator(run_dir: Path, precision: str) -> str:
    return make_accelerator(run_dir, precision, 1).mixed_precision


def test_a_stage_in_its_own_process_keeps_its_own_precision(tmp_path):
    # Accelerate fixes the precision once per process: here a second one is refused, a spawned process takes it
    assert _precision_of_a_new_accelerator(tmp_path, "fp32") == "no"
    with pytest.raises(ValueError, match="already been initialized"):
        _precision_of_a_new_accelerator(tmp_path, "bf16")
    assert in_own_process(_precision_of_a_new_accelerator, tmp_path, "bf16") == "bf16"
    with pytest.raises(OptionError, match="train.precision"):  # the child's error is raised here
        in_own_process(_precision_of_a_new_accelerator, tmp_path, "int8")
    with pytest.raises(InputError, match="missing.txt: file not found") as raised:
        in_own_process(read_text_lines, tmp_path / "missing.txt")
    assert raised.value.path == str(tmp_path / "missing.txt")


def test_fold_training_and_inference_under_bf16_on_the_cpu(tiny_world, tmp_path):
    run = tmp_path / "bf16"
    # its own process: Accelerate keeps one precision per process, and other tests train in fp32 in this one
    run_script("finetune/emotion.py", "--demo", *TINY_VIT, rafdb(tiny_world), "train.precision=bf16",
               "train.epochs=1", "train.curriculum.enabled=false", f"output.dir={run}")
    status = json.loads((run / "fold_0" / "status.json").read_text())
    assert status["state"] == "finished" and np.isfinite(status["best_score"])
    videos, template = videos_folder(tiny_world, tmp_path / "videos", names=("test000",))
    folds = fake_fold_run(tmp_path / "fake", folds=2)
    written = {}
    for precision in ("bf16", "fp32"):
        out = tmp_path / f"{precision}.txt"
        make_submission(videos, [folds], out, template=template, work_dir=tmp_path / "work", detector="opencv",
                        crop_size=48, progress=False, precision=precision)
        assert challenge_file.validate_submission(out, template=template).ok
        written[precision] = challenge_file.read_submission(out)["label"].to_numpy()
    assert (written["bf16"] == written["fp32"]).mean() > 0.9  # bf16 rounds, it does not change the answer


def test_gpu_check_smoke_runs_every_part_on_the_cpu(tiny_world, capsys):
    assert gpu_check.main(["--smoke", "--source-videos", str(tiny_world / "test")]) == 0
    out = capsys.readouterr().out
    assert "precision bf16 (smoke)" in out
    flops = float(re.search(r"([\d.e+-]+) GFLOP per image counted", out).group(1))
    # counted on a real step: more than the encoder's forward on the visible quarter of the tokens
    arch = gpu_check.SMOKE.arch
    assert flops * 1e9 > 2 * 2 * arch.depth * (arch.num_patches // 4) * 12 * arch.embed_dim ** 2 * 0.5
    assert re.search(r"emotion fine-tuning .* [\d.]+ images/s", out)
    lines = [line for line in out.splitlines() if line.startswith("make_submission")]
    assert len(lines) == 2 and all(f"{gpu_check.SMOKE.frames} frames" in line for line in lines)
    assert "models only (faces cached)" in lines[1] and "gpu_check done" in out


def test_a_cnn_goes_channels_last_on_a_gpu_only():
    """The layout rule of training and inference: CNN weights NHWC on a GPU (tensor cores), untouched on a CPU, and a
    ViT (one convolution, its patch embedding) untouched everywhere. The rule reads the device; no GPU is needed."""
    import timm
    import torch

    from abaw_ce.models.plain_cnn import NAME
    from abaw_ce.models.vit import build_vit
    from abaw_ce.train.loop import device_layout, prefers_channels_last
    from tests.test_make_submission import ARCH

    def nhwc(model):
        return all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                   for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1)

    cnn, vit = timm.create_model(NAME, num_classes=6), build_vit(ARCH, num_classes=6)
    assert prefers_channels_last(cnn) and not prefers_channels_last(vit)
    assert not nhwc(device_layout(cnn, "cpu"))
    assert nhwc(device_layout(cnn, "cuda")) and not nhwc(device_layout(vit, "cuda"))
    x = torch.rand(2, 3, 64, 64)
    assert cnn(x).shape == (2, 6)  # still runs on NCHW input

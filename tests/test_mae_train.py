"""Stage 1 through its real script: learning, resume and multi-process equivalence, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from abaw_ce.data.image_file import to_rgb_array
from abaw_ce.data.images import read_rgb
from abaw_ce.models.export import load_encoder
from abaw_ce.cli.pretrain import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "pretrain" / "mae.py"
TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
        "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
        "data.num_workers=0", "train.precision=fp32", "optim.warmup_epochs=1", "optim.base_lr=5e-2",
        "train.log_every=2", "train.vis_every=0", "train.vis_images=4"]


def blob_images(folder: Path, count: int, size: int = 32, seed: int = 0) -> Path:
    """Structured images (coloured background, two ellipses) that an MAE can learn to fill in."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.empty((size, size, 3), dtype=np.float64)
        image[:] = rng.uniform(0, 255, 3)
        for _ in range(2):
            cy, cx = rng.uniform(6, size - 6, 2)
            ry, rx = rng.uniform(3, 9, 2)
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            image[inside] = rng.uniform(0, 255, 3)
        Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return blob_images(tmp_path_factory.mktemp("mae_data") / "faces", 48)


def run_stage(*args, launcher=(), check=True):
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, str(SCRIPT), *map(str, args)] if launcher else
                            [sys.executable, str(SCRIPT), *map(str, args)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def export_weights(run: Path) -> dict:
    return load_file(str(run / "export" / "encoder.safetensors"))


def test_pretraining_learns_and_exports(faces, tmp_path):
    run = tmp_path / "run"
    run_stage(*TINY, f"data.sources=[{faces}]", "train.epochs=12", "train.batch_size=8", f"output.dir={run}")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics[-1]["update"] == 72 and metrics[-1]["epoch"] == 12
    first, last = metrics[0]["loss"], metrics[-1]["loss"]
    assert last < 0.8 * first, (first, last)
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert (run / "reconstructions" / "update_00000000.png").is_file() and (run / "loss.png").is_file()
    assert (run / "reconstructions" / "update_00000072.png").is_file()
    assert list((run / "tensorboard").rglob("events.out.tfevents*"))
    model, meta = load_encoder(run / "export")
    assert meta["source"]["run"] == "run" and meta["source"]["update"] == 72
    assert meta["arch"].embed_dim == 32
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 32)
    # the default lr follows the scaling rule: base_lr * 8 / 256 (peak, after warmup)
    assert max(r["lr"] for r in metrics) <= 5e-2 * 8 / 256 + 1e-12
    # the same folder is not silently reused
    again = run_stage(*TINY, f"data.sources=[{faces}]", f"output.dir={run}", check=False)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_interrupted_then_resumed_equals_uninterrupted(faces, tmp_path):
    common = [*TINY, f"data.sources=[{faces}]", "train.epochs=2", "train.batch_size=4", "train.grad_accum=2",
              "train.checkpoint_every=2", "train.keep_checkpoints=2", "optim.clip_grad=0.5"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_stage(*common, f"output.dir={straight}")
    # stop mid-epoch (6 updates per epoch), then resume with DataLoader workers this time
    first = run_stage(*common, "train.stop_after_updates=4", f"output.dir={interrupted}")
    assert "--resume" in first.stdout
    status = json.loads((interrupted / "status.json").read_text())
    assert status["state"] == "stopped" and status["update"] == 4
    assert not (interrupted / "export").exists()
    run_stage("--resume", interrupted, "train.stop_after_updates=null", "data.num_workers=1")
    assert json.loads((interrupted / "status.json").read_text())["state"] == "finished"
    a, b = export_weights(straight), export_weights(interrupted)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    kept = sorted(p.name for p in (interrupted / "checkpoints").iterdir())
    assert kept == ["update_00000010", "update_00000012"]
    logged = [r["update"] for r in json.loads((interrupted / "metrics.json").read_text())]
    assert logged == sorted(set(logged)) and logged[-1] == 12


def test_two_processes_match_one_on_the_same_global_batch(faces, tmp_path):
    common = [*TINY, f"data.sources=[{faces}]", "train.epochs=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_stage(*common, "train.batch_size=8", f"output.dir={one}")
    result = run_stage(*common, "train.batch_size=4", f"output.dir={two}",
                       launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", "29533"))
    assert "2 process(es), effective batch 8" in result.stdout
    a, b = export_weights(one), export_weights(two)
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    la = [r["loss"] for r in json.loads((one / "metrics.json").read_text())]
    lb = [r["loss"] for r in json.loads((two / "metrics.json").read_text())]
    assert np.allclose(la, lb, rtol=1e-4)


def test_odd_images_are_converted_and_broken_ones_skipped(faces, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, path in enumerate(sorted(faces.iterdir())[:16]):
        (folder / f"ok{i:02d}.png").write_bytes(path.read_bytes())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 24), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 255, (20, 50, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    deep = rng.integers(0, 65535, (33, 33), dtype=np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).convert("P").save(folder / "palette.png")
    whole = folder / "whole.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole, quality=95)
    (folder / "truncated.jpg").write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])

    assert read_rgb(folder / "deep16.png").shape == (3, 33, 33)
    with Image.open(folder / "deep16.png") as image:
        assert int(to_rgb_array(image).max()) == int(round(deep.max() / 65535 * 255))
    assert read_rgb(folder / "rgba.png").dtype == torch.uint8

    run = tmp_path / "run"
    result = run_stage(*TINY, f"data.sources=[{folder}]", "train.epochs=2", "train.batch_size=6",
                       f"output.dir={run}")
    assert "truncated.jpg" in result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics[-1]["skipped_images"] >= 1
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(faces, tmp_path):
    run = tmp_path / "run"
    result = run_stage(*TINY, f"data.sources=[{faces}]", "train.epochs=3", "train.batch_size=8",
                       "optim.lr=1e30", "optim.warmup_epochs=0", "train.log_every=1", "train.checkpoint_every=1",
                       f"output.dir={run}", check=False)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "NaN" in result.stderr and "last good checkpoint" in result.stderr
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed"
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert saved and all(not name.endswith(".partial") for name in saved)
    assert saved[-1] in result.stderr
    assert not (run / "export").exists()


def test_bad_requests_get_clear_errors(faces, tmp_path, capsys):
    def fails(*args):
        assert main([*map(str, args)]) == 2
        return capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    err = fails(*TINY, f"data.sources=[{empty}]", f"output.dir={tmp_path / 'r1'}")
    assert "no images" in err and str(empty) in err
    err = fails(*TINY, f"data.sources=[{tmp_path / 'nowhere'}]", f"output.dir={tmp_path / 'r2'}")
    assert "not found" in err and "data.sources" in err
    assert "resume folder not found" in fails("--resume", tmp_path / "no_run")
    assert "train.epochz" in fails(*TINY, "train.epochz=3")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    # a finished tiny run cannot be resumed as a different architecture
    run = tmp_path / "run"
    run_stage(*TINY, f"data.sources=[{faces}]", "train.epochs=1", "train.batch_size=16", f"output.dir={run}")
    assert "model.depth" in fails("--resume", run, "model.depth=3")


def test_sources_mix_packed_stores_faces_outputs_manifests_and_folders(faces, tmp_path):
    from abaw_ce.data.images import FaceImages
    from abaw_ce.data.packed import pack_image_files

    files = sorted(faces.iterdir())
    pack_image_files(files[:5], tmp_path / "store", 32, 32)
    pack_image_files(files[5:8], tmp_path / "faces_out" / "crops", 32, 32)
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in files[8:10]))
    dataset = FaceImages([tmp_path / "store", tmp_path / "faces_out", manifest, faces])
    assert [info.kind for info in dataset.infos] == ["packed", "faces_output", "manifest", "image_folder"]
    assert len(dataset) == 5 + 3 + 2 + 48
    assert torch.equal(dataset[0], read_rgb(files[0]))
    assert torch.equal(dataset[9], read_rgb(files[9]))
    assert dataset.describe(6).endswith("[row 1]") and dataset.describe(8) == str(files[8])

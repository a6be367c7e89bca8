"""make_submission over processes: inference parts that do not depend on the split, and a 2-process launch that
writes the file one process writes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from abaw_ce.data.packed import PackedFaces
from abaw_ce.faces import run_faces
from abaw_ce.submission.inference import RunShares, load_models, predict_crop_part, predict_crops
from abaw_ce.submission.pipeline import make_submission
from tests.test_make_submission import fake_fold_run, videos_folder

REPO = Path(__file__).resolve().parents[1]


def test_inference_parts_and_loader_workers_give_the_whole_store_s_numbers(tiny_world, tmp_path):
    videos, _ = videos_folder(tiny_world, tmp_path / "videos", names=("test000",))
    run_faces(videos, tmp_path / "faces", detector="opencv", size=32, progress=False)
    models = load_models([fake_fold_run(tmp_path / "run")])
    store = tmp_path / "faces" / "crops"
    whole = predict_crops(store, models, batch_size=16, progress=False)
    assert whole.shape[1] == 6 and np.allclose(whole.sum(axis=1), 1, atol=1e-5)
    parts = [predict_crop_part(store, models, RunShares.of(models), batch_size=16, progress=False, part=(r, 3))
             for r in range(3)]
    rows = np.concatenate([r for r, _ in parts])
    assert sorted(rows.tolist()) == list(range(len(whole)))  # each crop in exactly one part
    for r, (part_rows, values) in enumerate(parts):
        assert set(part_rows // 16 % 3) <= {r}  # whole batches, dealt round-robin
        assert np.array_equal(values, whole[part_rows])
    assert np.array_equal(predict_crops(store, models, batch_size=16, progress=False, workers=2), whole)
    faces = PackedFaces(store)  # the loader reads ranges from the file: the same crops as the memmap gives
    assert torch.equal(faces.read_range(3, 20), faces.get_batch(np.arange(3, 23)))
    with pytest.raises(ValueError, match="outside the store"):
        faces.read_range(len(faces) - 2, 5)


def test_two_processes_write_the_file_one_process_writes(tiny_world, tmp_path):
    videos, template = videos_folder(tiny_world, tmp_path / "videos", names=("test001", "test002"))
    run = fake_fold_run(tmp_path / "run")
    options = {"template": template, "detector": "opencv", "crop_size": 32, "batch_size": 16, "redetect_every": 5}
    one = make_submission(videos, [run], tmp_path / "one.txt", progress=False, **options)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
               str(REPO / "submit" / "make_submission.py"), "--videos", str(videos), "--models", str(run),
               "--out", str(tmp_path / "two.txt"), "--template", str(template), "--detector", "opencv",
               "--crop-size", "32", "--batch-size", "16", "--redetect-every", "5"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # one report, from the main process
    assert (tmp_path / "two.txt").read_bytes() == (tmp_path / "one.txt").read_bytes()
    two = json.loads((tmp_path / "two_summary.json").read_text())
    assert two["per_video"] == one["per_video"] and two["faces_found"] == one["faces_found"] > 0
    work = tmp_path / "two_work"
    assert not [p.name for p in list(work.glob(".*")) + list((work / "faces_cache").glob(".*"))]  # no marks left

"""The faces step over several processes: files dealt by size, the outputs of one process byte for byte, and a
killed run that redoes only its unfinished files."""
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from abaw_ce.errors import OptionError
from abaw_ce.faces.detectors import make_detector
from abaw_ce.faces.pipeline import (FRAMES_CSV, SHARD_WORK_DIR, STORE_DIR, _faces_of_share, list_inputs,
                                    run_faces, share_files)

OUTPUTS = [FRAMES_CSV, f"{STORE_DIR}/faces.u8", f"{STORE_DIR}/index.csv", f"{STORE_DIR}/meta.json"]


def mixed_folder(world: Path, folder: Path) -> Path:
    """Two test videos (one in a subfolder) and six RAF-DB images."""
    (folder / "sub").mkdir(parents=True)
    shutil.copy(world / "test" / "test000.mp4", folder / "test000.mp4")
    shutil.copy(world / "test" / "test002.mp4", folder / "sub" / "test002.mp4")
    for image in sorted((world / "rafdb_basic" / "Image" / "aligned").glob("*.jpg"))[:6]:
        shutil.copy(image, folder / image.name)
    return folder


def faces_launch(source: Path, out: Path, port: int, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               "-m", "abaw_ce.faces", str(source), "--out", str(out), "--detector", "opencv", "--size", "48",
               "--no-progress", *extra]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_files_are_dealt_by_size_and_keep_their_order(tmp_path):
    sizes = {"a": 50, "b": 10, "c": 40, "d": 10, "e": 5}
    files = []
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
        files.append(tmp_path / name)
    shares = share_files(files, 2)
    assert [[p.name for p in share] for share in shares] == [["a", "d"], ["b", "c", "e"]]  # 60 and 55 bytes
    assert share_files(files, 1) == [files]
    assert sorted(p.name for share in share_files(files, 4) for p in share) == sorted(sizes)


def test_two_processes_write_what_one_writes_and_a_killed_run_redoes_only_the_rest(tiny_world, tmp_path):
    source = mixed_folder(tiny_world, tmp_path / "in")
    one = run_faces(source, tmp_path / "one", detector="opencv", size=48, progress=False)
    done = faces_launch(source, tmp_path / "two", 29561)
    assert done.stdout.count("crops:") == 1  # one summary, from the main process
    for name in OUTPUTS:
        assert filecmp.cmp(tmp_path / "one" / name, tmp_path / "two" / name, shallow=False), name
    assert not (tmp_path / "two" / SHARD_WORK_DIR).exists()  # the per-file results go once the run is done
    assert one.totals["faces_found"] > 0

    # a killed launch: process 1 of 2 had finished its share, process 0 nothing; its results are in the cache
    cache = tmp_path / "cache"
    cache.mkdir()
    files = list_inputs(source)
    _faces_of_share(source, files, 1, 2, make_detector("opencv"), 48, cache, 32, False)
    for marker in cache.glob(".share-*"):
        marker.unlink()  # that launch's marker says nothing about the next one
    kept = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npz")}
    assert kept
    faces_launch(source, tmp_path / "resumed", 29562, "--cache", str(cache))
    for name in OUTPUTS:
        assert filecmp.cmp(tmp_path / "one" / name, tmp_path / "resumed" / name, shallow=False), name
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npz")}
    assert all(after[name] == mtime for name, mtime in kept.items())  # not redone
    assert len(after) > len(kept) and not list(cache.glob(".share-*"))


def test_threads_write_what_one_thread_writes(tiny_world, tmp_path):
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    shutil.copy(tiny_world / "test" / "test002.mp4", source / "test002.mp4")
    shutil.copy(source / "test002.mp4", source / "sub" / "again.mp4")  # same content: one cache entry, built once
    for image in sorted((tiny_world / "rafdb_basic" / "Image" / "aligned").glob("*.jpg"))[:2]:
        shutil.copy(image, source / image.name)
    (source / "broken.mp4").write_bytes(b"not a video")
    (source / "notes.txt").write_text("not a face")
    reports = {}
    for threads, cache in ((1, None), (3, None), (3, "cache")):
        out = tmp_path / f"out{threads}{cache or ''}"
        reports[out.name] = run_faces(source, out, detector="opencv", size=48, progress=False, threads=threads,
                                      cache_dir=tmp_path / cache if cache else None, redetect_every=5)
    one, *others = reports
    for other in others:
        for name in OUTPUTS:
            assert filecmp.cmp(tmp_path / one / name, tmp_path / other / name, shallow=False), (other, name)
        assert [(f.path, f.status, f.frames, f.faces_found) for f in reports[other].files] == \
            [(f.path, f.status, f.frames, f.faces_found) for f in reports[one].files]
    statuses = {f.path: f.status for f in reports[one].files}
    assert statuses["broken.mp4"] == "error" and statuses["notes.txt"] == "skipped"
    assert len(list((tmp_path / "cache").glob("*.npz"))) == len(statuses) - 3  # again.mp4 shares test000's entry
    with pytest.raises(OptionError, match="threads"):
        run_faces(source, tmp_path / "bad", detector="opencv", progress=False, threads=0)

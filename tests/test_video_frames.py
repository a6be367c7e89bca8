"""C-EXPR-DB video-frame rows become face-crop rows for the image datasets; Aff-Wild2 frame images stay."""
import json

import numpy as np

from abaw_ce.data.adapters import load_dataset
from abaw_ce.data.images import read_rgb
from abaw_ce.data.table import concat_tables
from abaw_ce.data.video_frames import DONE_FILE, frames_to_crops, is_frame_row


def test_frame_rows_point_at_crops_and_a_rerun_reuses_them(tiny_world, tmp_path):
    specs = json.loads((tiny_world / "world.json").read_text())["datasets"]
    cexpr = load_dataset(specs["cexpr"])
    three_videos = cexpr[cexpr["group"].isin(sorted(set(cexpr["group"]))[:3])]
    affwild = load_dataset(specs["affwild2_au"]).head(5)
    table = concat_tables([affwild, three_videos])
    assert is_frame_row(table).tolist() == [False] * 5 + [True] * len(three_videos)
    out, report = frames_to_crops(table, tmp_path / "crops", detector="opencv", size=48, progress=False)
    assert report.videos == 3 and report.frame_rows == len(three_videos) and report.reused == 0
    assert len(out) == len(table) - report.without_face and report.without_face < len(three_videos) / 2
    assert out["path"].head(5).tolist() == affwild["path"].tolist()  # other rows untouched, same order
    crops = out.iloc[5:]
    assert crops["path"].str.endswith(".png").all() and not is_frame_row(out).any()
    assert set(crops["frame"]) <= set(three_videos["frame"])  # the frame number is kept
    assert read_rgb(crops["path"].iloc[0]).shape == (3, 48, 48)
    done = next((tmp_path / "crops").glob(f"*/{DONE_FILE}"))
    stamp = done.stat().st_mtime_ns
    again, report2 = frames_to_crops(table, tmp_path / "crops", detector="opencv", size=48, progress=False)
    assert report2.reused == 3 and done.stat().st_mtime_ns == stamp
    assert again["path"].tolist() == out["path"].tolist()
    # another crop size is another extraction, not a stale reuse
    _, report3 = frames_to_crops(table, tmp_path / "crops", detector="opencv", size=32, progress=False)
    assert report3.reused == 0
    assert read_rgb(next(iter(sorted((tmp_path / "crops").glob("*/0*.png"))))).shape == (3, 32, 32)
    assert np.all(crops["source"] == "cexpr")

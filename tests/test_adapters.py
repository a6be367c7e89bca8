"""Adapters read hand-written fixtures of every real format, and stop with exact errors on bad input."""
from pathlib import Path

import numpy as np
import pytest

from abaw_ce import labels
from abaw_ce.data import adapters, table as T
from abaw_ce.errors import InputError

from conftest import put_image

EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
AU_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# --- Aff-Wild2 ---------------------------------------------------------------------------------------

@pytest.fixture
def affwild2(tmp_path):
    images = tmp_path / "cropped_aligned"
    for k in (1, 2, 3, 5):  # frame 4 has no image
        put_image(images / "10-60-1280x720_left" / f"{k:05d}.jpg")
    for k in (1, 2):
        put_image(images / "video7" / f"{k:05d}.jpg")
    write(tmp_path / "EXPR" / "10-60-1280x720_left.txt", f"{EXPR_HEADER}\n4\n-1\n0\n6\n7\n")
    write(tmp_path / "EXPR" / "video7.txt", f"{EXPR_HEADER}\n5\n3\n")
    write(tmp_path / "AU" / "video7.txt", f"{AU_HEADER}\n1,0,0,1,0,0,1,0,0,0,1,0\n"
          "-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1\n")
    write(tmp_path / "AU" / "10-60-1280x720_left.txt", f"{AU_HEADER}\n0,0,1,0,-1,0,0,0,0,0,0,0\n")
    return tmp_path


def test_affwild2_expr_reads_labels_skips_and_counts(affwild2):
    t = adapters.load_affwild2_expr(affwild2 / "cropped_aligned", affwild2 / "EXPR")
    assert list(t["frame"]) == [1, 3, 5, 1, 2]
    assert list(t["expression"]) == ["happiness", "neutral", "other", "sadness", "fear"]
    assert t["group"].iloc[0] == "affwild2_expr/10-60-1280x720"  # _left shares the video's group
    assert T.targets(t)[0].tolist() == [0, 0, 0, 1, 0, 0]
    assert T.targets(t)[1].sum() == 0 and t["has_target"].iloc[1]
    assert t["cexpr_class"].iloc[2] == labels.CEXPR_OTHER_INDEX and t["challenge_class"].iloc[2] == -1
    report = t.attrs["reports"]["affwild2_expr"]
    assert report["skipped_unannotated"] == 1 and report["skipped_missing_image"] == 1
    dropped = adapters.load_affwild2_expr(affwild2 / "cropped_aligned", affwild2 / "EXPR",
                                          non_basic={"neutral": "drop", "other": "drop"})
    assert list(dropped["expression"]) == ["happiness", "sadness", "fear"]


def test_affwild2_au_masks_minus_one(affwild2):
    t = adapters.load_affwild2_au(affwild2 / "cropped_aligned", affwild2 / "AU")
    assert len(t) == 2  # the all -1 row is skipped
    values, mask = T.au_arrays(t, "affwild2")
    assert mask[0].sum() == 11 and not mask[0][labels.AFFWILD2_AUS.index(7)]
    assert values[0][labels.AFFWILD2_AUS.index(4)] == 1.0
    assert values[1].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    # The 5 AUs outside the Aff-Wild2 set stay masked in the 17-AU view.
    _, mask17 = T.au_arrays(t, "cexpr")
    assert mask17[1].sum() == 12
    assert not t["has_target"].any()


@pytest.mark.parametrize("content, line, message", [
    ("Neutral,Anger\n1\n", 1, "wrong header"),
    (f"{EXPR_HEADER}\n4\n9\n", 3, "out of range"),
    (f"{EXPR_HEADER}\n4\nhappy\n", 3, "expected an integer expression label"),
    (f"{EXPR_HEADER}\n4\n\n1\n", 3, "empty line"),
    ("", None, "file is empty"),
    (b"Neutral,Anger\xff\n1\n", 1, "not valid UTF-8"),
])
def test_affwild2_expr_errors(tmp_path, content, line, message):
    put_image(tmp_path / "img" / "v" / "00001.jpg")
    txt = write(tmp_path / "EXPR" / "v.txt", content)
    with pytest.raises(InputError, match=message) as err:
        adapters.load_affwild2_expr(tmp_path / "img", tmp_path / "EXPR")
    assert err.value.path == str(txt) and err.value.line == line


def test_affwild2_au_row_width_and_values(tmp_path):
    put_image(tmp_path / "img" / "v" / "00001.jpg")
    write(tmp_path / "AU" / "v.txt", f"{AU_HEADER}\n0,1\n")
    with pytest.raises(InputError, match="expected 12 comma-separated AU values, got 2") as err:
        adapters.load_affwild2_au(tmp_path / "img", tmp_path / "AU")
    assert err.value.line == 2
    write(tmp_path / "AU" / "v.txt", f"{AU_HEADER}\n0,1,0,0,0,0,0,0,0,0,0,2\n")
    with pytest.raises(InputError, match=r"AU value 2 is out of range \(expected one of -1, 0, 1\)"):
        adapters.load_affwild2_au(tmp_path / "img", tmp_path / "AU")


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(InputError, match="cropped_aligned image folder not found"):
        adapters.load_affwild2_expr(tmp_path / "nope", tmp_path)
    (tmp_path / "img").mkdir()
    (tmp_path / "EXPR").mkdir()
    with pytest.raises(InputError, match="no annotation .txt files"):
        adapters.load_affwild2_expr(tmp_path / "img", tmp_path / "EXPR")


# --- RAF-DB ------------------------------------------------------------------------------------------

def rafdb(root: Path, lines: str, names=("train_00001", "train_00002", "test_0001")):
    for name in names:
        put_image(root / "Image" / "aligned" / f"{name}_aligned.jpg")
    write(root / "EmoLabel" / "list_patition_label.txt", lines)
    return root


def test_rafdb_basic_and_compound(tmp_path):
    basic = adapters.load_rafdb(rafdb(tmp_path / "b", "train_00001.jpg 1\ntrain_00002.jpg 7\ntest_0001.jpg 4\n"
                                      "train_00009.jpg 2\n"), "basic")
    assert list(basic["expression"]) == ["surprise", "neutral", "happiness"]
    assert list(basic["split"]) == ["train", "train", "test"]
    assert basic.attrs["reports"]["rafdb_basic"]["skipped_missing_image"] == 1
    compound = adapters.load_rafdb(rafdb(tmp_path / "c", "train_00001.jpg 8\ntrain_00002.jpg 6\n"), "compound")
    assert list(compound["expression"]) == ["Fearfully_Surprised", "Sadly_Disgusted"]
    assert list(compound["challenge_class"]) == [0, -1]
    assert list(compound["cexpr_class"]) == [0, labels.CEXPR_CLASSES.index("Sadly_Disgusted")]
    assert T.targets(compound)[0].tolist() == [1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("lines, line, message", [
    ("train_00001.jpg 1\ntrain_00002.jpg 8\n", 2, r"label 8 is out of range \(expected 1..7\)"),
    ("train_00001.jpg 1 extra\n", 1, "expected '<image name> <label>'"),
    ("train_00001.jpg\n", 1, "expected '<image name> <label>'"),
])
def test_rafdb_errors(tmp_path, lines, line, message):
    root = rafdb(tmp_path, lines)
    with pytest.raises(InputError, match=message) as err:
        adapters.load_rafdb(root, "basic")
    assert err.value.line == line and err.value.path.endswith("list_patition_label.txt")


def test_rafdb_missing_label_file(tmp_path):
    (tmp_path / "Image" / "aligned").mkdir(parents=True)
    with pytest.raises(InputError, match="list_patition_label.txt: file not found"):
        adapters.load_rafdb(tmp_path)


# --- AffectNet ---------------------------------------------------------------------------------------

AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
                    "expression,valence,arousal")


def test_affectnet(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        put_image(tmp_path / "Manually_Annotated_Images" / "1" / name)
    csv = write(tmp_path / "training.csv", f"{AFFECTNET_HEADER}\n"
                '1/a.jpg,10,10,50,50,"1.0;2.0;3.0",1,0.5,0.2\n'
                "1/b.jpg,10,10,50,50,,7,0.1,0.1\n"
                "1/c.jpg,10,10,50,50,,9,0,0\n"
                "1/d.jpg,10,10,50,50,,0,0,0\n"
                "1/zz.jpg,10,10,50,50,,3,0,0\n")
    t = adapters.load_affectnet(csv, tmp_path / "Manually_Annotated_Images")
    assert list(t["expression"]) == ["happiness", "contempt", "neutral"]
    rep = t.attrs["reports"]["affectnet"]
    assert rep["skipped_unusable_label"] == 1 and rep["skipped_missing_image"] == 1
    t2 = adapters.load_affectnet(csv, tmp_path / "Manually_Annotated_Images", non_basic={"contempt": "drop"})
    assert list(t2["expression"]) == ["happiness", "neutral"]
    assert t2[["valence", "arousal"]].to_numpy().tolist() == [[0.5, pytest.approx(0.2)], [0.0, 0.0]]


def test_affectnet_valence_arousal_none_and_range(tmp_path):
    put_image(tmp_path / "img" / "1" / "a.jpg")
    csv = write(tmp_path / "t.csv", f"{AFFECTNET_HEADER}\n1/a.jpg,10,10,50,50,,1,-2,-2\n")
    t = adapters.load_affectnet(csv, tmp_path / "img")
    assert t[["valence", "arousal"]].isna().all().all()  # -2 is AffectNet's "none"
    bad = write(tmp_path / "bad.csv", f"{AFFECTNET_HEADER}\n1/a.jpg,10,10,50,50,,1,0.2,1.5\n")
    with pytest.raises(InputError, match=r"arousal 1.5 is outside \[-1, 1\]") as err:
        adapters.load_affectnet(bad, tmp_path / "img")
    assert err.value.line == 2


def test_affwild2_va_reads_values_and_skips_minus_five(tmp_path):
    for k in (1, 2, 3):
        put_image(tmp_path / "cropped_aligned" / "v1" / f"{k:05d}.jpg")
    ann = tmp_path / "VA"
    write(ann / "v1.txt", "valence,arousal\n0.25,-0.5\n-5,-5\n0.1,0.9\n-0.3,0.3\n")
    t = adapters.load_affwild2_va(tmp_path / "cropped_aligned", ann)
    assert t["frame"].tolist() == [1, 3] and t["valence"].tolist() == [0.25, pytest.approx(0.1)]
    assert not t["has_target"].any() and t[list(labels.AU_COLUMNS)].isna().all().all()
    rep = t.attrs["reports"]["affwild2_va"]
    assert rep["skipped_unannotated"] == 1 and rep["skipped_missing_image"] == 1  # frame 4 has no image
    write(ann / "v1.txt", "valence,arousal\n0.25,x\n")
    with pytest.raises(InputError, match="arousal 'x' is not a number") as err:
        adapters.load_affwild2_va(tmp_path / "cropped_aligned", ann)
    assert err.value.line == 2
    write(ann / "v1.txt", "arousal,valence\n0.25,0.1\n")
    with pytest.raises(InputError, match="wrong header"):
        adapters.load_affwild2_va(tmp_path / "cropped_aligned", ann)


@pytest.mark.parametrize("body, line, message", [
    ("1/a.jpg,10,10,50,50,,11,0,0\n", 2, r"expression 11 is out of range \(expected 0..10\)"),
    ("1/a.jpg,10,10,50,50,,1,0\n", 2, "expected 9 fields as in the header, got 8"),
    ("1/a.jpg,10,10,50,50,,1,0,0\n1/a.jpg,10,10,50,50,,x,0,0\n", 3, "expected an integer AffectNet expression"),
])
def test_affectnet_errors(tmp_path, body, line, message):
    put_image(tmp_path / "img" / "1" / "a.jpg")
    csv = write(tmp_path / "t.csv", f"{AFFECTNET_HEADER}\n{body}")
    with pytest.raises(InputError, match=message) as err:
        adapters.load_affectnet(csv, tmp_path / "img")
    assert err.value.line == line


def test_affectnet_wrong_header(tmp_path):
    (tmp_path / "img").mkdir()
    csv = write(tmp_path / "t.csv", "path,expression\na.jpg,1\n")
    with pytest.raises(InputError, match=r"header lacks column\(s\) \['subDirectory_filePath'") as err:
        adapters.load_affectnet(csv, tmp_path / "img")
    assert err.value.line == 1


# --- C-EXPR-DB ---------------------------------------------------------------------------------------

def make_video(path: Path, n_frames: int, fps: int) -> Path:
    import av
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 5 % 255, dtype=np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


CEXPR_HEADER = ("Begin Time - hh:mm:ss.ms,End Time - hh:mm:ss.ms," + ",".join(labels.CEXPR_CSV_CLASS_COLUMNS))


def cexpr_row(begin: str, end: str, name: str, stray: str = "") -> str:
    cells = [""] * 13
    cells[labels.compound_index(name)] = f"{stray}1{stray}"
    return ",".join([begin, end, *cells])


def test_cexpr_segments_to_frames(tmp_path):
    make_video(tmp_path / "videos" / "001.mp4", n_frames=30, fps=10)
    write(tmp_path / "annotation" / "001.csv", "\n".join([
        CEXPR_HEADER,
        cexpr_row("00:00:00.000", "00:00:00.500", "Happily Surprised"),       # frames 1-5
        cexpr_row("00:00:01.000", "00:00:01.250", "Sadly Angry", stray=" "),   # frames 11-13
        cexpr_row("00:00:02.500", "00:00:09.000", "Other"),                     # frames 26-30 (video ends)
    ]) + "\n")
    t = adapters.load_cexpr(tmp_path)
    assert list(t["frame"]) == [1, 2, 3, 4, 5, 11, 12, 13, 26, 27, 28, 29, 30]
    assert set(t.loc[t["frame"] <= 5, "challenge_class"]) == {1}
    assert set(t.loc[t["frame"].between(11, 13), "challenge_class"]) == {6}
    assert set(t.loc[t["frame"] >= 26, "cexpr_class"]) == {labels.CEXPR_OTHER_INDEX}
    assert (t["group"] == "cexpr/001").all() and t["path"].iloc[0].endswith("001.mp4")
    # an fps override changes which frames a time range covers
    t20 = adapters.load_cexpr(tmp_path, fps={"001": 20})
    assert list(t20["frame"][:3]) == [1, 2, 3] and (t20["frame"] <= 30).all()
    assert len(t20[t20["challenge_class"] == 1]) == 10


@pytest.mark.parametrize("rows, line, message", [
    ([",".join(["00:00:00.000", "00:00:00.500", "1", "1"] + [""] * 11)], 2, "expected exactly one '1'"),
    ([cexpr_row("00:00:01.000", "00:00:00.500", "Sadly Angry")], 2, "is not after begin time"),
    ([cexpr_row("1 second", "00:00:00.500", "Sadly Angry")], 2, "expected a time hh:mm:ss.ms"),
    ([cexpr_row("00:00:00.000", "00:00:00.500", "Sadly Angry"),
      cexpr_row("00:00:00.300", "00:00:00.900", "Sadly Fearful")], 3, "overlaps line 2"),
    ([cexpr_row("00:00:00.000", "00:00:00.500", "Sadly Angry").replace(",1", ",x")], 2, "must be '1' or empty"),
])
def test_cexpr_errors(tmp_path, rows, line, message):
    make_video(tmp_path / "videos" / "v.mp4", n_frames=10, fps=10)
    write(tmp_path / "annotation" / "v.csv", "\n".join([CEXPR_HEADER, *rows]) + "\n")
    with pytest.raises(InputError, match=message) as err:
        adapters.load_cexpr(tmp_path)
    assert err.value.line == line and err.value.path.endswith("v.csv")


def test_cexpr_missing_or_broken_video(tmp_path):
    write(tmp_path / "annotation" / "v.csv", CEXPR_HEADER + "\n" +
          cexpr_row("00:00:00.000", "00:00:00.500", "Sadly Angry") + "\n")
    (tmp_path / "videos").mkdir()
    with pytest.raises(InputError, match="no video v.* in"):
        adapters.load_cexpr(tmp_path)
    write(tmp_path / "videos" / "v.mp4", b"")
    with pytest.raises(InputError, match="video file is empty"):
        adapters.load_cexpr(tmp_path)
    write(tmp_path / "videos" / "v.mp4", b"this is not a video at all" * 10)
    with pytest.raises(InputError, match="cannot read video"):
        adapters.load_cexpr(tmp_path)


# --- manifest and image folders ---------------------------------------------------------------------

def test_manifest_expression_and_aus(tmp_path):
    put_image(tmp_path / "faces" / "a.png")
    put_image(tmp_path / "faces" / "b.png")
    put_image(tmp_path / "faces" / "c.png")
    csv = write(tmp_path / "mine.csv", "path,group,expression,AU12,AU9\n"
                "faces/a.png,p1,Happily Surprised,1,\nfaces/b.png,p1,neutral,-1,0\nfaces/c.png,p2,,,\n")
    t = adapters.load_manifest(csv)
    assert list(t["source"]) == ["mine"] * 3
    assert list(t["group"]) == ["mine/p1", "mine/p1", "mine/p2"]
    assert list(t["has_target"]) == [True, True, False]
    values, mask = T.au_arrays(t)
    i12, i9 = labels.CEXPR_AUS.index(12), labels.CEXPR_AUS.index(9)
    assert mask[:, i12].tolist() == [True, False, False] and mask[:, i9].tolist() == [False, True, False]


def test_manifest_multilabel_columns(tmp_path):
    put_image(tmp_path / "a.png")
    csv = write(tmp_path / "m.csv", "path,surprise,fear,disgust,happiness,sadness,anger\na.png,1,0,0,1,0,0\n")
    t = adapters.load_manifest(csv)
    assert T.targets(t)[0].tolist() == [1, 0, 0, 1, 0, 0] and t["has_target"].all()


@pytest.mark.parametrize("text, line, message", [
    ("path,expression\nmissing.png,happiness\n", 2, "image 'missing.png' not found"),
    ("path,expression\na.png,gleeful\n", 2, "unknown expression 'gleeful'"),
    ("path,expression\na.png\n", 2, "expected 2 fields as in the header, got 1"),
    ("file,expression\na.png,happiness\n", 1, r"header lacks column\(s\) \['path'\]"),
    ("path,AU3\na.png,1\n", 1, "are not among the 17 AUs"),
    ("path,AU12\na.png,5\n", 2, "AU12 value 5 is out of range"),
])
def test_manifest_errors(tmp_path, text, line, message):
    put_image(tmp_path / "a.png")
    csv = write(tmp_path / "m.csv", text)
    with pytest.raises(InputError, match=message) as err:
        adapters.load_manifest(csv)
    assert err.value.line == line


def test_image_folder(tmp_path):
    put_image(tmp_path / "faces" / "id1" / "x.jpg")
    put_image(tmp_path / "faces" / "id2" / "y.png")
    write(tmp_path / "faces" / "notes.txt", "not an image")
    t = adapters.load_image_folder(tmp_path / "faces")
    assert len(t) == 2 and list(t["group"]) == ["faces/id1", "faces/id2"] and not t["has_target"].any()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        adapters.load_image_folder(tmp_path / "empty")


def test_load_dataset_dispatch_and_concat(affwild2, tmp_path):
    a = adapters.load_dataset({"format": "affwild2_expr", "images": affwild2 / "cropped_aligned",
                               "annotations": affwild2 / "EXPR"})
    b = adapters.load_dataset({"format": "affwild2_au", "images": affwild2 / "cropped_aligned",
                               "annotations": affwild2 / "AU"})
    both = T.concat_tables([a, b])
    T.check_table(both)
    assert len(both) == len(a) + len(b) and set(both.attrs["reports"]) == {"affwild2_expr", "affwild2_au"}
    with pytest.raises(ValueError, match="dataset format must be one of"):
        adapters.load_dataset({"format": "fer2013"})

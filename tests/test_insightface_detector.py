"""The insightface detector through insightface's own model zoo, on an ONNX file written at test time.

The file has the interface of buffalo_l's SCRFD ``det_10g.onnx``: input ``input.1`` of shape 1x3xHxW (H, W
dynamic); 9 outputs in insightface's order (scores at strides 8, 16, 32, then box distances, then 5 keypoints),
one row per anchor, 2 anchors per location. Its weights are random, so detections are garbage; the biases put
each anchor's box 2 strides around it and its keypoints on the ArcFace template, so the decoding by strides,
the keypoints and the crops can be checked.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from abaw_ce.data.packed import PackedFaces, read_index
from abaw_ce.faces import (DetectorUnavailable, InsightFaceDetector, OpenCVDetector, arcface_template,
                           make_detector, process_video, run_faces)
from abaw_ce.faces.detectors import DEFAULT_INSIGHTFACE_DIR, INSIGHTFACE_DIR_ENV
from abaw_ce.labels import CEXPR_AUS
from abaw_ce.synth.face import MARGIN, Identity, composite, render_face

STRIDES = (8, 16, 32)
BOX_HALF_SIZE = 2.0  # box distances (left, top, right, bottom) in strides, before the small random part
FACE_SPAN = 3.0  # the template's 112 px span, in strides
SCORE, BOX, KEYPOINTS = 1, 4, 10  # values per anchor in the score, box and keypoint outputs
INPUT_SIZE = (160, 160)  # insightface's (width, height) for these tests: small, so a run takes milliseconds


def _bias(kind: int, width: int) -> np.ndarray:
    """Per-anchor bias: boxes BOX_HALF_SIZE strides around the anchor, keypoints on the template, scores 0."""
    if (kind, width) == (1, BOX):
        return np.full(BOX, BOX_HALF_SIZE)
    if (kind, width) == (2, KEYPOINTS):
        return (arcface_template(112) / 112 - 0.5).reshape(-1) * FACE_SPAN
    return np.zeros(width)


def _head(out_name: str, stride: int, weight: np.ndarray, bias: np.ndarray, batched: bool,
          sigmoid: bool) -> tuple[list, list]:
    """One SCRFD output: a stride x stride conv over the image, reshaped to one row per anchor."""
    width = len(bias)
    tensors = [numpy_helper.from_array(weight.astype(np.float32), f"{out_name}.w"),
               numpy_helper.from_array(np.tile(bias, len(weight) // width).astype(np.float32), f"{out_name}.b"),
               numpy_helper.from_array(np.array([1, -1, width] if batched else [-1, width], np.int64),
                                       f"{out_name}.shape")]
    rows = f"{out_name}.logit" if sigmoid else out_name
    nodes = [helper.make_node("Conv", ["input.1", f"{out_name}.w", f"{out_name}.b"], [f"{out_name}.conv"],
                              kernel_shape=[stride, stride], strides=[stride, stride]),
             # (1, anchors * width, h, w) -> rows ordered by location, then anchor, as insightface decodes them
             helper.make_node("Transpose", [f"{out_name}.conv"], [f"{out_name}.hwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", [f"{out_name}.hwc", f"{out_name}.shape"], [rows])]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", [rows], [out_name]))
    return nodes, tensors


def write_scrfd_like_model(path: Path, strides: tuple[int, ...] = STRIDES, anchors: int = 2,
                           widths: tuple[int, ...] = (SCORE, BOX, KEYPOINTS), batched: bool = False,
                           seed: int = 0) -> Path:
    """An ONNX detector with det_10g.onnx's input and outputs (by default) and random weights."""
    rng = np.random.default_rng(seed)
    nodes, tensors, outputs = [], [], []
    for kind, width in enumerate(widths):
        for stride in strides:
            name = f"out{kind}_s{stride}"
            fan_in = 3 * stride * stride
            # Scores vary with the picture; boxes and keypoints stay within a few hundredths of their biases.
            spread = (1.0 if kind == 0 else 0.01) / np.sqrt(fan_in)
            weight = rng.normal(0, spread, (anchors * width, 3, stride, stride))
            head_nodes, head_tensors = _head(name, stride, weight, _bias(kind, width), batched, sigmoid=kind == 0)
            nodes += head_nodes
            tensors += head_tensors
            rows = [1, "rows", width] if batched else ["rows", width]
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, rows))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])
    graph = helper.make_graph(nodes, "scrfd_like", [image], outputs, tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_recognition_like_model(path: Path) -> Path:
    """An ArcFace-shaped ONNX file (1x3x112x112 in, one embedding out): a model, but no detector."""
    weight = numpy_helper.from_array(np.zeros((8, 3, 112, 112), np.float32), "w")
    node = helper.make_node("Conv", ["input.1", "w"], ["embedding"], kernel_shape=[112, 112])
    graph = helper.make_graph([node], "arcface_like",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 8, 1, 1])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def _face_frames(count: int = 6) -> list[np.ndarray]:
    """A rendered face (abaw_ce.synth) drifting right across a 160x120 grey backdrop."""
    render = render_face(Identity.random(np.random.default_rng(0)), np.zeros(len(CEXPR_AUS), np.float32), unit=80)
    centre = render.unit * (0.5 + MARGIN)
    backdrop = np.full((120, 160, 3), 100, np.uint8)
    return [composite(render, backdrop, np.float32([[1, 0, 70 + 3 * k - centre], [0, 1, 60 - centre]]))
            for k in range(count)]


def _write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _detector(model_dir: Path) -> InsightFaceDetector:
    return make_detector("insightface", model_dir=model_dir, ctx_id=-1, input_size=INPUT_SIZE, det_thresh=0.3)


@pytest.fixture(scope="module")
def buffalo_l(tmp_path_factory) -> Path:
    """A folder laid out like ~/.insightface/models/buffalo_l, holding the stand-in det_10g.onnx."""
    folder = tmp_path_factory.mktemp("insightface") / "models" / "buffalo_l"
    write_scrfd_like_model(folder / "det_10g.onnx")
    return folder


# --- loading through insightface's model zoo -------------------------------------------------------------

def test_insightface_model_zoo_takes_the_file_for_scrfd(buffalo_l):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.scrfd import SCRFD

    model = get_model(str(buffalo_l / "det_10g.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(model, SCRFD)
    assert (model.input_name, model.fmc, list(model._feat_stride_fpn)) == ("input.1", 3, list(STRIDES))
    assert model._num_anchors == 2 and model.use_kps


def test_the_default_location_is_found_under_home(buffalo_l, tmp_path, monkeypatch):
    """A user with ~/.insightface/models/buffalo_l gets insightface from "auto" (HOME moved, the real one untouched)."""
    home_models = tmp_path / Path(DEFAULT_INSIGHTFACE_DIR).relative_to("~")
    home_models.mkdir(parents=True)
    (home_models / "det_10g.onnx").write_bytes((buffalo_l / "det_10g.onnx").read_bytes())
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(INSIGHTFACE_DIR_ENV, raising=False)
    detector = make_detector("auto", ctx_id=-1, input_size=INPUT_SIZE)
    assert isinstance(detector, InsightFaceDetector)
    assert detector.model_path == home_models / "det_10g.onnx"


# --- detections, keypoints and crops ---------------------------------------------------------------------

@pytest.mark.parametrize("batched", [False, True], ids=["rows", "batch_rows"])
def test_detections_follow_the_strides_and_keypoints(tmp_path, batched):
    detector = _detector(write_scrfd_like_model(tmp_path / "det_10g.onnx", batched=batched).parent)
    frame = _face_frames(1)[0]  # 160x120 into a 160x160 input: insightface's scale is 1
    detections = detector.detect(frame)
    assert detections
    for detection in detections:
        # Each box spans 2 x BOX_HALF_SIZE strides of the stride whose anchor made it.
        stride = min(STRIDES, key=lambda s: abs(detection.width - 2 * BOX_HALF_SIZE * s))
        assert detection.width == pytest.approx(2 * BOX_HALF_SIZE * stride, rel=0.1)
        assert detection.height == pytest.approx(2 * BOX_HALF_SIZE * stride, rel=0.1)
        # The keypoints are the template around the box centre: left eye image-left, mouth below the eyes.
        expected = np.array(detection.center) + (arcface_template(112) / 112 - 0.5) * FACE_SPAN * stride
        assert detection.landmarks.shape == (5, 2) and detection.landmarks.dtype == np.float32
        assert np.abs(detection.landmarks - expected).max() < 0.1 * stride
        assert 0.3 <= detection.score <= 1.0


def test_process_video_with_the_model(tmp_path, buffalo_l):
    video = _write_video(tmp_path / "clip.mp4", _face_frames())
    results = list(process_video(video, _detector(buffalo_l), size=112))
    assert [r.frame for r in results] == list(range(1, 7))
    assert all(r.face_found and r.crop.shape == (112, 112, 3) for r in results)
    assert all(r.landmarks.shape == (5, 2) for r in results)


def test_run_faces_with_the_insightface_detector(tmp_path, buffalo_l, monkeypatch):
    inputs = tmp_path / "in"
    _write_video(inputs / "clip.mp4", _face_frames())
    monkeypatch.setenv(INSIGHTFACE_DIR_ENV, str(buffalo_l))  # as a user would point the kit at a model folder
    report = run_faces(inputs, tmp_path / "out", detector="insightface", size=112, progress=False,
                       detector_options={"ctx_id": -1, "input_size": INPUT_SIZE, "det_thresh": 0.3})
    (record,) = report.files
    assert (record.status, record.frames, record.faces_found) == ("ok", 6, 6)
    assert report.detector.startswith("insightface:det_10g.onnx:") and "input=160x160" in report.detector
    assert pd.read_csv(tmp_path / "out" / "frames.csv")["face_found"].tolist() == [1] * 6
    crops = PackedFaces(tmp_path / "out" / "crops")
    assert len(crops) == 6 and tuple(crops[0].shape) == (3, 112, 112)
    assert read_index(tmp_path / "out" / "crops")["key"].tolist() == [f"clip/{k:05d}" for k in range(1, 7)]


# --- files that are not SCRFD detectors --------------------------------------------------------------------

def _unavailable(model_file: Path) -> str:
    with pytest.raises(DetectorUnavailable) as caught:
        _detector(model_file.parent)
    message = str(caught.value)
    assert str(model_file) in message
    return message


def test_a_damaged_file_is_named(tmp_path):
    model = tmp_path / "det_10g.onnx"
    model.write_bytes(b"not an onnx file" * 10)
    assert "cannot load" in _unavailable(model)


def test_a_recognition_model_is_not_taken_for_a_detector(tmp_path):
    assert "not a face detection model" in _unavailable(write_recognition_like_model(tmp_path / "det_10g.onnx"))


def test_an_output_count_insightface_cannot_decode_is_named(tmp_path):
    model = write_scrfd_like_model(tmp_path / "det_10g.onnx", strides=(8, 16, 32, 64), widths=(SCORE, BOX))
    message = _unavailable(model)
    assert "8 outputs" in message and "6, 9, 10 or 15" in message


@pytest.mark.parametrize("wrong", [{"anchors": 1}, {"widths": (SCORE, BOX, 8)}], ids=["one_anchor", "4_keypoints"])
def test_outputs_of_the_wrong_shape_are_named(tmp_path, wrong):
    message = _unavailable(write_scrfd_like_model(tmp_path / "det_10g.onnx", **wrong))
    assert "expected (" in message and "stride" in message


def test_auto_falls_back_to_opencv_with_a_warning_when_the_model_is_unusable(tmp_path, caplog):
    (tmp_path / "det_10g.onnx").write_bytes(b"not an onnx file")
    with caplog.at_level("WARNING", logger="abaw_ce.faces.detectors"):
        detector = make_detector("auto", model_dir=tmp_path, ctx_id=-1)
    assert isinstance(detector, OpenCVDetector)
    assert str(tmp_path / "det_10g.onnx") in caplog.text

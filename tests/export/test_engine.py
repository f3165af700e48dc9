"""ONNX → TensorRT engine: what can be checked without TensorRT, and the build where it exists."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from export.engine import (
    EngineError,
    build_engine,
    calibration_batches,
    check_profile,
    onnx_io_specs,
    parse_profile,
    write_sidecar,
)
from export.rw_graph import build_rw_model
from psa_infer.backends import BackendError, EngineInfo, sidecar_path
from psa_infer.bundle import BundleError
from psa_infer.cam import normalize_image

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
PROFILE = "image:1x3x256x256,1x3x512x512,1x3x1024x1024"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def net_onnx(tmp_path):
    """A tiny image network: ``image`` (B, 3, H, W) → ``cams`` (B, 2, H, W) by a 1×1 conv."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 1, 1], np.ones(6, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["cams"], name="conv")],
        "net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, "H", "W"])],
        [helper.make_tensor_value_info("cams", TensorProto.FLOAT, ["B", 2, "H", "W"])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "cam.onnx"
    onnx.save(model, path)
    return path


def write_images(folder, n=5, size=(40, 30)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"im{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


# ---------------------------------------------------------------------------- profile


def test_parse_profile():
    assert parse_profile(PROFILE) == {
        "image": ((1, 3, 256, 256), (1, 3, 512, 512), (1, 3, 1024, 1024))
    }
    two = parse_profile(["scores:1x8x8,3x56x56,21x128x128", "features:448x8x8,448x56x56,448x8x9"])
    assert list(two) == ["scores", "features"]
    assert parse_profile("a:1,2,3; b:4,5,6") == {"a": ((1,), (2,), (3,)), "b": ((4,), (5,), (6,))}


@pytest.mark.parametrize(
    "spec",
    ["image", "image:1x3x256x256,1x3x512x512", ":1,2,3", "image:1x3,1xx3,1x3", "image:1,2,-3"],
)
def test_parse_profile_rejects(spec):
    with pytest.raises(EngineError, match=r"^profile: expected 'name:MIN,OPT,MAX' with shapes"):
        parse_profile(spec)


def test_onnx_io_specs_keep_dimension_names():
    inputs, outputs = onnx_io_specs(build_rw_model(radius=2, steps=1))
    assert inputs == [
        {"name": "scores", "dtype": "float32", "shape": ["C", "h", "w"]},
        {"name": "features", "dtype": "float32", "shape": ["D", "h", "w"]},
    ]
    assert outputs == [{"name": "walked", "dtype": "float32", "shape": ["C", "h", "w"]}]


def test_check_profile(net_onnx):
    inputs, _ = onnx_io_specs(onnx.load(net_onnx))
    assert check_profile(inputs, parse_profile(PROFILE))["image"][2] == (1, 3, 1024, 1024)
    with pytest.raises(EngineError, match=r"^profile: unknown input 'img' \(inputs: image\)$"):
        check_profile(inputs, parse_profile("img:1,1,1"))
    with pytest.raises(EngineError, match=r"^image: dynamic shape \(B, 3, H, W\) needs a profile"):
        check_profile(inputs, {})
    message = r"^image: expected min <= opt <= max shapes matching \(B, 3, H, W\), got "
    with pytest.raises(EngineError, match=message + "1x4x8x8, 1x4x8x8, 1x4x8x8$"):
        check_profile(inputs, parse_profile("image:1x4x8x8,1x4x8x8,1x4x8x8"))  # 4 channels
    with pytest.raises(EngineError, match=message + "1x3x64x64, 1x3x32x32, 1x3x128x128$"):
        check_profile(inputs, parse_profile("image:1x3x64x64,1x3x32x32,1x3x128x128"))
    with pytest.raises(EngineError, match=message + "1x3x64, 1x3x64, 1x3x64$"):
        check_profile(inputs, parse_profile("image:1x3x64,1x3x64,1x3x64"))
    # a static input needs no profile: its own shape is one
    static = [{"name": "x", "dtype": "float32", "shape": [1, 3, 8, 8]}]
    assert check_profile(static, {}) == {"x": ((1, 3, 8, 8),) * 3}


# ---------------------------------------------------------------------------- arguments


def test_build_engine_checks_its_arguments_before_tensorrt(tmp_path, net_onnx):
    out = tmp_path / "cam.engine"
    with pytest.raises(EngineError, match=r"missing.onnx: no such ONNX file$"):
        build_engine(tmp_path / "missing.onnx", out, profile=PROFILE)
    with pytest.raises(
        ValueError, match=r"^precision: expected one of fp32, fp16, int8, got 'bf16'$"
    ):
        build_engine(net_onnx, out, precision="bf16", profile=PROFILE)
    with pytest.raises(ValueError, match=r"^workspace_gb: expected a number > 0, got 0$"):
        build_engine(net_onnx, out, workspace_gb=0, profile=PROFILE)
    with pytest.raises(ValueError, match=r"^calib_dir: int8 needs a folder of calibration images"):
        build_engine(net_onnx, out, precision="int8", profile=PROFILE, mean=MEAN, std=STD)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match=r"empty: no .jpg/.jpeg/.png/.bmp images to calibrate on"):
        build_engine(net_onnx, out, "int8", tmp_path / "empty", PROFILE, mean=MEAN, std=STD)
    calib = write_images(tmp_path / "calib")
    with pytest.raises(ValueError, match=r"^int8: expected 3 mean and 3 std values, got mean=None"):
        build_engine(net_onnx, out, "int8", calib, PROFILE)
    with pytest.raises(EngineError, match=r"^image: dynamic shape \(B, 3, H, W\) needs a profile"):
        build_engine(net_onnx, out)
    rw = tmp_path / "rw.onnx"
    onnx.save(build_rw_model(radius=2, steps=1), rw)
    message = r"^int8: calibration feeds images, .* rw.onnx has the inputs scores, features$"
    with pytest.raises(EngineError, match=message):
        build_engine(rw, out, "int8", calib, "scores:1x1x1,1x1x1,1x1x1;features:1x1x1,1x1x1,1x1x1",
                     mean=MEAN, std=STD)  # fmt: skip
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(net_onnx.read_bytes()[:-9])
    with pytest.raises(BundleError, match=r"corrupt.onnx: not a readable ONNX model \(.*\)$"):
        build_engine(corrupt, out, profile=PROFILE)
    assert not out.exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message where TensorRT is absent")
def test_build_engine_without_tensorrt_says_how_to_install(tmp_path, net_onnx):
    message = r"^tensorrt is not installed: pip install 'psa-affinity\[trt\]'"
    with pytest.raises(BackendError, match=message):
        build_engine(net_onnx, tmp_path / "cam.engine", profile=PROFILE)


# ---------------------------------------------------------------------------- calibration


def test_calibration_batches(tmp_path):
    calib = write_images(tmp_path / "calib", n=5, size=(40, 30))
    batches = list(calibration_batches(calib, (2, 3, 16, 24), MEAN, STD))
    assert [b.shape for b in batches] == [(2, 3, 16, 24)] * 2  # the 5th image is dropped
    assert all(b.dtype == np.float32 for b in batches)
    with Image.open(calib / "im2.png") as im:
        first = np.asarray(im.convert("RGB").resize((24, 16), Image.BICUBIC))
    np.testing.assert_array_equal(batches[1][0], normalize_image(first, MEAN, STD))


# ---------------------------------------------------------------------------- sidecar


def test_sidecar_written_and_read_back(tmp_path):
    info = EngineInfo(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        precision="int8",
        onnx_sha256="0" * 64,
        profile={"image": [[1, 3, 256, 256], [1, 3, 512, 512], [1, 3, 1024, 1024]]},
        inputs=[{"name": "image", "dtype": "float32", "shape": ["B", 3, "H", "W"]}],
    )
    path = write_sidecar(tmp_path / "cam.engine", info)
    assert path == sidecar_path(tmp_path / "cam.engine") == tmp_path / "cam.engine.json"
    assert json.loads(path.read_text())["gpu_name"] == "Orin"
    assert EngineInfo.read(path) == info


# ---------------------------------------------------------------------------- TensorRT


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_engine_writes_engine_and_sidecar(tmp_path, net_onnx, precision):
    pytest.importorskip("tensorrt")
    import hashlib

    from psa_infer.backends import TensorRTBackend

    calib = write_images(tmp_path / "calib", n=4) if precision == "int8" else None
    cache = tmp_path / "timing.cache"
    engine = build_engine(
        net_onnx, tmp_path / "cam.engine", precision, calib,
        "image:1x3x16x16,2x3x32x32,2x3x64x64", timing_cache=cache, mean=MEAN, std=STD,
    )  # fmt: skip
    assert engine.is_file() and cache.is_file()
    info = EngineInfo.read(sidecar_path(engine))
    assert info.precision == precision
    assert info.onnx_sha256 == hashlib.sha256(net_onnx.read_bytes()).hexdigest()
    assert info.profile["image"] == [[1, 3, 16, 16], [2, 3, 32, 32], [2, 3, 64, 64]]
    x = np.random.default_rng(0).random((2, 3, 20, 24)).astype(np.float32)
    with TensorRTBackend(engine) as backend:
        got = backend.run({"image": x})["cams"]
    expected = np.repeat(x.sum(axis=1, keepdims=True), 2, axis=1)
    tol = {"fp32": 1e-4, "fp16": 1e-2, "int8": 0.1}[precision]
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)

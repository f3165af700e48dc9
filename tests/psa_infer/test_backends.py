"""Backends: dict of numpy arrays in, dict out; input checks; engine sidecar refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from psa_infer import backends
from psa_infer.backends import (
    BackendError,
    EngineInfo,
    OnnxRuntimeBackend,
    TensorRTBackend,
    TensorSpec,
    aff_forward_from,
    cam_forward_from,
    check_engine_compat,
    check_feed,
    choose_providers,
    classify_from,
    open_backend,
    sidecar_path,
    walk_from,
)
from psa_infer.pipeline import REFERENCE_WALK, walk_scores
from psa_infer.randomwalk import pair_affinity, random_walk

pytest.importorskip("onnxruntime")


def add_model_bytes() -> bytes:
    """z = x + 2·y on (n, 3) float32 — a graph small enough to check by hand."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [
        helper.make_node("Mul", ["y", "two"], ["y2"]),
        helper.make_node("Add", ["x", "y2"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "add", [x, y], [z], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def image_model_bytes(outputs: dict[str, list]) -> bytes:
    """``image`` (B, 3, H, W) → each named output, the image's mean over rows (a stand-in)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, "H", "W"])
    nodes, infos = [], []
    for name, shape in outputs.items():
        axes = [2, 3] if len(shape) == 2 else [2]
        nodes.append(helper.make_node("ReduceMean", ["image"], [name], axes=axes, keepdims=0))
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "net", [image], infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def add_backend():
    return OnnxRuntimeBackend(add_model_bytes(), threads=1)


@pytest.fixture(scope="module")
def rw_path(tmp_path_factory):
    from export.rw_graph import save_rw_model

    return save_rw_model(
        tmp_path_factory.mktemp("bundle") / "rw.onnx", radius=3, beta=8.0, steps=20, pairs="full"
    )


# ---------------------------------------------------------------------------- ONNX Runtime


def test_ort_backend_runs_and_describes(add_backend):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = np.ones((2, 3), np.float32)
    out = add_backend.run({"x": x, "y": y})
    assert list(out) == ["z"]
    np.testing.assert_array_equal(out["z"], x + 2)
    assert add_backend.inputs == (
        TensorSpec("x", np.dtype(np.float32), ("n", 3)),
        TensorSpec("y", np.dtype(np.float32), ("n", 3)),
    )
    assert add_backend.outputs[0].describe() == "float32 of shape (n, 3)"
    assert add_backend.provider == "CPUExecutionProvider"  # no GPU provider here


def test_threads_default_to_the_cpu_count(rw_path):
    backend = OnnxRuntimeBackend(rw_path)
    assert backend.session.get_session_options().intra_op_num_threads == os.cpu_count()
    assert backend.name == "rw.onnx"


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        ({"x": np.zeros((2, 3)), "y": np.zeros((2, 3), np.float32)},
         r"^x: expected float32 of shape \(n, 3\), got float64 \(2, 3\)$"),
        ({"x": np.zeros((2, 4), np.float32), "y": np.zeros((2, 3), np.float32)},
         r"^x: expected float32 of shape \(n, 3\), got float32 \(2, 4\)$"),
        ({"x": [[0.0, 0.0, 0.0]], "y": np.zeros((1, 3), np.float32)},
         r"^x: expected float32 of shape \(n, 3\), got list$"),
        ({"x": np.zeros((2, 3), np.float32)},
         r"^missing input 'y': expected float32 of shape \(n, 3\)$"),
        ({"x": np.zeros((2, 3), np.float32), "y": np.zeros((2, 3), np.float32), "w": 1},
         r"^unknown input 'w': expected x, y$"),
        ({"x": np.zeros((2, 3), np.float32), "y": np.zeros((5, 3), np.float32)},
         r"^y: expected float32 of shape \(n, 3\) with n = 2 as in x, got float32 \(5, 3\)$"),
    ],
)  # fmt: skip
def test_input_checks_name_the_tensor(add_backend, feed, message):
    with pytest.raises(ValueError, match=message):
        add_backend.run(feed)


def test_rw_backend_checks_and_walks(rw_path):
    backend = open_backend(rw_path, threads=1)
    assert isinstance(backend, OnnxRuntimeBackend)
    rng = np.random.default_rng(0)
    with pytest.raises(
        ValueError, match=r"^features: expected float32 of shape \(D, h, w\), got float64 \(3, 4\)$"
    ):
        backend.run({"scores": np.zeros((2, 3, 4), np.float32), "features": np.zeros((3, 4))})
    scores = rng.random((3, 8, 11)).astype(np.float32)
    features = (0.3 * rng.standard_normal((5, 8, 11))).astype(np.float32)
    walked = walk_from(backend)(scores, features)
    expected = random_walk(scores, pair_affinity(features, 3), beta=8.0, steps=20, radius=3)
    np.testing.assert_allclose(walked, expected, rtol=0, atol=1e-5)  # as tests/export
    # ... and as the pipeline's walk (pooled scores + features → upsampled walked scores)
    cams = rng.random((2, 60, 85)).astype(np.float32)
    feats = (0.3 * rng.standard_normal((5, 8, 11))).astype(np.float32)
    params = replace(REFERENCE_WALK, steps=20, radius=3)
    np.testing.assert_allclose(
        walk_scores(cams, feats, params, walk=walk_from(backend)),
        walk_scores(cams, feats, params),
        rtol=0,
        atol=1e-5,
    )


def test_network_helpers(tmp_path):
    cam = OnnxRuntimeBackend(
        image_model_bytes({"cams": ["B", 3, "W"], "logits": ["B", 3]}), threads=1
    )
    aff = OnnxRuntimeBackend(image_model_bytes({"features": ["B", 3, "W"]}), threads=1)
    x = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(cam_forward_from(cam)(x), x.mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(classify_from(cam)(x), x.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(aff_forward_from(aff)(x), x.mean(axis=2), rtol=1e-6)
    with pytest.raises(ValueError, match=r"^backend has no output 'cams' \(outputs: features\)$"):
        cam_forward_from(aff)


def test_provider_choice():
    avail = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", avail) == avail
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    everything = ["CPUExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert choose_providers("auto", everything) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert choose_providers(["CPUExecutionProvider"], avail) == ["CPUExecutionProvider"]
    with pytest.raises(BackendError, match=r"^providers: TensorrtExecutionProvider not available"):
        choose_providers(["TensorrtExecutionProvider"], avail)
    with pytest.raises(ValueError, match=r"^providers: expected 'auto' or a list"):
        choose_providers("cuda", avail)


def test_missing_onnxruntime_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    message = r"^onnxruntime is not installed: pip install 'psa-affinity\[cpu\]' \(or 'psa-aff"
    with pytest.raises(BackendError, match=message):
        OnnxRuntimeBackend(add_model_bytes())


class FakeSession:
    """Stands in for onnxruntime.InferenceSession where a provider is absent: it records the
    providers it was asked for and runs the model on the CPU provider."""

    asked: list = []
    real = None  # onnxruntime's own, kept by the test that patches it

    def __new__(cls, model, options, providers):
        cls.asked.append(providers)
        return cls.real(model, options, providers=["CPUExecutionProvider"])


def test_provider_options_reach_the_providers_used(tmp_path, monkeypatch):
    import onnxruntime

    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: everything)
    monkeypatch.setattr(FakeSession, "real", onnxruntime.InferenceSession)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    FakeSession.asked = []
    cache = tmp_path / "bundle" / "ort_trt_cache"
    options = {
        "TensorrtExecutionProvider": {"trt_engine_cache_path": str(cache), "device_id": 1},
        "CUDAExecutionProvider": {"device_id": 1},
    }
    OnnxRuntimeBackend(add_model_bytes(), "auto", provider_options=options)
    assert FakeSession.asked[-1] == [
        ("TensorrtExecutionProvider", options["TensorrtExecutionProvider"]),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert cache.is_dir()  # the TensorRT provider's engine cache, made ready for it
    # providers that are not used get no options, and no cache folder is made for them
    cache.rmdir()
    OnnxRuntimeBackend(add_model_bytes(), ["CUDAExecutionProvider"], provider_options=options)
    assert FakeSession.asked[-1] == [("CUDAExecutionProvider", {"device_id": 1})]
    assert not cache.exists()


def test_bad_files(tmp_path):
    with pytest.raises(BackendError, match=r"nope.onnx: no such ONNX file$"):
        OnnxRuntimeBackend(tmp_path / "nope.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(BackendError, match=r"junk.onnx: onnxruntime cannot load it: ") as e:
        OnnxRuntimeBackend(tmp_path / "junk.onnx")
    assert str(e.value).startswith(str(tmp_path)) and "\n" not in str(e.value)  # the full path
    with pytest.raises(BackendError, match=r"model.pt: expected a .onnx, .engine or .plan file$"):
        open_backend(tmp_path / "model.pt")
    with pytest.raises(BackendError, match=r"model.engine: no such TensorRT engine$"):
        open_backend(tmp_path / "model.engine")
    # an engine without its sidecar is refused before TensorRT is even imported
    (tmp_path / "model.plan").write_bytes(b"\0")
    with pytest.raises(BackendError, match=r"^model.plan: no model.plan.json beside it"):
        open_backend(tmp_path / "model.plan")


def test_unsupported_tensor_type_names_the_file(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.STRING, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, ["n"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "s", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "strings.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(BackendError, match=r"^strings.onnx: x: unsupported tensor type tensor\(st"):
        OnnxRuntimeBackend(tmp_path / "strings.onnx")


# ---------------------------------------------------------------------------- engine sidecar


def info(**overrides) -> EngineInfo:
    fields = dict(tensorrt_version="10.3.0", gpu_name="NVIDIA A100", precision="fp16",
                  onnx_sha256="ab" * 32, profile={"image": [[1, 3, 64, 64]] * 3})  # fmt: skip
    return EngineInfo(**{**fields, **overrides})


def test_sidecar_round_trip(tmp_path):
    path = sidecar_path(tmp_path / "cam.engine")
    assert path.name == "cam.engine.json"
    path.write_text(info().to_json())
    assert EngineInfo.read(path) == info()


def test_sidecar_with_missing_or_unknown_keys_is_refused(tmp_path):
    path = tmp_path / "cam.engine.json"
    path.write_text('{"tensorrt_version": "10.3.0", "gpu_name": "Orin"}')
    with pytest.raises(BackendError, match=r"cam.engine.json: expected the keys \['gpu_name', "):
        EngineInfo.read(path)
    path.write_text(info().to_json().replace('"precision"', '"dtype": 1, "precision"'))
    with pytest.raises(BackendError, match=r"cam.engine.json: expected the keys .* got \['dtype'"):
        EngineInfo.read(path)
    path.write_text(info().to_json().replace('"NVIDIA A100"', "3"))
    message = r"cam.engine.json: 'gpu_name': expected a string, got 3$"
    with pytest.raises(BackendError, match=message):
        EngineInfo.read(path)
    for damaged in (info().to_json()[:50].encode(), b"\xff\xfe\x00garbage"):
        path.write_bytes(damaged)  # truncated; not text at all
        with pytest.raises(BackendError, match=r"engine.json: cannot read the engine's sidecar \("):
            EngineInfo.read(path)


def test_engine_for_another_tensorrt_or_gpu_is_refused():
    check_engine_compat("model.engine", info(), "10.3.0", "NVIDIA A100")  # same: fine
    message = (
        r"^model.engine: built with TensorRT 10.3.0 on 'NVIDIA A100', this is TensorRT 10.7.0 "
        r"on 'Orin' — rebuild it with psa build-engine$"
    )
    with pytest.raises(BackendError, match=message):
        check_engine_compat("model.engine", info(), "10.7.0", "Orin")
    with pytest.raises(BackendError, match=r"this is TensorRT 10.3.0 on 'NVIDIA H100'"):
        check_engine_compat("model.engine", info(), "10.3.0", "NVIDIA H100")


def test_input_outside_an_engines_profile_is_named_in_image_pixels():
    # The refusal itself needs TensorRT; its wording is made from the sidecar alone.
    engine = object.__new__(TensorRTBackend)
    engine.name, engine.info = "cam.engine", info(image_sides=[32, 448, 512])
    message = engine._outside_profile(
        "image", (2, 3, 1200, 900), (1, 3, 16, 16), (2, 3, 1024, 1024)
    )
    assert message == (
        "cam.engine: image: shape (2, 3, 1200, 900) is outside the engine's optimisation profile "
        "(min (1, 3, 16, 16), max (2, 3, 1024, 1024)), built for images of 32 to 512 pixels a "
        "side (psa build-engine --profile 32,448,512) — rebuild it with a wider psa build-engine "
        "--profile MIN,OPT,MAX (image sides in pixels)"
    )
    engine.info = info()
    assert "built for tensor shapes only" in engine._outside_profile("image", (1,), (1,), (1,))


def test_check_feed_on_static_and_vector_specs():
    specs = [TensorSpec("v", np.dtype(np.int64), (4,))]
    check_feed(specs, {"v": np.zeros(4, np.int64)})
    with pytest.raises(ValueError, match=r"^v: expected int64 of shape \(4,\), got int64 \(5,\)$"):
        check_feed(specs, {"v": np.zeros(5, np.int64)})


# ---------------------------------------------------------------------------- TensorRT


@pytest.mark.tensorrt
def test_tensorrt_backend_matches_onnxruntime(tmp_path, rw_path):
    pytest.importorskip("tensorrt")
    from export.engine import build_engine

    engine = build_engine(
        rw_path,
        tmp_path / "rw.engine",
        profile="scores:1x4x4,3x16x16,21x64x64;features:5x4x4,5x16x16,5x64x64",
    )
    rng = np.random.default_rng(0)
    feed = {
        "scores": rng.random((3, 9, 12)).astype(np.float32),
        "features": (0.3 * rng.standard_normal((5, 9, 12))).astype(np.float32),
    }
    with TensorRTBackend(engine) as trt_backend:
        assert [s.name for s in trt_backend.inputs] == ["scores", "features"]
        got = trt_backend.run(feed)["walked"]
        with pytest.raises(BackendError, match=r"^rw.engine: scores: shape \(3, 2, 2\) is outside"):
            trt_backend.run(
                {"scores": feed["scores"][:, :2, :2], "features": feed["features"][:, :2, :2]}
            )
    expected = OnnxRuntimeBackend(rw_path).run(feed)["walked"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)  # FP32 engine (DESIGN: ~1e-3)


def test_backends_import_their_runtimes_lazily():
    code = (
        "import sys, psa_infer.backends\n"
        "heavy = {'onnxruntime', 'tensorrt', 'cuda', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    root = Path(backends.__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

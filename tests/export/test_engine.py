"""ONNX → TensorRT engines: what can be checked without TensorRT, the build against a recording
stand-in of TensorRT's Python API (no GPU here), and the real build where TensorRT exists."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import types

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from cli import main
from export import engine as engine_mod
from export.engine import (
    EngineError,
    build_bundle_engines,
    build_engine,
    bundle_builds,
    check_profile,
    onnx_io_specs,
    parse_profile,
    write_sidecar,
)
from export.rw_graph import build_rw_model
from psa_infer import backends
from psa_infer.backends import BackendError, EngineInfo, import_tensorrt, sidecar_path
from psa_infer.bundle import BundleError, load_meta
from psa_infer.profiles import DEFAULT_SIDES, ProfileError, engine_profiles
from tests.psa_infer.test_bundle import run_without_torch

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
PROFILE = "image:1x3x256x256,1x3x512x512,1x3x1024x1024"


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


# ---------------------------------------------------------------------------- a fake TensorRT


class FakeTensorRT(types.ModuleType):
    """The parts of TensorRT 10.3+/11's Python API that build_engine uses, recording each call.

    ``strongly_typed=False`` leaves out NetworkDefinitionCreationFlag.STRONGLY_TYPED, as a
    TensorRT after 11 might; ``parse_errors`` makes the parser refuse the file. It has no
    BuilderFlag.FP16/INT8 and no calibrator classes, as TensorRT 11 has none: using them fails.
    """

    def __init__(self, version="11.0.0", strongly_typed=True, parse_errors=(), plan=b"PLAN"):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        fake = self

        class Logger:
            WARNING = "warning"

            def __init__(self, level):
                pass

        flags = {"STRONGLY_TYPED": 0} if strongly_typed else {}
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
        self.BuilderFlag = types.SimpleNamespace(TF32="TF32")  # kept in TensorRT 11
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        self.Logger = Logger

        class Error:
            def __init__(self, node, desc):
                self.node, self.desc = (lambda: node), (lambda: desc)

        class OnnxParser:
            def __init__(self, network, logger):
                self.num_errors = len(parse_errors)

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                return not parse_errors

            def get_error(self, i):
                return Error(*parse_errors[i])

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"cache:" + self.data

        class Config:
            def __init__(self):
                self.cache = None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("pool", pool, size))

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_profile",))

            def clear_flag(self, flag):
                fake.calls.append(("clear_flag", flag))

            def create_timing_cache(self, data):
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("timing_cache", cache.data, ignore_mismatch))
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build",))
                return plan

        self.OnnxParser, self.Builder = OnnxParser, Builder


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a FakeTensorRT (and a GPU called 'FakeGPU'); returns a function to replace it."""

    def install(**kwargs) -> FakeTensorRT:
        trt = FakeTensorRT(**kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    monkeypatch.setattr(engine_mod, "import_cudart", lambda: None)
    monkeypatch.setattr(engine_mod, "gpu_name", lambda cudart: "FakeGPU")
    return install


def test_build_is_strongly_typed_with_no_precision_flags(tmp_path, net_onnx, fake_trt):
    trt = fake_trt()
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    engine = build_engine(
        net_onnx, tmp_path / "e" / "cam.engine", "image:1x3x16x16,2x3x32x32,2x3x64x64",
        precision="fp16", timing_cache=cache, workspace_gb=0.5, image_sides=(16, 32, 64),
    )  # fmt: skip
    calls = trt.calls
    assert ("create_network", 1 << 0) in calls  # 1 << STRONGLY_TYPED
    assert ("set_shape", "image", (1, 3, 16, 16), (2, 3, 32, 32), (2, 3, 64, 64)) in calls
    assert ("pool", "workspace", 1 << 29) in calls
    # precision is the graph's: no builder flag is set, TF32 stays as TensorRT has it for fp16
    assert not [c for c in calls if c[0] in ("set_flag", "clear_flag")]
    assert ("timing_cache", b"old", False) in calls
    assert engine.read_bytes() == b"PLAN" and cache.read_bytes() == b"cache:old"
    info = EngineInfo.read(sidecar_path(engine))
    assert (info.tensorrt_version, info.gpu_name, info.precision) == ("11.0.0", "FakeGPU", "fp16")
    assert info.onnx_sha256 == hashlib.sha256(net_onnx.read_bytes()).hexdigest()
    assert info.onnx_file == "cam.onnx" and info.image_sides == [16, 32, 64]
    assert info.profile["image"] == [[1, 3, 16, 16], [2, 3, 32, 32], [2, 3, 64, 64]]
    assert info.inputs == [{"name": "image", "dtype": "float32", "shape": ["B", 3, "H", "W"]}]


def test_fp32_turns_tf32_off_and_a_later_tensorrt_needs_no_flag(tmp_path, net_onnx, fake_trt):
    trt = fake_trt(version="12.0.0", strongly_typed=False)
    build_engine(net_onnx, tmp_path / "cam.engine", PROFILE)
    assert ("create_network", 0) in trt.calls  # always strongly typed there
    assert ("clear_flag", "TF32") in trt.calls
    assert ("timing_cache", b"", False) in trt.calls  # no cache file: an empty cache


def test_parser_errors_and_failed_builds_are_one_line(tmp_path, net_onnx, fake_trt):
    fake_trt(parse_errors=[(0, "Unsupported op Foo"), (3, "bad shape")])
    message = r"cam.onnx: TensorRT cannot parse it: node 0: Unsupported op Foo; node 3: bad shape$"
    with pytest.raises(EngineError, match=message):
        build_engine(net_onnx, tmp_path / "cam.engine", PROFILE)
    fake_trt(plan=None)
    with pytest.raises(EngineError, match=r"cam.onnx: TensorRT failed to build an engine"):
        build_engine(net_onnx, tmp_path / "cam.engine", PROFILE)
    assert not (tmp_path / "cam.engine").exists()


@pytest.mark.parametrize("version", ["8.5.2.2", "10.2.0", "9.3.0"])
def test_tensorrt_older_than_10_3_is_one_line_naming_the_minimum(tmp_path, net_onnx, fake_trt,
                                                                 version):  # fmt: skip
    fake_trt(version=version)
    message = rf"^tensorrt {version} is too old: psa needs TensorRT >= 10.3 \(strongly typed"
    with pytest.raises(BackendError, match=message):
        build_engine(net_onnx, tmp_path / "cam.engine", PROFILE)
    assert not (tmp_path / "cam.engine").exists()


def test_supported_tensorrt_versions(monkeypatch):
    for version in ("10.3.0", "10.3.0.26", "10.15.1", "11.0.0", "11.4.1.2"):
        assert backends.tensorrt_version_ok(version), version
    for version in ("10.2.9", "8.6.1", "", "dev"):
        assert not backends.tensorrt_version_ok(version), version
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(version="10.3.0"))
    assert import_tensorrt().__version__ == "10.3.0"


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
    inputs, outputs = onnx_io_specs(build_rw_model(radius=2, beta=8.0, steps=1, pairs="full"))
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
        build_engine(tmp_path / "missing.onnx", out, PROFILE)
    with pytest.raises(ValueError, match=r"^precision: expected one of fp32, fp16, int8, got 'bf"):
        build_engine(net_onnx, out, PROFILE, precision="bf16")
    with pytest.raises(ValueError, match=r"^workspace_gb: expected a number > 0, got 0$"):
        build_engine(net_onnx, out, PROFILE, workspace_gb=0)
    with pytest.raises(EngineError, match=r"^image: dynamic shape \(B, 3, H, W\) needs a profile"):
        build_engine(net_onnx, out)
    with pytest.raises(ProfileError, match=r"^profile: expected image sides"):
        build_engine(net_onnx, out, PROFILE, image_sides=(64, 32, 16))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(net_onnx.read_bytes()[:-9])
    with pytest.raises(BundleError, match=r"corrupt.onnx: not a readable ONNX model \(.*\)$"):
        build_engine(corrupt, out, PROFILE)
    assert not out.exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message where TensorRT is absent")
def test_build_engine_without_tensorrt_says_how_to_install(tmp_path, net_onnx):
    message = r"^tensorrt is not installed: pip install 'psa-affinity\[trt\]' \(tensorrt, cuda"
    with pytest.raises(BackendError, match=message):
        build_engine(net_onnx, tmp_path / "cam.engine", PROFILE)


def test_sidecar_written_and_read_back(tmp_path):
    info = EngineInfo(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        precision="int8",
        onnx_sha256="0" * 64,
        profile={"image": [[1, 3, 256, 256], [1, 3, 512, 512], [1, 3, 1024, 1024]]},
        inputs=[{"name": "image", "dtype": "float32", "shape": ["B", 3, "H", "W"]}],
        onnx_file="cam.int8.onnx",
        image_sides=[32, 448, 1024],
    )
    path = write_sidecar(tmp_path / "cam.engine", info)
    assert path == sidecar_path(tmp_path / "cam.engine") == tmp_path / "cam.engine.json"
    assert json.loads(path.read_text())["gpu_name"] == "Orin"
    assert EngineInfo.read(path) == info


# ---------------------------------------------------------------------------- bundles


def with_fp16_variant(tiny_bundle, tmp_path):
    """A copy of the tiny bundle with an fp16 'variant' (the fp32 graphs under variant names:
    which file is picked is what these tests look at, not what it computes)."""
    b = shutil.copytree(tiny_bundle.bundle, tmp_path / "b")
    meta = json.loads((b / "meta.json").read_text())
    meta["precisions"] = {"fp16": {}}
    for name in ("cam", "aff"):
        shutil.copy(b / f"{name}.onnx", b / f"{name}.fp16.onnx")
        sha = hashlib.sha256((b / f"{name}.fp16.onnx").read_bytes()).hexdigest()
        meta["precisions"]["fp16"][name] = {"file": f"{name}.fp16.onnx", "sha256": sha}
    (b / "meta.json").write_text(json.dumps(meta))
    return b


def test_bundle_builds_pick_the_variant_files_and_profiles(tiny_bundle, tmp_path):
    b = with_fp16_variant(tiny_bundle, tmp_path)
    profiles = engine_profiles(load_meta(b), DEFAULT_SIDES)
    builds = bundle_builds(b, "fp16")
    assert [(o.name, e.name) for o, e, _ in builds] == [
        ("cam.fp16.onnx", "cam.fp16.engine"),
        ("aff.fp16.onnx", "aff.fp16.engine"),
        ("rw.onnx", "rw.engine"),  # the walk has no variant
    ]
    assert [p for _, _, p in builds] == [profiles["cam"], profiles["aff"], profiles["rw"]]
    fp32 = bundle_builds(b, "fp32", (32, 448, 512))
    assert [o.name for o, _, _ in fp32] == ["cam.onnx", "aff.onnx", "rw.onnx"]
    with pytest.raises(BundleError, match=r"no int8 graphs in this bundle \(it has fp32, fp16\)"):
        bundle_builds(b, "int8")
    with pytest.raises(ProfileError, match="MIN <= OPT <= MAX"):
        bundle_builds(b, "fp32", (64, 32, 512))


def test_build_bundle_engines_passes_files_profiles_and_sides(tiny_bundle, tmp_path, monkeypatch):
    b = with_fp16_variant(tiny_bundle, tmp_path)
    calls = {}

    def fake_build(onnx_path, engine_path, profile, **kwargs):
        calls[onnx_path.name] = (engine_path.name, profile, kwargs)
        return engine_path

    monkeypatch.setattr(engine_mod, "build_engine", fake_build)
    built = build_bundle_engines(b, "fp16", (32, 300, 600), timing_cache=tmp_path / "t")
    assert [p.name for p in built] == ["cam.fp16.engine", "aff.fp16.engine", "rw.engine"]
    profiles = engine_profiles(load_meta(b), (32, 300, 600))
    expected = [("cam.fp16.onnx", "cam", "fp16"), ("aff.fp16.onnx", "aff", "fp16")]
    for onnx_name, model, precision in [*expected, ("rw.onnx", "rw", "fp32")]:
        _, profile, kw = calls[onnx_name]
        assert profile == profiles[model] and kw["precision"] == precision
        assert kw["image_sides"] == (32, 300, 600) and kw["timing_cache"] == tmp_path / "t"


# ---------------------------------------------------------------------------- CLI


def test_cli_default_profile_is_the_library_default():
    option = next(p for p in main.commands["build-engine"].params if p.name == "sides")
    assert tuple(int(v) for v in option.default.split(",")) == DEFAULT_SIDES


def test_cli_build_engine_with_a_fake_tensorrt(tiny_bundle, tmp_path, fake_trt):
    b = with_fp16_variant(tiny_bundle, tmp_path)
    fake_trt(version="10.3.0")
    r = CliRunner().invoke(main, ["build-engine", str(b), "--precision", "fp16"])
    assert r.exit_code == 0, r.output
    assert [line.split("/")[-1] for line in r.output.splitlines()] == [
        "cam.fp16.engine", "aff.fp16.engine", "rw.engine",
    ]  # fmt: skip
    info = EngineInfo.read(b / "cam.fp16.engine.json")
    assert info.onnx_file == "cam.fp16.onnx" and info.image_sides == list(DEFAULT_SIDES)


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message where TensorRT is absent")
def test_cli_build_engine_needs_no_torch(tiny_bundle):
    # As on a Jetson with TensorRT but no PyTorch: everything up to TensorRT runs without
    # torch, and TensorRT's absence (this machine) is one line naming what to install.
    code = f"""
from cli import main
try:
    main(["build-engine", {str(tiny_bundle.bundle)!r}, "--profile", "32,256,512"])
except SystemExit as e:
    print("exit", e.code)
assert "torch" not in sys.modules, "torch was imported"
import export.engine, psa_infer.profiles
assert "torch" not in sys.modules, "torch was imported"
"""
    r = run_without_torch(code)
    assert r.stdout.strip() == "exit 1"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: tensorrt is not installed: pip install 'psa-affinity[trt]'")


# ---------------------------------------------------------------------------- TensorRT


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engine_writes_engine_and_sidecar(tmp_path, net_onnx, precision):
    pytest.importorskip("tensorrt")
    from psa_infer.backends import TensorRTBackend

    source = net_onnx
    if precision == "fp16":  # the graph computes in float16 behind float32 inputs/outputs
        from onnxconverter_common import float16

        source = tmp_path / "cam.fp16.onnx"
        half = float16.convert_float_to_float16(onnx.load(net_onnx), keep_io_types=True)
        onnx.save(half, source)
    cache = tmp_path / "timing.cache"
    engine = build_engine(
        source, tmp_path / "cam.engine", "image:1x3x16x16,2x3x32x32,2x3x64x64",
        precision=precision, timing_cache=cache,
    )  # fmt: skip
    assert engine.is_file() and cache.is_file()
    info = EngineInfo.read(sidecar_path(engine))
    assert info.precision == precision
    assert info.onnx_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    x = np.random.default_rng(0).random((2, 3, 20, 24)).astype(np.float32)
    with TensorRTBackend(engine) as backend:
        got = backend.run({"image": x})["cams"]
    expected = np.repeat(x.sum(axis=1, keepdims=True), 2, axis=1)
    tol = {"fp32": 1e-4, "fp16": 1e-2}[precision]  # 3 products of values < 1; fp16: 2^-11 each
    np.testing.assert_allclose(got, expected, rtol=0, atol=tol)

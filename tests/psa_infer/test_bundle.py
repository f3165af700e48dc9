"""The bundle at run time: meta.json checks, opening models, labeling without torch."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from cli import main
from psa_infer.backends import EngineInfo, sidecar_path
from psa_infer.bundle import (
    BundleError,
    _size_checked,
    bundle_labeler,
    load_meta,
    onnx_io_specs,
    open_bundle,
    ort_provider_options,
)
from psa_infer.palette import load_label_png
from psa_infer.profiles import ProfileError, engine_profiles, profile_strings
from tests.conftest import ROOT

pytest.importorskip("onnxruntime")


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    """A private copy of the session's bundle, free to break."""
    return shutil.copytree(tiny_bundle.bundle, tmp_path / "bundle")


def edit_meta(bundle, **changes):
    meta = json.loads((bundle / "meta.json").read_text())
    for key, value in changes.items():
        if value is None:
            del meta[key]
        else:
            meta[key] = value
    (bundle / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mean": None}, r"bundle/meta.json: missing 'mean'$"),
        ({"std": [0.2, 0.0, 0.2]}, r"meta.json: 'std': expected 3 numbers > 0 \(R, G, B\)"),
        ({"color_order": "BGR"}, r"'color_order': expected 'RGB'"),
        ({"stride": 16}, r"'stride': expected 8 \(the runtime's feature stride\), got 16"),
        ({"scales": []}, r"'scales': expected a non-empty list of numbers > 0"),
        ({"classes": ["cat", "background"]}, r"'classes': expected 'background' first"),
        ({"schema_version": 2}, r"schema_version 2 \(written by psa 0.1.0\), this runtime reads 1"),
        ({"models": {"cam": {}}}, r"missing 'models.cam.file'"),
        ({"beta": 4.0}, r"rw.onnx: built with beta=8.0, meta.json says 4.0 — re-export"),
        ({"normalize": "yes"}, r"'normalize': expected true or false, got 'yes'$"),
        ({"crf_sxy": 0}, r"'crf_sxy': expected a finite number > 0, got 0$"),
        ({"crf_sxy": "80"}, r"'crf_sxy': expected a finite number > 0, got '80'$"),
        # Python's json reads Infinity and NaN; an infinite kernel would ignore position.
        ({"crf_sxy": float("inf")}, r"'crf_sxy': expected a finite number > 0, got inf$"),
        ({"crf_sxy": float("nan")}, r"'crf_sxy': expected a finite number > 0, got nan$"),
    ],
)
def test_meta_errors_are_one_line(bundle, changes, message):
    edit_meta(bundle, **changes)
    with pytest.raises(BundleError, match=message):
        load_meta(bundle)


def test_tensor_names_are_checked(bundle):
    meta = json.loads((bundle / "meta.json").read_text())
    meta["models"]["aff"]["outputs"][0]["name"] = "feats"
    (bundle / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"models.aff.outputs: expected tensors \['features'\]"):
        load_meta(bundle)


def test_no_meta_or_unreadable_meta(bundle, tmp_path):
    with pytest.raises(BundleError, match="is .* a bundle written by psa export"):
        load_meta(tmp_path)
    (bundle / "meta.json").write_text("{not json")
    with pytest.raises(BundleError, match="meta.json: not readable JSON"):
        load_meta(bundle)


def test_missing_and_replaced_onnx_files(tiny_bundle, tmp_path):
    b = shutil.copytree(tiny_bundle.bundle, tmp_path / "b")
    (b / "aff.onnx").unlink()
    with pytest.raises(BundleError, match=r"b/aff.onnx: missing \(meta.json lists it\)"):
        load_meta(b)
    shutil.copy(b / "cam.onnx", b / "aff.onnx")
    with pytest.raises(BundleError, match="aff.onnx: sha256 differs from meta.json's"):
        load_meta(b)
    assert load_meta(b, check_files=False)["opset"] == 17


def test_open_bundle_reads_everything_from_meta(tiny_bundle, tmp_path):
    with open_bundle(tiny_bundle.bundle) as opened:
        lab = opened.labeler
        # ONNX Runtime's CPU provider: the numpy walk (faster there); rw.onnx on GPUs
        assert opened.walk == "numpy" and lab.walk is None
        assert opened.providers == {"cam": "CPUExecutionProvider", "aff": "CPUExecutionProvider"}
        assert lab.scales == (1.0, 0.5) and lab.flip and lab.mean == (0.485, 0.456, 0.406)
        wp = lab.walk_params
        assert (wp.alpha, wp.beta, wp.steps, wp.radius, wp.pairs) == (16.0, 8.0, 256, 5, "full")
        assert opened.meta["normalize"] is False and wp.normalize is False  # the reference's
    copy = shutil.copytree(tiny_bundle.bundle, tmp_path / "b")
    edit_meta(copy, normalize=True)  # not part of rw.onnx: meta.json alone says it
    with open_bundle(copy) as opened:
        assert opened.labeler.walk_params.normalize is True
    edit_meta(copy, normalize=None)  # a bundle exported before the key existed
    with open_bundle(copy) as opened:
        assert opened.labeler.walk_params.normalize is False
    assert opened.meta["crf_sxy"] == 80.0  # the reference's bilateral width, written out
    edit_meta(copy, crf_sxy=50)
    with open_bundle(copy) as opened:
        assert opened.labeler.walk_params.crf_sxy == 50.0
    edit_meta(copy, crf_sxy=None)  # exported before the key existed: the reference's
    with open_bundle(copy) as opened:
        assert opened.labeler.walk_params.crf_sxy == 80.0
    with open_bundle(tiny_bundle.bundle, walk="onnx") as opened:
        assert opened.walk == "onnx" and set(opened.providers) == {"cam", "aff", "rw"}
    with pytest.raises(ValueError, match="walk: expected one of auto, onnx, numpy"):
        open_bundle(tiny_bundle.bundle, walk="dense")
    with pytest.raises(ValueError, match="backend: expected one of onnxruntime, tensorrt"):
        bundle_labeler(tiny_bundle.bundle, backend="torch")


def test_tensorrt_needs_engines_built_from_this_bundle(bundle):
    with pytest.raises(BundleError, match=r"cam.engine: missing — build the engines on this"):
        bundle_labeler(bundle, backend="tensorrt")
    (bundle / "cam.engine").write_bytes(b"plan")
    info = EngineInfo("10.15", "Orin", "fp16", onnx_sha256="0" * 64)
    sidecar_path(bundle / "cam.engine").write_text(info.to_json())
    with pytest.raises(BundleError, match="cam.engine: built from another cam.onnx than this"):
        bundle_labeler(bundle, backend="tensorrt")


# ---------------------------------------------------------------------------- graphs vs meta.json


def edit_models(bundle, name, kind, index, shape):
    """Set meta.json's models.<name>.<kind>[index].shape."""
    meta = json.loads((bundle / "meta.json").read_text())
    meta["models"][name][kind][index]["shape"] = shape
    (bundle / "meta.json").write_text(json.dumps(meta))


def replace_model(bundle, name, data: bytes):
    """Overwrite <name>.onnx with ``data`` and record its sha256, as a careless edit would."""
    (bundle / f"{name}.onnx").write_bytes(data)
    meta = json.loads((bundle / "meta.json").read_text())
    meta["models"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    (bundle / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["cam", "rw"])
@pytest.mark.parametrize(
    "damage, detail",
    [
        (lambda b: b[: len(b) // 2], r"Error parsing message"),  # truncated
        (lambda b: b"not a model", r"Error parsing message"),
        (lambda b: b"", r"it has no graph outputs"),  # parses as an empty ModelProto
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_corrupt_onnx_with_its_sha_updated_is_one_line(bundle, name, damage, detail):
    replace_model(bundle, name, damage((bundle / f"{name}.onnx").read_bytes()))
    message = rf"bundle/{name}.onnx: not a readable ONNX model \(.*{detail}.*\)$"
    with pytest.raises(BundleError, match=message) as e:
        load_meta(bundle)
    assert "\n" not in str(e.value)
    with pytest.raises(BundleError, match=message):
        open_bundle(bundle)
    assert load_meta(bundle, check_files=False)["classes"][0] == "background"


def test_cli_label_with_a_corrupt_graph_is_one_line_not_a_bug(tiny_bundle, bundle, tmp_path):
    replace_model(bundle, "rw", b"\x08\x01garbage")
    args = ["label", str(tiny_bundle.data), "--split", "val", "--backend", "onnxruntime"]
    r = CliRunner().invoke(main, args + ["--model", str(bundle), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1, r.output
    assert "rw.onnx: not a readable ONNX model" in r.output
    assert "unexpected error" not in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(
    "classes, channels",
    [
        (["background", "cat"], 1),  # fewer classes than the graph predicts
        (["background", "cat", "dog", "cow", "sheep"], 4),  # more
    ],
)
def test_class_count_must_match_the_cam_graph(bundle, classes, channels):
    # meta.json alone disagrees with itself: refused even without reading the files
    edit_meta(bundle, classes=classes)
    message = (
        rf"bundle/meta.json: 'classes' lists {channels} classes besides background, but "
        r"models.cam.outputs gives cam.onnx's cams the shape \(B, 2, h, w\): expected "
        rf"\(B, {channels}, h, w\)"
    )
    with pytest.raises(BundleError, match=message):
        load_meta(bundle, check_files=False)
    # meta.json edited consistently with itself: the graph gives it away
    edit_models(bundle, "cam", "outputs", 0, ["B", channels, "h", "w"])
    edit_models(bundle, "cam", "outputs", 1, ["B", channels])
    assert load_meta(bundle, check_files=False)["classes"] == classes
    message = (
        r"bundle/cam.onnx: the graph's outputs are cams float32 \(B, 2, h, w\), logits float32 "
        rf"\(B, 2\), \S*bundle/meta.json says cams float32 \(B, {channels}, h, w\)"
    )
    with pytest.raises(BundleError, match=message):
        load_meta(bundle)


def test_aff_feature_depth_must_match_the_graph(bundle):
    edit_models(bundle, "aff", "outputs", 0, ["B", 32, "h", "w"])
    assert load_meta(bundle, check_files=False)["models"]["aff"]["outputs"][0]["shape"][1] == 32
    message = (
        r"bundle/aff.onnx: the graph's outputs are features float32 \(B, 48, h, w\), "
        r"\S*bundle/meta.json says features float32 \(B, 32, h, w\) — re-export"
    )
    with pytest.raises(BundleError, match=message):
        load_meta(bundle)
    edit_models(bundle, "aff", "outputs", 0, ["B", "D", "h", "w"])
    with pytest.raises(BundleError, match=r"meta.json: models.aff.outputs: expected aff.onnx's "):
        load_meta(bundle, check_files=False)


def test_graph_inputs_must_match_meta(bundle):
    edit_models(bundle, "rw", "inputs", 1, [64, "h", "w"])
    with pytest.raises(BundleError, match=r"rw.onnx: the graph's inputs are scores float32 \(C, "):
        load_meta(bundle)
    # another (readable) graph in aff.onnx's place, its sha256 recorded
    replace_model(bundle, "aff", (bundle / "rw.onnx").read_bytes())
    message = (
        r"aff.onnx: the graph's inputs are scores float32 \(C, h, w\), features float32 "
        r"\(D, h, w\), \S*meta.json says image float32 \(B, 3, H, W\)"
    )
    with pytest.raises(BundleError, match=message):
        load_meta(bundle)


def test_io_specs_of_a_graph_with_a_non_tensor_output():
    from onnx import TensorProto, helper

    out = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])], "g", [x], [out]
    )
    inputs, outputs = onnx_io_specs(helper.make_model(graph))
    assert inputs == [{"name": "x", "dtype": "float32", "shape": ["n"]}]
    assert outputs == [{"name": "seq", "dtype": "onnx-type-0", "shape": []}]  # not a crash


def test_external_data_is_refused(bundle):
    model = onnx.load(bundle / "aff.onnx")
    onnx.save_model(
        model,
        bundle / "aff.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="aff.weights",
        size_threshold=0,
    )
    assert (bundle / "aff.weights").stat().st_size > 0
    replace_model(bundle, "aff", (bundle / "aff.onnx").read_bytes())
    message = (
        r"bundle/aff.onnx: keeps \d+ tensor\(s\) in external data files \(aff.weights\), which "
        r"meta.json's sha256 does not cover"
    )
    with pytest.raises(BundleError, match=message):
        load_meta(bundle)
    with pytest.raises(BundleError, match=message):
        open_bundle(bundle)


def test_truncated_engine_sidecar_is_one_line(bundle):
    (bundle / "cam.engine").write_bytes(b"plan")
    info = EngineInfo("10.15", "Orin", "fp16", onnx_sha256="0" * 64)
    sidecar_path(bundle / "cam.engine").write_text(info.to_json()[:40])
    message = (
        r"bundle/cam.engine.json: cannot read the engine's sidecar \(.*\) — rebuild it: "
        r"psa build-engine \S*bundle$"
    )
    with pytest.raises(BundleError, match=message):
        open_bundle(bundle, backend="tensorrt")


def test_open_bundle_on_something_else(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cam.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"photos/meta.json: missing — is \S*photos a bundle"):
        open_bundle(other)
    with pytest.raises(BundleError, match=r"cam.onnx: not a bundle directory \(expected cam.onnx"):
        open_bundle(other / "cam.onnx")
    with pytest.raises(BundleError, match=r"nowhere: not a bundle directory"):
        open_bundle(tmp_path / "nowhere")


# ---------------------------------------------------------------------------- torch-free

# Makes `import torch` fail in the subprocess, as on a Jetson without PyTorch.
BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, NoTorch())
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_labeling_from_a_bundle_needs_no_torch(tiny_bundle, tmp_path):
    code = f"""
from psa_infer.bundle import bundle_labeler
from psa_infer.datasets import Sample
from psa_infer.pipeline import label_items
from pathlib import Path
images = sorted(Path({str(tiny_bundle.data / "JPEGImages")!r}).glob("*.jpg"))[:2]
items = [Sample(p.stem, p, labels=(1,)) for p in images] + [Sample("predicted", images[0])]
for walk in ("numpy", "onnx"):
    lab = bundle_labeler({str(tiny_bundle.bundle)!r}, walk=walk)
    stats = label_items(lab, items, Path({str(tmp_path)!r}) / walk, progress=False)
    assert stats["labeled"] == 3, stats
assert "torch" not in sys.modules
print("ok")
"""
    assert run_without_torch(code).stdout.strip() == "ok"
    for walk in ("numpy", "onnx"):
        lab = load_label_png(tmp_path / walk / "img_000.png")
        assert lab.shape == (37, 45) and set(np.unique(lab)) <= {0, 1}
    a, b = (load_label_png(tmp_path / w / "img_001.png") for w in ("numpy", "onnx"))
    assert (a == b).mean() >= 0.999  # the two walks agree to ~1e-6 on scores


def test_cli_label_with_onnxruntime_needs_no_torch(tiny_bundle, tmp_path):
    args = ["label", str(tiny_bundle.data), "--split", "val", "--backend", "onnxruntime"]
    args += ["--model", str(tiny_bundle.bundle), "-o", str(tmp_path / "labels")]
    code = f"""
from cli import main
try:
    main({args!r})
except SystemExit as e:
    assert e.code in (0, None), e.code
assert "torch" not in sys.modules
"""
    r = run_without_torch(code)
    assert "onnxruntime: CPUExecutionProvider; walk: numpy" in r.stderr
    assert json.loads(r.stdout)["labeled"] == 3  # stdout is the JSON summary alone
    assert len(list((tmp_path / "labels").glob("*.png"))) == 3
    records = (tmp_path / "labels" / "labels.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in records) == ["img_003", "img_004", "img_005"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "onnxruntime"], "--backend onnxruntime needs --model BUNDLE"),
        (["--backend", "tensorrt", "--model", "B", "--cam", "C"], "and no --cam/--aff"),
        (["--model", "B"], "--backend torch needs --cam and --aff (and no --model)"),
        (["--backend", "onnxruntime", "--model", "B", "--pairs", "psa"], "exported with pairs"),
    ],
)
def test_cli_label_backend_options(tiny_bundle, tmp_path, extra, message):
    subst = {"B": str(tiny_bundle.bundle), "C": str(tiny_bundle.cam)}
    args = ["label", str(tiny_bundle.data), "-o", str(tmp_path / "o")]
    r = CliRunner().invoke(main, args + [subst.get(a, a) for a in extra])
    assert r.exit_code == 2 and message in r.output, r.output


# ---------------------------------------------------------------------------- GPU providers


def test_ort_provider_options_of_a_bundle(tiny_bundle):
    meta = load_meta(tiny_bundle.bundle)
    for name in ("cam", "aff", "rw"):
        opts = ort_provider_options(tiny_bundle.bundle, meta, name, "fp32", None, (32, 448, 512))
        trt = opts["TensorrtExecutionProvider"]
        # the profile is build-engine's, in ONNX Runtime's "name:AxBxC,..." syntax
        lo, opt, hi = profile_strings(engine_profiles(meta, (32, 448, 512))[name])
        assert (trt["trt_profile_min_shapes"], trt["trt_profile_opt_shapes"]) == (lo, opt)
        assert trt["trt_profile_max_shapes"] == hi
        assert trt["trt_engine_cache_enable"] is True
        assert trt["trt_engine_cache_path"] == str(tiny_bundle.bundle / "ort_trt_cache")
        assert trt["trt_fp16_enable"] is False and "device_id" not in trt
        assert opts["CUDAExecutionProvider"] == {}
    default = ort_provider_options(tiny_bundle.bundle, meta, "cam")["TensorrtExecutionProvider"]
    # the default sides' 1024 px at the bundle's largest scale (1.0), untiled
    assert default["trt_profile_max_shapes"] == "image:2x3x1024x1024"
    fp16 = ort_provider_options(tiny_bundle.bundle, meta, "cam", "fp16", device_id=2)
    assert fp16["TensorrtExecutionProvider"]["trt_fp16_enable"] is True
    assert fp16["TensorrtExecutionProvider"]["device_id"] == 2
    assert fp16["CUDAExecutionProvider"] == {"device_id": 2}
    rw = ort_provider_options(tiny_bundle.bundle, meta, "rw", "fp16")
    assert rw["TensorrtExecutionProvider"]["trt_fp16_enable"] is False  # the walk stays fp32
    with pytest.raises(ValueError, match=r"^device_id: expected an integer >= 0, got -1$"):
        ort_provider_options(tiny_bundle.bundle, meta, "cam", device_id=-1)


@pytest.fixture
def gpu_onnxruntime(monkeypatch):
    """onnxruntime claiming the TensorRT and CUDA providers; sessions record what they were
    asked for and run on the CPU."""
    import onnxruntime

    from tests.psa_infer.test_backends import FakeSession

    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: everything)
    monkeypatch.setattr(FakeSession, "real", onnxruntime.InferenceSession)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    monkeypatch.setattr(FakeSession, "asked", [])
    return FakeSession.asked


def test_open_bundle_gives_each_graph_its_provider_options(bundle, gpu_onnxruntime):
    with open_bundle(bundle, device_id=1, walk="onnx", sides=(32, 448, 512)) as opened:
        assert opened.labeler.label(np.full((40, 50, 3), 99, np.uint8), [1]).shape == (40, 50)
    meta = load_meta(bundle)
    assert len(gpu_onnxruntime) == 3  # cam, aff, rw
    for name, asked in zip(("cam", "aff", "rw"), gpu_onnxruntime, strict=True):
        expected = ort_provider_options(bundle, meta, name, "fp32", 1, (32, 448, 512))
        assert asked == [
            ("TensorrtExecutionProvider", expected["TensorrtExecutionProvider"]),
            ("CUDAExecutionProvider", {"device_id": 1}),
            "CPUExecutionProvider",
        ]
    assert (bundle / "ort_trt_cache").is_dir()


@pytest.mark.parametrize(
    "device, providers, gpu",
    [("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"], 1),
     ("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], None),
     ("cpu", ["CPUExecutionProvider"], None)],
)  # fmt: skip
def test_cli_label_device_picks_the_provider_and_gpu(
    tiny_bundle, bundle, tmp_path, gpu_onnxruntime, device, providers, gpu
):
    args = ["label", str(tiny_bundle.data), "--split", "val", "--backend", "onnxruntime"]
    args += ["--model", str(bundle), "-o", str(tmp_path / "o"), "--device", device]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    for asked in gpu_onnxruntime:
        names = [p if isinstance(p, str) else p[0] for p in asked]
        assert names == providers
        if gpu is not None:
            assert dict(asked[0][1]) == {"device_id": gpu}


# ---------------------------------------------------------------------------- image sides


class FakeEngine:
    """A backend with the sidecar of an engine built for ``sides``."""

    def __init__(self, sides):
        self.info = EngineInfo("10.3.0", "Orin", "fp32", "0" * 64, image_sides=list(sides))


def test_tensorrt_labeler_refuses_an_image_by_its_pixels(tiny_bundle, tmp_path):
    with open_bundle(tiny_bundle.bundle) as opened:
        engines = [FakeEngine((32, 448, 512)), FakeEngine((16, 448, 600)), FakeEngine((32, 1, 500))]
        labeler = _size_checked(opened.labeler, engines, tmp_path)
        img = np.full((40, 50, 3), 99, np.uint8)
        assert (labeler.label(img, [1]) == opened.labeler.label(img, [1])).all()  # inside
        message = (
            rf"^{tmp_path}'s TensorRT engines: a 501x40-pixel image is outside the TensorRT "
            r"engines' profile, built for image sides of 32 to 500 pixels \(psa build-engine "
            r"--profile 32,448,500\) — rebuild them for it: psa build-engine --profile 32,448,501$"
        )
        with pytest.raises(ProfileError, match=message):
            labeler.label(np.zeros((40, 501, 3), np.uint8), [1])
        with pytest.raises(ProfileError, match=r"a 50x20-pixel image is outside"):
            labeler.predict_classes(np.zeros((20, 50, 3), np.uint8), 0.5)
        # sidecars without image sides (older builds): the engines refuse tensor shapes
        old = FakeEngine(())
        assert _size_checked(opened.labeler, [old, *engines], tmp_path) is opened.labeler

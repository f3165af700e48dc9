"""psa export: the bundle's files and meta.json, the parity ladder, atomic writes, the CLI."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from cli import main
from export import verify as verify_mod
from export.bundle import export_bundle
from export.trt_ops import unsupported_nodes
from export.verify import VerifyError, check_report, format_report, verify_bundle, verify_images
from psa_infer.bundle import BundleError, bundle_labeler, load_meta
from psa_infer.datasets import load_image
from psa_train.checkpoint import CheckpointError, sha256
from psa_train.label import torch_labeler

pytest.importorskip("onnxruntime")


def test_bundle_files_and_meta(tiny_bundle):
    b = tiny_bundle.bundle
    names = {"cam.onnx", "aff.onnx", "rw.onnx", "meta.json", "verify.json"}
    assert {p.name for p in b.iterdir()} == names  # no temporary files left behind
    assert not list(b.parent.glob(".bundle*"))
    meta = json.loads((b / "meta.json").read_text())
    assert meta["schema_version"] == 1 and meta["toolkit_version"] == "0.1.0"
    assert meta["classes"] == list(tiny_bundle.classes)
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["color_order"] == "RGB"
    assert (meta["stride"], meta["radius"], meta["beta"], meta["steps"]) == (8, 5, 8.0, 256)
    assert meta["pairs"] == "full" and meta["alpha"] == {"label": 16.0, "low": 4.0, "high": 32.0}
    assert meta["scales"] == [1.0, 0.5] and meta["flip"] is True and meta["opset"] == 17
    assert meta["sources"]["cam"] == {
        "file": "cam.safetensors",
        "sha256": sha256(tiny_bundle.cam),
        "backbone": "tiny",
    }
    cam = meta["models"]["cam"]
    assert cam["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["B", 3, "H", "W"]}]
    assert [o["name"] for o in cam["outputs"]] == ["cams", "logits"]
    rw = meta["models"]["rw"]
    assert [(i["name"], i["shape"]) for i in rw["inputs"]] == [
        ("scores", ["C", "h", "w"]),
        ("features", ["D", "h", "w"]),
    ]
    assert load_meta(b) == meta


@pytest.mark.parametrize("name", ["cam", "aff", "rw"])
def test_every_bundle_graph_is_opset_17_and_tensorrt_parseable(tiny_bundle, name):
    model = onnx.load(tiny_bundle.bundle / f"{name}.onnx")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert len(model.graph.node) >= 3  # a real graph is being looked at
    assert unsupported_nodes(model) == []


def test_verify_report_meets_the_ladder(tiny_bundle):
    report = json.loads((tiny_bundle.bundle / "verify.json").read_text())
    assert report["ok"] and report["images"] == 3 and report["provider"] == "CPUExecutionProvider"
    assert set(report["max_abs_diff"]) == {"cams", "logits", "features", "walked"}
    # FP32 torch vs ONNX Runtime: DESIGN.md's 1e-4; two float32 256-step walks: 1e-3
    diff = report["max_abs_diff"]
    assert max(diff["cams"], diff["logits"], diff["features"]) <= 1e-4 and diff["walked"] <= 1e-3
    assert report["tolerance"] == verify_mod.TOLERANCE
    # limits scale with the outputs' magnitude (tiny's features reach ~5, CAMs stay below 1)
    assert report["limit"]["features"] == pytest.approx(1e-4 * report["max_abs_torch"]["features"])
    assert report["limit"]["cams"] == 1e-4
    assert report["label_agreement"] >= 99.9
    # the set has masks: mIoU of both sides, and their difference
    miou = report["miou"]
    assert miou["images"] == 3 and miou["delta"] == pytest.approx(miou["bundle"] - miou["torch"])
    text = format_report(report)
    assert "pixel agreement" in text and "mIoU" in text and "FAIL" not in text


def test_torch_and_onnxruntime_labelers_agree(tiny_bundle):
    t, _ = torch_labeler(
        tiny_bundle.cam, tiny_bundle.aff, tiny_bundle.label_cfg, tiny_bundle.cam_cfg
    )
    rng = np.random.default_rng(3)
    imgs = [load_image(p) for p in sorted((tiny_bundle.data / "JPEGImages").glob("*.jpg"))[:3]]
    imgs.append(rng.integers(0, 255, (53, 70, 3), dtype=np.uint8))  # noise, another odd size
    same = total = 0
    for walk in ("numpy", "onnx"):
        b = bundle_labeler(tiny_bundle.bundle, walk=walk)
        for img in imgs:
            lt, lb = t.label(img, (1, 2)), b.label(img, (1, 2))
            assert lb.shape == img.shape[:2] and set(np.unique(lb)) <= {0, 1, 2}
            same, total = same + int((lt == lb).sum()), total + lt.size
    # near-ties in the argmax may flip a pixel; the networks agree to ~1e-6
    assert 100 * same / total >= 99.9


def test_failed_check_raises_and_names_the_rung(tiny_bundle):
    images = verify_images(tiny_bundle.data, tiny_bundle.classes, "val", limit=1)
    strict = {"features": 0.0}
    report = verify_bundle(
        tiny_bundle.bundle, tiny_bundle.cam, tiny_bundle.aff, images, tolerance=strict
    )
    assert not report["ok"] and "FAIL" in format_report(report)
    with pytest.raises(
        VerifyError, match=r"verification failed: features differ by \d\.\d\de-\d+ > 0.0e"
    ):
        check_report(report)


def test_verify_refuses_other_checkpoints(tiny_bundle):
    images = verify_images(tiny_bundle.data, tiny_bundle.classes, "val", limit=1)
    with pytest.raises(ValueError, match="not the cam checkpoint that .* was exported from"):
        verify_bundle(tiny_bundle.bundle, tiny_bundle.aff, tiny_bundle.aff, images)


def test_reexport_replaces_the_bundle_whole(tiny_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle.bundle, out)
    (out / "cam.engine").write_bytes(b"stale: built from the old cam.onnx")
    export_bundle(tiny_bundle.cam, tiny_bundle.aff, out, tiny_bundle.label_cfg, tiny_bundle.cam_cfg)
    assert {p.name for p in out.iterdir()} == {"cam.onnx", "aff.onnx", "rw.onnx", "meta.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary directories


def test_failures_leave_the_target_untouched(tiny_bundle, tmp_path, monkeypatch):
    cfg = (tiny_bundle.label_cfg, tiny_bundle.cam_cfg)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(BundleError, match="notes: exists and is not a psa bundle"):
        export_bundle(tiny_bundle.cam, tiny_bundle.aff, other, *cfg)
    assert [p.name for p in other.iterdir()] == ["todo.txt"]
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle.bundle, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ValueError, match=r"opset: expected an integer in \[13"):
        export_bundle(tiny_bundle.cam, tiny_bundle.aff, out, *cfg, opset=12)
    failing = {"ok": False, "max_abs_diff": {"cams": 1.0}, "limit": {"cams": 1e-4}}
    monkeypatch.setattr(verify_mod, "verify_bundle", lambda *a, **k: failing)
    failing.update(label_agreement=100.0, min_agreement=99.9)
    images = verify_images(tiny_bundle.data, tiny_bundle.classes, "val", limit=1)
    with pytest.raises(VerifyError, match="cams differ by 1.00e"):
        export_bundle(tiny_bundle.cam, tiny_bundle.aff, out, *cfg, verify_images=images)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "notes"]


def test_checkpoints_for_other_classes_are_refused(tiny_bundle, tmp_path):
    from psa_train.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(tiny_bundle.aff)
    bad = save_checkpoint(tmp_path / "aff", tensors, {**meta, "classes": ["background", "a", "b"]})
    with pytest.raises(CheckpointError, match=r"aff.safetensors: trained for classes \['a', 'b'"):
        export_bundle(
            tiny_bundle.cam, bad, tmp_path / "o", tiny_bundle.label_cfg, tiny_bundle.cam_cfg
        )


# ---------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("cmd", ["export", "build-engine"])
def test_help(cmd):
    r = CliRunner().invoke(main, [cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output and len(r.output) > 400


def test_cli_export_with_verify_prints_the_table(tiny_bundle, tmp_path):
    out = tmp_path / "b"
    args = ["export", "--cam", tiny_bundle.cam, "--aff", tiny_bundle.aff, "-o", out]
    args += ["--verify", tiny_bundle.data / "JPEGImages", "--verify-limit", 2]
    args += ["--set", "make_cam.scales=[1.0]", "--set", "label.logt=4"]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert "2 images, ONNX Runtime CPUExecutionProvider" in r.output
    assert "classes   same predicted set" in r.output  # untagged images: classes predicted
    assert "wrote" in r.output and "2 classes, opset 17" in r.output
    meta = load_meta(out)
    assert meta["steps"] == 16 and meta["scales"] == [1.0]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT present")
def test_build_engine_without_tensorrt_is_one_clear_line(tiny_bundle):
    r = CliRunner().invoke(main, ["build-engine", str(tiny_bundle.bundle)])
    assert r.exit_code == 1
    assert r.output.startswith("Error: tensorrt is not installed: pip install 'psa-affinity[trt]'")
    assert len(r.output.strip().splitlines()) == 1


def test_build_engine_argument_errors(tiny_bundle, tmp_path):
    r = CliRunner().invoke(main, ["build-engine", str(tiny_bundle.bundle), "--precision", "int8"])
    assert r.exit_code == 1 and "no int8 graphs in this bundle (it has fp32)" in r.output
    r = CliRunner().invoke(main, ["build-engine", str(tiny_bundle.bundle), "--calib-dir", "x"])
    assert r.exit_code == 2 and "No such option '--calib-dir'" in r.output  # no calibrator
    r = CliRunner().invoke(main, ["build-engine", str(tiny_bundle.bundle), "--profile", "64,32"])
    assert r.exit_code == 2 and "expected MIN,OPT,MAX pixels" in r.output
    r = CliRunner().invoke(main, ["build-engine", str(tmp_path)])
    assert r.exit_code == 1 and "meta.json: missing" in r.output


def test_build_engine_on_a_corrupt_graph_is_one_line_not_a_bug(tiny_bundle, tmp_path):
    b = shutil.copytree(tiny_bundle.bundle, tmp_path / "b")
    data = (b / "cam.onnx").read_bytes()[:1000]  # truncated, its sha256 recorded anyway
    (b / "cam.onnx").write_bytes(data)
    meta = json.loads((b / "meta.json").read_text())
    meta["models"]["cam"]["sha256"] = hashlib.sha256(data).hexdigest()
    (b / "meta.json").write_text(json.dumps(meta))
    r = CliRunner().invoke(main, ["build-engine", str(b)])
    assert r.exit_code == 1, r.output
    assert "b/cam.onnx: not a readable ONNX model (" in r.output
    assert "unexpected error" not in r.output and len(r.output.strip().splitlines()) == 1

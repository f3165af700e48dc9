"""The bundle at run time: meta.json checks, opening models, labeling without torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from psa_infer.backends import EngineInfo, sidecar_path
from psa_infer.bundle import BundleError, bundle_labeler, load_meta, open_bundle
from psa_infer.palette import load_label_png
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


def test_open_bundle_reads_everything_from_meta(tiny_bundle):
    with open_bundle(tiny_bundle.bundle) as opened:
        lab = opened.labeler
        # ONNX Runtime's CPU provider: the numpy walk (faster there); rw.onnx on GPUs
        assert opened.walk == "numpy" and lab.walk is None
        assert opened.providers == {"cam": "CPUExecutionProvider", "aff": "CPUExecutionProvider"}
        assert lab.scales == (1.0, 0.5) and lab.flip and lab.mean == (0.485, 0.456, 0.406)
        wp = lab.walk_params
        assert (wp.alpha, wp.beta, wp.steps, wp.radius, wp.pairs) == (16.0, 8.0, 256, 5, "full")
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
from psa_infer.pipeline import Item, label_items
from pathlib import Path
images = sorted(Path({str(tiny_bundle.data / "JPEGImages")!r}).glob("*.jpg"))[:2]
items = [Item(p.stem, p, (1,)) for p in images] + [Item("predicted", images[0], None)]
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
    out = run_without_torch(code).stdout
    assert "onnxruntime: CPUExecutionProvider; walk: numpy" in out
    assert json.loads(out.strip().splitlines()[-1])["labeled"] == 3
    assert len(list((tmp_path / "labels").glob("*.png"))) == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--backend", "onnxruntime"], "--backend onnxruntime needs --model BUNDLE"),
        (["--backend", "tensorrt", "--model", "B", "--cam", "C"], "and no --cam/--aff"),
        (["--model", "B"], "--backend torch needs --cam and --aff (and no --model)"),
        (["--backend", "onnxruntime", "--model", "B", "--pairs", "psa"], "exported with pairs"),
        (["--backend", "onnxruntime", "--model", "B", "--device", "cuda:1"], "auto, cpu or cuda"),
    ],
)
def test_cli_label_backend_options(tiny_bundle, tmp_path, extra, message):
    subst = {"B": str(tiny_bundle.bundle), "C": str(tiny_bundle.cam)}
    args = ["label", str(tiny_bundle.data), "-o", str(tmp_path / "o")]
    r = CliRunner().invoke(main, args + [subst.get(a, a) for a in extra])
    assert r.exit_code == 2 and message in r.output, r.output

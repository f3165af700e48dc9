"""The segmentation bundle: torch vs ONNX Runtime on the logits, TensorRT's operators, the
precision variants, segmenting without torch, and psa segment + psa eval through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from cli import main
from psa_infer.bundle import BundleError
from psa_infer.palette import load_label_png
from tests.conftest import ROOT, write_voc
from tests.psa_infer.test_bundle import BLOCK_TORCH


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """A random-weight tiny SegNet checkpoint, a VOC set (37×45) and its fp32/fp16 bundle."""
    import torch

    from export.seg_bundle import export_seg_bundle
    from psa_train.checkpoint import save_checkpoint
    from psa_train.train_seg import build_seg_model

    root = tmp_path_factory.mktemp("seg")
    write_voc(root / "voc")
    torch.manual_seed(0)
    # With the image-level branch: its global mean must export with dynamic H×W too.
    head = {"rates": [1, 2], "width": 8, "dropout": 0.5, "context": True}
    net = build_seg_model("tiny", None, 2, head)
    meta = {
        "kind": "seg",
        "backbone": "tiny",
        "classes": ["background", "cat", "dog"],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "head": head,
    }
    ckpt = save_checkpoint(root / "seg", net.state_dict(), meta)
    bundle = export_seg_bundle(ckpt, root / "bundle", precisions=("fp32", "fp16"))
    return root, ckpt, bundle


def test_meta_json_says_what_the_runtime_needs(seg):
    _, _, bundle = seg
    meta = json.loads((bundle / "meta.json").read_text())
    assert meta["kind"] == "seg" and meta["classes"] == ["background", "cat", "dog"]
    assert meta["stride"] == 8 and meta["color_order"] == "RGB"
    assert meta["models"]["seg"]["outputs"] == [
        {"name": "logits", "dtype": "float32", "shape": ["B", 3, "H", "W"]}
    ]
    assert meta["precisions"]["fp16"]["seg"]["file"] == "seg.fp16.onnx"


def test_torch_and_onnxruntime_agree_on_the_logits(seg):
    from export.seg_bundle import seg_parity

    _, ckpt, bundle = seg
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in
              [(37, 45), (61, 47), (5, 3), (64, 64)]]  # fmt: skip
    # Same float32 graph, different kernels: rounding only (DESIGN's ladder: ~1e-4).
    assert seg_parity(ckpt, bundle, images) <= 1e-4


@pytest.mark.parametrize("file", ["seg.onnx", "seg.fp16.onnx"])
def test_every_node_is_a_tensorrt_operator(seg, file):
    from export.trt_ops import unsupported_nodes

    assert unsupported_nodes(onnx.load(seg[2] / file)) == []


def test_fp16_variant_agrees_on_the_labels(seg):
    from psa_infer.segment import open_seg_bundle

    root, _, bundle = seg
    from psa_infer.datasets import load_image

    img = load_image(root / "voc" / "JPEGImages" / "img_000.jpg")
    with open_seg_bundle(bundle) as a, open_seg_bundle(bundle, precision="fp16") as b:
        za, zb = a.logits(img), b.logits(img)
        assert zb.dtype == np.float32 and zb.shape == (3, 37, 45)
        assert np.abs(za - zb).max() < 1e-2 * max(1.0, np.abs(za).max())
        assert (a.segment(img) == b.segment(img)).mean() >= 0.99
        assert a.segment(img, (1.0, 0.5), flip=True).shape == (37, 45)


def test_segmenting_needs_no_torch(seg, tmp_path):
    root, _, bundle = seg
    code = f"""
from pathlib import Path
from psa_infer.datasets import open_dataset
from psa_infer.segment import open_seg_bundle, segment_items
ds = open_dataset({str(root / "voc")!r})
with open_seg_bundle({str(bundle)!r}) as b:
    stats = segment_items(b, ds.split("val"), Path({str(tmp_path)!r}), progress=False)
assert stats["labeled"] == 3, stats
assert "torch" not in sys.modules
print("ok")
"""
    r = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"
    lab = load_label_png(tmp_path / "img_003.png")
    assert lab.shape == (37, 45) and set(np.unique(lab)) <= {0, 1, 2}


def test_psa_segment_writes_labels_and_records_that_eval_reads(seg, tmp_path):
    root, _, bundle = seg
    out = tmp_path / "pred"
    r = CliRunner().invoke(main, ["segment", str(root / "voc"), "--model", str(bundle), "-o",
                                  str(out), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["labeled"] == 3
    rows = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in rows) == ["img_003", "img_004", "img_005"]
    assert rows[0]["model"] == "seg" and rows[0]["size"] == [37, 45]
    r = CliRunner().invoke(main, ["eval", str(root / "voc"), "--labels-dir", str(out)])
    assert r.exit_code == 0, r.output and "mIoU" in r.output


def test_psa_segment_crf_refines_the_softmax(seg, tmp_path):
    # --crf: the argmax of the dense CRF started from the network's softmax, recorded as such
    from psa_infer.crf import crf_inference
    from psa_infer.datasets import load_image, open_dataset
    from psa_infer.segment import open_seg_bundle

    root, _, bundle = seg
    out = tmp_path / "crf"
    r = CliRunner().invoke(main, ["segment", str(root / "voc"), "--model", str(bundle), "-o",
                                  str(out), "-q", "--crf"])  # fmt: skip
    assert r.exit_code == 0, r.output
    rows = {x["id"]: x for x in map(json.loads, (out / "labels.jsonl").read_text().splitlines())}
    sample = open_dataset(root / "voc").split("val")[0]
    img = load_image(sample.image)
    with open_seg_bundle(bundle) as b:
        z = b.logits(img)
    p = np.exp(z - z.max(0))
    p /= p.sum(0)
    want = crf_inference(img, p.astype(np.float32)).argmax(0)
    assert np.array_equal(load_label_png(out / f"{sample.id}.png"), want)
    assert rows[sample.id]["crf"] is True


def test_a_labeling_bundle_or_a_changed_graph_is_refused(seg, tiny_bundle, tmp_path):
    import shutil

    from psa_infer.segment import load_seg_meta

    with pytest.raises(BundleError, match="kind 'none', expected 'seg'"):
        load_seg_meta(tiny_bundle.bundle)
    copy = tmp_path / "b"
    shutil.copytree(seg[2], copy)
    (copy / "seg.onnx").write_bytes((copy / "seg.fp16.onnx").read_bytes())
    with pytest.raises(BundleError, match="seg.onnx: sha256 differs from meta.json's"):
        load_seg_meta(copy)
    r = CliRunner().invoke(main, ["segment", str(seg[0] / "voc"), "--model", str(copy), "-o",
                                  str(tmp_path / "o")])  # fmt: skip
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("skip, stride", [(False, 16), (True, 8)])
def test_a_stride_16_network_exports_says_so_and_runs(tmp_path, skip, stride):
    import torch

    from export.seg_bundle import export_seg_bundle
    from psa_infer.segment import load_seg_meta, open_seg_bundle
    from psa_train.checkpoint import save_checkpoint
    from psa_train.train_seg import build_seg_model

    torch.manual_seed(0)
    head = {"rates": [1], "width": 8, "dropout": 0.0, "context": True, "skip": skip}
    net = build_seg_model("mobilenet_v2_os16", None, 2, head).eval()
    meta = {"kind": "seg", "backbone": "mobilenet_v2_os16", "head": head,
            "classes": ["background", "cat", "dog"], "mean": [0.5] * 3,
            "std": [0.25] * 3}  # fmt: skip
    bundle = export_seg_bundle(
        save_checkpoint(tmp_path / "s", net.state_dict(), meta), tmp_path / "b"
    )
    written = json.loads((bundle / "meta.json").read_text())
    # the class scores' stride: the decoder step brings them back to the low level's 8
    assert written["stride"] == stride and f"from stride {stride}" in written["output"]
    assert written["sources"]["seg"]["head"]["skip"] is skip
    img = np.random.default_rng(0).integers(0, 255, (37, 45, 3), dtype=np.uint8)
    with open_seg_bundle(bundle) as b:
        z = b.logits(img)
    x = torch.from_numpy(((img / 255.0 - 0.5) / 0.25).astype(np.float32).transpose(2, 0, 1))
    with torch.no_grad():
        want = net(x[None])[0].numpy()
    assert z.shape == (3, 37, 45) and np.abs(z - want).max() <= 1e-4
    written["stride"] = 32
    (bundle / "meta.json").write_text(json.dumps(written))
    with pytest.raises(BundleError, match="stride 8 or 16, got 'RGB' and 32"):
        load_seg_meta(bundle)


def test_export_seg_cli_with_int8(seg, tmp_path):
    root, ckpt, _ = seg
    out = tmp_path / "b"
    args = ["export-seg", "--seg", str(ckpt), "-o", str(out), "--precision", "fp32,int8"]
    r = CliRunner().invoke(main, [*args, "--calib", str(root / "voc")])
    assert r.exit_code == 0, r.output
    assert "precisions fp32, int8" in r.stdout
    from export.precision import int8_form_problems

    assert int8_form_problems(onnx.load(out / "seg.int8.onnx")) == []
    r = CliRunner().invoke(main, ["export-seg", "--seg", str(ckpt), "-o", str(out),
                                  "--precision", "int8"])  # fmt: skip
    assert r.exit_code == 2 and "needs --calib" in r.output

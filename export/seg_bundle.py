"""``psa export-seg``: a segmentation checkpoint → a bundle of its own (``psa_infer/segment.py``
reads it), and its TensorRT engine.

``seg.onnx``: ``image`` (B, 3, H, W) float32 → ``logits`` (B, K+1, H, W) float32, the network's
stride-8 (or 16) scores upsampled bilinearly inside the graph (``SegNet.forward``), so the deployed
labeler is normalise → one graph → argmax. B, H and W are dynamic. meta.json::

    schema_version, toolkit_version, exporter, kind "seg"
    classes, mean, std, color_order, opset
    stride                      of the class scores: 8, or 16 (mobilenet_v2_os16 without skip)
    output                      what logits are ("image-size", bilinear from that stride)
    models {seg: {file, sha256, inputs, outputs}}
    sources {seg: {file, sha256, backbone, head, labels}}
    precisions {fp16|int8: {seg: {file, sha256}}}   (optional)

Written and published as ``export/bundle.py`` writes the labeling bundle (a temporary sibling,
one rename). The FP16/INT8 variants are ``export/precision.py``'s ``make_variant`` on seg.onnx
(INT8 calibrated on training images fed as the runtime feeds them, whole and normalised; the
convolution that reads the image stays float, the output-side one does not: the graph ends in
a Resize, which that recipe does not look through).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from export.bundle import _check_target, _model_entry, _publish
from export.onnx_export import IMAGE_DIMS, export_module
from psa_infer.artifacts import file_sha256
from psa_infer.bundle import META, SCHEMA_VERSION
from psa_infer.datasets import Sample, load_image
from psa_infer.segment import KIND, SEG_FILE, SEG_IMAGE, SEG_LOGITS, engine_file, seg_file


def export_seg_onnx(net, path: str | Path, opset: int = 17, exporter: str = "torchscript"):
    """``seg.onnx`` of a ``SegNet``: ``image`` → ``logits`` (B, K+1, H, W)."""
    import onnx

    model = export_module(net, path, SEG_IMAGE, {SEG_LOGITS: IMAGE_DIMS}, opset, exporter)
    # Shape inference cannot see through the Resize to the class axis; it is the network's.
    dim = model.graph.output[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_value = net.num_classes + 1
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, path)
    return model


def export_seg_bundle(
    seg_ckpt: str | os.PathLike,
    out_dir: str | os.PathLike,
    opset: int = 17,
    exporter: str = "torchscript",
    precisions: Sequence[str] = ("fp32",),
    calib_images: Sequence[Sample] | None = None,
) -> Path:
    """Export a ``train-seg`` checkpoint to a segmentation bundle at ``out_dir``."""
    from export.precision import INT8_RECIPE, PrecisionError, make_variant
    from psa_train import __version__
    from psa_train.checkpoint import sha256
    from psa_train.train_seg import load_seg_model

    out = Path(out_dir)
    _check_target(out)
    net, ck = load_seg_model(seg_ckpt)
    stride = net.score_stride  # of the class scores: 8, or 16 (mobilenet_v2_os16, no skip)
    wanted = [p for p in precisions if p != "fp32"]
    if "int8" in wanted and not calib_images:
        raise PrecisionError("--precision int8: needs calibration images (--calib IMAGES)")
    stage = out.resolve().with_name(f".{out.resolve().name}.tmp{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        model = export_seg_onnx(net, stage / SEG_FILE, opset, exporter)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "toolkit_version": __version__,
            "exporter": exporter,
            "kind": KIND,
            "classes": list(ck["classes"]),
            "mean": [float(v) for v in ck["mean"]],
            "std": [float(v) for v in ck["std"]],
            "color_order": "RGB",
            "stride": stride,
            "output": f"image-size logits (bilinear from stride {stride}, corners not aligned)",
            "opset": opset,
            "models": {KIND: _model_entry(stage / SEG_FILE, model)},
            "sources": {
                KIND: {
                    "file": Path(seg_ckpt).name,
                    "sha256": sha256(seg_ckpt),
                    "backbone": ck["backbone"],
                    "head": ck["head"],
                    "labels": ck.get("labels"),
                }
            },
        }
        images = [load_image(s.image) for s in calib_images or []] if "int8" in wanted else None
        variants = {}
        for p in wanted:
            # calibration_batches feeds a model that is not "cam" the normalised image padded
            # to a multiple of 8: a shape the runtime also feeds (any H, W runs).
            make_variant(KIND, p, stage / SEG_FILE, stage / seg_file(p), images, meta)
            if p == "fp16":
                _float32_output(stage / seg_file(p))
            variants[p] = {KIND: {"file": seg_file(p), "sha256": file_sha256(stage / seg_file(p))}}
            if p == "int8":
                variants[p]["calibration"] = {"images": len(images), "method": INT8_RECIPE.method}
        if variants:
            meta["precisions"] = variants
        (stage / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        from psa_infer.segment import load_seg_meta

        load_seg_meta(stage)  # what the runtime will check, before anyone sees the bundle
        _publish(stage, out.resolve())
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _float32_output(path: Path) -> None:
    """Undo onnxconverter-common's last Cast to float16 of a graph output.

    The converter keeps Resize (on its block list) in float32 and, with ``keep_io_types``,
    should leave the output float32 too, but it casts the Resize's float32 result back to
    float16 when that result is the graph's output. The Cast is dropped, the output float32.
    """
    import onnx

    model = onnx.load(path)
    outputs = {o.name: o for o in model.graph.output}
    for node in list(model.graph.node):
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == onnx.TensorProto.FLOAT16 and node.output[0] in outputs:
            source = node.input[0]
            model.graph.node.remove(node)
            for other in model.graph.node:
                other.output[:] = [node.output[0] if o == source else o for o in other.output]
            outputs[node.output[0]].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, path)


def seg_profile(sides: Sequence[int]) -> dict:
    """TensorRT profile {image: (min, opt, max)} for images of ``sides`` = (MIN, OPT, MAX) px,
    batch 1 (the runtime feeds one image per pass)."""
    from psa_infer.profiles import check_sides

    lo, opt, hi = check_sides(sides)
    return {SEG_IMAGE: tuple((1, 3, s, s) for s in (lo, opt, hi))}


def build_seg_engine(
    bundle_dir: str | os.PathLike,
    precision: str = "fp32",
    sides: Sequence[int] = (32, 448, 1024),
    timing_cache: str | os.PathLike | None = None,
    workspace_gb: float = 4.0,
) -> Path:
    """Build ``seg.engine`` (or ``seg.<precision>.engine``) beside the bundle's graph on this
    machine's GPU, with ``export/engine.py``'s ``build_engine`` (strongly typed, sidecar)."""
    from export.engine import build_engine
    from psa_infer.segment import load_seg_meta

    root = Path(bundle_dir)
    load_seg_meta(root)
    return build_engine(
        root / seg_file(precision),
        root / engine_file(precision),
        seg_profile(sides),
        precision=precision,
        timing_cache=timing_cache,
        workspace_gb=workspace_gb,
        image_sides=tuple(sides),
    )


def seg_parity(seg_ckpt: str | os.PathLike, bundle_dir: str | os.PathLike, images) -> float:
    """max |Δ| of the logits, torch checkpoint vs the bundle's seg.onnx under ONNX Runtime CPU,
    over ``images`` ((H, W, 3) uint8)."""
    import torch

    from psa_infer.cam import normalize_image
    from psa_infer.segment import open_seg_bundle
    from psa_train.train_seg import load_seg_model

    net, meta = load_seg_model(seg_ckpt)
    worst = 0.0
    with open_seg_bundle(bundle_dir, providers=["CPUExecutionProvider"]) as b:
        for img in images:
            x = normalize_image(img, meta["mean"], meta["std"])[None]
            with torch.no_grad():
                ref = net(torch.from_numpy(x)).numpy()[0]
            worst = max(worst, float(np.abs(ref - b.logits(img)).max()))
    return worst

"""The segmentation bundle at run time: one network, one pass, image → label map (torch-free).

A segmentation bundle (written by ``psa export-seg``, ``export/seg_bundle.py``) is a directory::

    seg.onnx     image (B, 3, H, W) float32 → logits (B, K+1, H, W) float32
    meta.json    kind "seg", classes, mean/std, colour order, stride, opset, models.seg,
                 sources.seg, precisions (seg.fp16.onnx, seg.int8.onnx), like a label bundle's
    seg.engine   a TensorRT engine, once ``build_seg_engine`` ran on the device (+ .engine.json)

The graph upsamples its stride-8 (or 16: ``SEG_STRIDES``) scores bilinearly to the input
size, so the runtime only normalises the image and takes the argmax; any H, W ≥ 1 runs.
Optional test-time augmentation (``scales``, ``flip``) averages the softmax of each pass at the
image's size.
Labeled images are written as ``psa label`` writes them: ``<id>.png`` palette maps and a
``labels.jsonl`` record each (``psa_infer.pipeline.label_record``), failures listed by
``psa_infer.runs.run_items``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psa_infer.backends import Backend, OnnxRuntimeBackend
from psa_infer.bundle import (
    META,
    PRECISIONS,
    SCHEMA_VERSION,
    BundleError,
    _check_graph_io,
    _check_onnx_file,
)
from psa_infer.cam import STRIDE, _scaled_size, normalize_image
from psa_infer.datasets import Sample

KIND = "seg"
SEG_IMAGE, SEG_LOGITS = "image", "logits"
SEG_FILE = "seg.onnx"
# Where a segmentation network's head runs (meta.json "stride"): the graph upsamples to the
# image itself, so the runtime reads any of them the same way.
SEG_STRIDES = (STRIDE, 2 * STRIDE)


def seg_file(precision: str = "fp32") -> str:
    """seg.onnx, seg.fp16.onnx, seg.int8.onnx."""
    return SEG_FILE if precision == "fp32" else f"seg.{precision}.onnx"


def is_seg_bundle(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory whose meta.json says kind "seg"."""
    meta = Path(path) / META
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_seg_meta(bundle_dir: str | os.PathLike, check_files: bool = True) -> dict:
    """Read and check a segmentation bundle's meta.json (and, with ``check_files``, that each
    graph it lists is there with its sha256 and its recorded inputs and outputs).

    Raises:
        BundleError: one line naming the file and what was expected.
    """
    root = Path(bundle_dir)
    path = root / META
    if not path.is_file():
        raise BundleError(f"{path}: missing — is {root} a bundle written by psa export-seg?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("kind") != KIND:
        got = meta.get("kind", "none") if isinstance(meta, dict) else type(meta).__name__
        raise BundleError(
            f"{path}: kind {got!r}, expected 'seg' (a bundle of psa export-seg); a labeling "
            "bundle of psa export runs with psa label --model"
        )
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {meta.get('schema_version')!r}, this runtime reads "
            f"{SCHEMA_VERSION} — re-export the bundle with this psa"
        )
    classes = meta.get("classes")
    if not (isinstance(classes, list) and len(classes) >= 2 and classes[0] == "background"):
        raise BundleError(f"{path}: 'classes': expected names with 'background' first")
    for key in ("mean", "std"):
        v = meta.get(key)
        if not (
            isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
        ):
            raise BundleError(f"{path}: '{key}': expected 3 numbers (R, G, B), got {v!r}")
    if meta.get("color_order") != "RGB" or meta.get("stride") not in SEG_STRIDES:
        raise BundleError(
            f"{path}: expected color_order 'RGB' and stride "
            f"{' or '.join(map(str, SEG_STRIDES))}, got {meta.get('color_order')!r} and "
            f"{meta.get('stride')!r}"
        )
    entry = meta.get("models", {}).get(KIND) if isinstance(meta.get("models"), dict) else None
    if not isinstance(entry, dict) or entry.get("file") != SEG_FILE:
        raise BundleError(f"{path}: models.seg: expected {{'file': {SEG_FILE!r}, ...}}")
    logits = [s for s in entry.get("outputs", []) if s.get("name") == SEG_LOGITS]
    if not logits or logits[0]["shape"][1] != len(classes):
        raise BundleError(
            f"{path}: models.seg.outputs: expected logits (B, {len(classes)}, H, W) for "
            f"{len(classes)} classes — re-export the bundle instead of editing meta.json"
        )
    variants = meta.get("precisions", {})
    for precision, entries in variants.items():
        if precision not in PRECISIONS[1:] or entries.get(KIND, {}).get("file") != seg_file(
            precision
        ):
            raise BundleError(f"{path}: precisions.{precision}: expected seg.{precision}.onnx")
    if check_files:
        files = [(SEG_FILE, entry["sha256"])]
        files += [(seg_file(p), e[KIND]["sha256"]) for p, e in variants.items()]
        for file, sha in files:
            model = _check_onnx_file(root / file, sha)
            _check_graph_io(root / file, model, path, entry)
    return meta


def engine_file(precision: str = "fp32") -> str:
    """seg.engine, seg.fp16.engine, seg.int8.engine (``export.seg_bundle.build_seg_engine``)."""
    return "seg.engine" if precision == "fp32" else f"seg.{precision}.engine"


@dataclass
class SegBundle:
    """An opened segmentation bundle: its meta.json and the backend running seg.onnx."""

    path: Path
    meta: dict
    backend: Backend
    precision: str = "fp32"

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def provider(self) -> str:
        return getattr(self.backend, "provider", "TensorRT")

    def logits(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB → (K+1, H, W) float32 logits, one pass at scale 1."""
        x = normalize_image(img, self.meta["mean"], self.meta["std"])[None]
        return self.backend.run({SEG_IMAGE: x})[SEG_LOGITS][0]

    def segment(
        self,
        img: np.ndarray,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        crf: bool = False,
    ) -> np.ndarray:
        """(H, W) uint8 class ids of an (H, W, 3) uint8 RGB image. One scale without flip is
        the argmax of ``logits``; otherwise the mean softmax over every scale (and mirror).
        ``crf``: the argmax of the dense CRF's marginals (``psa_infer.crf``, the reference's
        settings) started from that softmax, DeepLab's post-processing."""
        if tuple(scales) == (1.0,) and not flip and not crf:
            return self.logits(img).argmax(0).astype(np.uint8)
        from PIL import Image

        from psa_infer.ops import resize_bilinear

        h, w = img.shape[:2]
        total = None
        for s in scales:
            im = (
                img
                if s == 1.0
                else np.asarray(Image.fromarray(img).resize(_scaled_size(h, w, s), Image.BILINEAR))
            )
            for mirror in (False, True) if flip else (False,):
                z = self.logits(np.ascontiguousarray(im[:, ::-1]) if mirror else im)
                z = z[:, :, ::-1] if mirror else z
                z = resize_bilinear(np.ascontiguousarray(z), (h, w)) if z.shape[1:] != (h, w) else z
                p = np.exp(z - z.max(0, keepdims=True))
                p /= p.sum(0, keepdims=True)
                total = p if total is None else total + p
        if crf:
            from psa_infer.crf import crf_inference

            mean = (total / (len(scales) * (2 if flip else 1))).astype(np.float32)
            total = crf_inference(np.ascontiguousarray(img), mean)
        return total.argmax(0).astype(np.uint8)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> SegBundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_seg_bundle(
    bundle_dir: str | os.PathLike,
    backend: str = "onnxruntime",
    providers: str | Sequence[str] = "auto",
    threads: int | None = None,
    precision: str = "fp32",
) -> SegBundle:
    """Open seg.onnx (or its ``precision`` variant) with ONNX Runtime, or the engine that
    ``build_seg_engine`` wrote beside it with TensorRT (``backend="tensorrt"``)."""
    root = Path(bundle_dir)
    meta = load_seg_meta(root)
    if precision not in PRECISIONS:
        raise BundleError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and precision not in meta.get("precisions", {}):
        made = ", ".join(["fp32", *meta.get("precisions", {})])
        raise BundleError(
            f"{root / META}: no {precision} graph in this bundle (it has {made}) — export it: "
            f"psa export-seg --precision fp32,{precision} ..."
        )
    if backend == "tensorrt":
        from psa_infer.backends import EngineInfo, TensorRTBackend, sidecar_path

        path = root / engine_file(precision)
        if not path.is_file():
            raise BundleError(f"{path}: missing — build it on this machine (build_seg_engine)")
        side = sidecar_path(path)
        want = (meta["precisions"][precision][KIND] if precision != "fp32" else
                meta["models"][KIND])["sha256"]  # fmt: skip
        if side.is_file() and EngineInfo.read(side).onnx_sha256 != want:
            raise BundleError(f"{path}: built from another {seg_file(precision)}; rebuild it")
        return SegBundle(root, meta, TensorRTBackend(path), precision)
    if backend != "onnxruntime":
        raise ValueError(f"backend: expected onnxruntime or tensorrt, got {backend!r}")
    model = OnnxRuntimeBackend(root / seg_file(precision), providers, threads)
    return SegBundle(root, meta, model, precision)


def segment_items(
    bundle: SegBundle,
    items: Sequence[Sample],
    out_dir: str | os.PathLike,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    progress: bool = True,
    fail_fast: bool = False,
    overwrite: bool = False,
    crf: bool = False,
) -> dict:
    """Write ``out_dir/<id>.png`` (palette label maps) and ``out_dir/labels.jsonl`` for every
    sample, as ``psa label`` does; images already written are skipped (``crf``: refined with
    the dense CRF, ``SegBundle.segment``). Returns the counts of ``psa_infer.runs.run_items``
    (labeled, skipped, failed, ...)."""
    from psa_infer.datasets import load_image, output_path
    from psa_infer.palette import save_label_png
    from psa_infer.pipeline import RECORDS, _Records, label_record
    from psa_infer.runs import run_items

    out_dir = Path(out_dir)
    records = _Records(out_dir / RECORDS)
    names = bundle.classes
    backend = "tensorrt" if bundle.provider == "TensorRT" else "onnxruntime"
    info = {"backend": backend, "provider": bundle.provider, "model": KIND,
            "precision": bundle.precision, "crf": crf}  # fmt: skip

    def is_done(s: Sample) -> bool:
        return not overwrite and output_path(out_dir, s.id, ".png").exists()

    def work(s: Sample) -> None:
        t0 = time.perf_counter()
        label = bundle.segment(load_image(s.image), scales, flip, crf)
        found = [int(c) for c in np.unique(label) if 0 < c < len(names)]
        # The network's classes are what it found, not given ones: recorded as predicted.
        sample = Sample(s.id, s.image)
        row = label_record(sample, label, found, names, None, **info,
                           seconds=round(time.perf_counter() - t0, 4))  # fmt: skip
        records.add(row)  # before the label map: a map on disk always has its record
        save_label_png(output_path(out_dir, s.id, ".png"), label)

    try:
        stats = run_items(
            list(items), out_dir, is_done, work, desc="segment", fail_fast=fail_fast,
            progress=progress,
        )  # fmt: skip
    finally:
        records.close()
    stats["records_file"] = str(records.path) if records.rows else None
    return {"labeled": stats.pop("done"), **stats}

"""The export parity ladder: torch against the bundle under ONNX Runtime (FP32, CPU).

Used by ``psa export --verify`` and by the tests. Two rungs (DESIGN.md, "Model bundle"):

* raw outputs — the same input arrays through both: ``cams`` (every scale and flip the
  pipeline feeds), ``logits``, ``features``, and ``walked`` scores (numpy walk against rw.onnx
  on the same CAMs and features); the largest absolute difference of each, target <= 1e-4 ×
  max(1, the output's magnitude) (1e-3 for the 256-step walk, see ``TOLERANCE``);
* decisions — the final labels of the torch labeler and the bundle labeler (which runs all three
  graphs, rw.onnx included) on the same classes: pixel agreement in percent, the predicted class
  sets of untagged images, and mIoU of each against ground-truth masks where those exist.

TensorRT rungs (FP32 ~1e-3, FP16/INT8 on decisions) need a GPU; ``docs/deploy.md`` says how
to run them on the device.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from psa_infer.bundle import META, open_bundle
from psa_infer.cam import multiscale_cam, normalize_image, scaled_inputs
from psa_infer.datasets import Sample, is_labeled_set, load_image, resolve_source
from psa_infer.errors import PsaError
from psa_infer.metrics import confusion, scores
from psa_infer.palette import load_label_png
from psa_infer.pipeline import Labeler, walk_scores

# Largest allowed |difference| per raw output, relative to the output's scale: the limit is
# TOLERANCE[k] · max(1, max |torch output|), so 1e-4 absolute for O(1) maps (CAMs, logits,
# walked scores) and proportionally more for features of a larger magnitude (float32 rounding
# scales with the values: MobileNetV2's reach 11, ResNet-38's more).
TOLERANCE = {
    # FP32 torch vs ONNX Runtime: the same operators with other kernels and summation orders
    # (measured: 7e-5 on MobileNetV2 features of magnitude 11, ImageNet weights).
    "cams": 1e-4,
    "logits": 1e-4,
    "features": 1e-4,
    # Two float32 walks (numpy, rw.onnx): 256 steps of 2K+1 = 69 products each, rounded in
    # another order, drift apart by up to ~256 · 69 · 6e-8 ≈ 1e-3; measured up to 1.8e-4
    # (MobileNetV2, 160 px), and each is as far from a float64 walk (7e-5, 1.3e-4) as from
    # the other.
    "walked": 1e-3,
}
RAW = tuple(TOLERANCE)
MIN_AGREEMENT = 99.9  # percent of pixels; an argmax may flip where two scores nearly tie


class VerifyError(PsaError):
    """A bundle failed its parity check; ``report`` holds the numbers."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


def verify_images(
    source: str | os.PathLike,
    classes: Sequence[str],
    split: str = "val",
    limit: int | None = 8,
) -> list[Sample]:
    """The first ``limit`` images of ``source``: one image or a folder of images (classes
    predicted), or a data set (``split``, with its image-level labels and masks).

    ``classes`` are the bundle's class names; a data set with other classes is an error.
    """
    src = Path(source)
    plain = src.is_file() or (src.is_dir() and not is_labeled_set(src))
    found = resolve_source(src, tuple(classes), split, predict=plain)
    return found[:limit] if limit else found


class _Tally:
    """What the ladder accumulates over the images."""

    def __init__(self, n_labels: int) -> None:
        self.diff = dict.fromkeys(RAW, 0.0)  # max |torch - bundle| per raw output
        self.scale = dict.fromkeys(RAW, 0.0)  # max |torch| per raw output
        self.same = self.pixels = 0
        self.worst = 100.0
        self.class_checks = self.class_matches = self.with_masks = 0
        self.conf = {side: np.zeros((n_labels, n_labels), np.int64) for side in ("t", "b")}

    def raw(self, what: str, ref: np.ndarray, got: np.ndarray) -> None:
        ref, got = np.asarray(ref, np.float64), np.asarray(got)
        if ref.shape != got.shape:
            raise ValueError(f"{what}: torch gives shape {ref.shape}, the bundle {got.shape}")
        if ref.size:
            self.diff[what] = max(self.diff[what], float(np.abs(ref - got).max()))
            self.scale[what] = max(self.scale[what], float(np.abs(ref).max()))

    def labels(self, label_t: np.ndarray, label_b: np.ndarray, mask: Path | None) -> None:
        same = int((label_t == label_b).sum())
        self.same, self.pixels = self.same + same, self.pixels + label_t.size
        self.worst = min(self.worst, 100.0 * same / label_t.size)
        if mask is not None:
            gt = load_label_png(mask)
            n = len(self.conf["t"])
            self.conf["t"] += confusion(gt, label_t, n)
            self.conf["b"] += confusion(gt, label_b, n)
            self.with_masks += 1


def _compare(t: Labeler, b: Labeler, item: Sample, threshold: float, tally: _Tally) -> None:
    """Every rung on one image: ``t`` the torch labeler, ``b`` the bundle's."""
    img = load_image(item.image)
    x = normalize_image(img, b.mean, b.std)[None]
    logits = t.classify(x)
    tally.raw("logits", logits, b.classify(x))
    keys = item.labels
    if keys is None:
        keys = t.predict_classes(img, threshold)
        tally.class_checks += 1
        tally.class_matches += keys == b.predict_classes(img, threshold)
        keys = keys or (int(np.argmax(logits[0])) + 1,)
    for batch in scaled_inputs(img, b.scales, b.mean, b.std, b.flip):
        tally.raw("cams", t.cam_forward(batch), b.cam_forward(batch))
    feats = t.features(img)
    tally.raw("features", feats, b.features(img))
    cams = multiscale_cam(t.cam_forward, img, keys, b.scales, b.mean, b.std, b.flip)
    walked = walk_scores(cams, feats, b.walk_params)
    tally.raw("walked", walked, walk_scores(cams, feats, b.walk_params, b.walk))
    tally.labels(t.label(img, keys, cams=cams), b.label(img, keys), item.mask)


def verify_bundle(
    bundle_dir: str | os.PathLike,
    cam_ckpt: str | os.PathLike,
    aff_ckpt: str | os.PathLike,
    images: Sequence[Sample],
    *,
    class_threshold: float = 0.5,
    tolerance: dict[str, float] | None = None,
    min_agreement: float = MIN_AGREEMENT,
) -> dict:
    """Run the ladder on ``images``; returns the report (``format_report`` prints it).

    Both sides run on the CPU. Images without classes are labeled with the classes the torch
    classifier predicts above ``class_threshold`` (its top class when none does, so that the
    walk always runs). ``report["ok"]``: every raw difference within its limit (``tolerance``
    per output, default ``TOLERANCE``, times max(1, max |torch output|)) and the pixel
    agreement >= ``min_agreement`` percent.
    """
    from psa_train.checkpoint import sha256
    from psa_train.config import LabelConfig, MakeCamConfig
    from psa_train.label import torch_labeler

    if not images:
        raise ValueError("verify: no images to verify on")
    tolerance = {**TOLERANCE, **(tolerance or {})}
    cpu = ["CPUExecutionProvider"]
    with open_bundle(bundle_dir, "onnxruntime", cpu, walk="onnx") as bundle:
        meta, b = bundle.meta, bundle.labeler
        for kind, ckpt in (("cam", cam_ckpt), ("aff", aff_ckpt)):
            if meta["sources"][kind]["sha256"] != sha256(ckpt):
                raise ValueError(
                    f"{ckpt}: not the {kind} checkpoint that {Path(bundle_dir) / META} was "
                    "exported from (sha256 differs)"
                )
        t, _ = torch_labeler(cam_ckpt, aff_ckpt, LabelConfig(device="cpu"), MakeCamConfig())
        # The same settings on both sides: the bundle's, read from its meta.json.
        t = dataclasses.replace(
            t, mean=b.mean, std=b.std, scales=b.scales, flip=b.flip, walk_params=b.walk_params
        )
        tally = _Tally(len(meta["classes"]))
        for item in images:
            _compare(t, b, item, class_threshold, tally)
        provider = bundle.providers["cam"]
    agreement = 100.0 * tally.same / tally.pixels
    miou = None
    if tally.with_masks:
        mt, mb = (scores(tally.conf[side])["miou"] for side in ("t", "b"))
        miou = {"torch": mt, "bundle": mb, "delta": mb - mt, "images": tally.with_masks}
    limit = {k: tolerance[k] * max(1.0, tally.scale[k]) for k in RAW}
    checks = tally.class_checks
    return {
        "images": len(images),
        "provider": provider,
        "max_abs_diff": tally.diff,
        "max_abs_torch": tally.scale,
        "tolerance": tolerance,
        "limit": limit,
        "label_agreement": agreement,
        "worst_image_agreement": tally.worst,
        "min_agreement": min_agreement,
        "class_agreement": 100.0 * tally.class_matches / checks if checks else None,
        "miou": miou,
        "ok": all(tally.diff[k] <= limit[k] for k in RAW) and agreement >= min_agreement,
    }


def check_report(report: dict) -> None:
    """Raise VerifyError (one line naming the failing rungs) unless ``report["ok"]``."""
    if report["ok"]:
        return
    limit = report["limit"]
    bad = [
        f"{k} differ by {v:.2e} > {limit[k]:.1e}"
        for k, v in report["max_abs_diff"].items()
        if v > limit[k]
    ]
    if report["label_agreement"] < report["min_agreement"]:
        bad.append(
            f"labels agree on {report['label_agreement']:.3f}% of pixels < "
            f"{report['min_agreement']}%"
        )
    raise VerifyError("verification failed: " + "; ".join(bad), report)


def format_report(report: dict) -> str:
    """The report as a plain-text table, one rung per line."""
    limit = report["limit"]
    rows = [("rung", "measure", "value", "target", "")]
    for k, v in report["max_abs_diff"].items():
        what = "max |numpy - rw.onnx|" if k == "walked" else "max |torch - onnx|"
        rows.append((k, what, f"{v:.2e}", f"<= {limit[k]:.1e}", _ok(v <= limit[k])))
    agree, need = report["label_agreement"], report["min_agreement"]
    rows.append(("labels", "pixel agreement", f"{agree:.3f} %", f">= {need} %", _ok(agree >= need)))
    rows.append(("", "worst image", f"{report['worst_image_agreement']:.3f} %", "", ""))
    if report["class_agreement"] is not None:
        rows.append(("classes", "same predicted set", f"{report['class_agreement']:.1f} %", "", ""))
    if report["miou"]:
        m = report["miou"]
        rows.append(("mIoU", "torch / bundle", f"{m['torch']:.2f} / {m['bundle']:.2f}", "", ""))
        rows.append(("", "delta (bundle - torch)", f"{m['delta']:+.3f}", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    head = f"{report['images']} images, ONNX Runtime {report['provider']}, rw.onnx walk"
    return head + "\n" + "\n".join(lines)


def _ok(passed: bool) -> str:
    return "ok" if passed else "FAIL"

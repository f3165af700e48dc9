"""The export parity ladder: torch against the bundle under ONNX Runtime (FP32, CPU).

Used by ``psa export --verify`` and by the tests. Two rungs (DESIGN.md, "Model bundle"):

* raw outputs — the same input arrays through both: ``cams`` (every scale and flip the
  pipeline feeds), ``logits``, ``features``, and ``walked`` scores (numpy walk against rw.onnx
  on the same CAMs and features); the largest absolute difference of each, target <= 1e-4 ×
  max(1, the output's magnitude) (1e-3 for the 256-step walk, see ``TOLERANCE``);
* decisions — the final labels of the torch labeler and the bundle labeler (which runs all three
  graphs, rw.onnx included) on the same classes: pixel agreement in percent, the predicted class
  sets of untagged images, and mIoU of each against ground-truth masks where those exist.

Then, for each precision variant in the bundle (``psa export --precision``, export/precision.py),
the variant's graphs against the float32 graphs, both under ONNX Runtime on the CPU:

* raw outputs — max |fp32 - variant| of ``cams``, ``logits`` and ``features`` (reported, not
  judged: what matters is the decision);
* decisions — pixel agreement of the final labels (the same classes, the same float32 walk)
  and mIoU against the masks: ``VARIANT_TARGETS`` per precision.

TensorRT rungs (FP32 ~1e-3, FP16/INT8 engines on decisions) need a GPU; ``docs/deploy.md`` says
how to run them on the device.
"""

from __future__ import annotations

import contextlib
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
# Per precision variant, against the float32 graphs (issue 11): the least pixel agreement of
# the final labels (percent), and the largest mIoU drop in points (None: not judged).
VARIANT_TARGETS = {
    "fp16": {"min_agreement": 99.5, "max_miou_drop": None},
    "int8": {"min_agreement": 97.0, "max_miou_drop": 1.0},
}
VARIANT_RAW = ("cams", "logits", "features")


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


def verify_truth(source: str | os.PathLike, classes: Sequence[str], split: str = "val"):
    """The ground truth of the images of ``verify_images(source, classes, split)`` for the
    ladder's mIoU: ``DataSet.ground_truth`` of a data set (mask PNGs, or COCO annotations
    rendered), None for images without any."""
    from psa_infer.datasets import open_dataset

    src = Path(source)
    if src.is_file() or not is_labeled_set(src):
        return None
    ds = open_dataset(src, classes=tuple(classes))
    ds.split(split)  # reads the split's annotations (COCO)

    def truth(item: Sample) -> np.ndarray | None:
        return ds.ground_truth(item) if ds.has_ground_truth(item) else None

    return truth


def _mask_truth(item: Sample) -> np.ndarray | None:
    """The ladder's default ground truth: the sample's mask PNG, if it has one."""
    return load_label_png(item.mask) if item.mask is not None else None


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

    def labels(self, label_t: np.ndarray, label_b: np.ndarray, gt: np.ndarray | None) -> None:
        same = int((label_t == label_b).sum())
        self.same, self.pixels = self.same + same, self.pixels + label_t.size
        self.worst = min(self.worst, 100.0 * same / label_t.size)
        if gt is not None:
            n = len(self.conf["t"])
            self.conf["t"] += confusion(gt, label_t, n)
            self.conf["b"] += confusion(gt, label_b, n)
            self.with_masks += 1


def _compare(
    t: Labeler, b: Labeler, item: Sample, gt, threshold: float, tally: _Tally
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Every rung on one image: ``t`` the torch labeler, ``b`` the bundle's.

    Returns what the variant rungs reuse: the classes walked, the image and the bundle's labels.
    """
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
    label_b = b.label(img, keys)
    tally.labels(t.label(img, keys, cams=cams), label_b, gt)
    return keys, img, label_b


def _compare_variant(
    b: Labeler, v: Labeler, img: np.ndarray, keys, label_b: np.ndarray, gt, tally: _Tally
) -> None:
    """The variant rungs on one image: ``b`` the float32 graphs, ``v`` a precision variant."""
    x = normalize_image(img, b.mean, b.std)[None]
    tally.raw("logits", b.classify(x), v.classify(x))
    for batch in scaled_inputs(img, b.scales, b.mean, b.std, b.flip):
        tally.raw("cams", b.cam_forward(batch), v.cam_forward(batch))
    tally.raw("features", b.features(img), v.features(img))
    tally.labels(label_b, v.label(img, keys), gt)


def _variant_report(tally: _Tally, precision: str, targets: dict) -> dict:
    """One variant's rungs; ``ok``: agreement and mIoU drop within ``targets``."""
    agreement = 100.0 * tally.same / tally.pixels
    miou = None
    if tally.with_masks:
        m32, mv = (scores(tally.conf[side])["miou"] for side in ("t", "b"))
        miou = {"fp32": m32, precision: mv, "delta": mv - m32, "images": tally.with_masks}
    drop = targets.get("max_miou_drop")
    ok = agreement >= targets["min_agreement"]
    if miou is not None and drop is not None:
        ok = ok and miou["delta"] >= -drop
    return {
        "max_abs_diff": {k: tally.diff[k] for k in VARIANT_RAW},
        "max_abs_fp32": {k: tally.scale[k] for k in VARIANT_RAW},
        "label_agreement": agreement,
        "worst_image_agreement": tally.worst,
        "min_agreement": targets["min_agreement"],
        "max_miou_drop": drop,
        "miou": miou,
        "ok": ok,
    }


def verify_bundle(
    bundle_dir: str | os.PathLike,
    cam_ckpt: str | os.PathLike,
    aff_ckpt: str | os.PathLike,
    images: Sequence[Sample],
    *,
    class_threshold: float = 0.5,
    tolerance: dict[str, float] | None = None,
    min_agreement: float = MIN_AGREEMENT,
    variant_targets: dict[str, dict] | None = None,
    truth=None,
) -> dict:
    """Run the ladder on ``images``; returns the report (``format_report`` prints it).

    ``truth(sample)``: its ground truth for the mIoU rungs, or None (``verify_truth``; default:
    the sample's mask PNG).

    Both sides run on the CPU. Images without classes are labeled with the classes the torch
    classifier predicts above ``class_threshold`` (its top class when none does, so that the
    walk always runs). ``report["ok"]``: every raw difference within its limit (``tolerance``
    per output, default ``TOLERANCE``, times max(1, max |torch output|)) and the pixel
    agreement >= ``min_agreement`` percent, and each precision variant of the bundle within its
    ``variant_targets`` (default ``VARIANT_TARGETS``; ``report["precisions"][p]["ok"]``).
    """
    from psa_train.checkpoint import sha256
    from psa_train.config import LabelConfig, MakeCamConfig
    from psa_train.label import torch_labeler

    if not images:
        raise ValueError("verify: no images to verify on")
    tolerance = {**TOLERANCE, **(tolerance or {})}
    targets = {**VARIANT_TARGETS, **(variant_targets or {})}
    cpu = ["CPUExecutionProvider"]
    with contextlib.ExitStack() as stack:
        bundle = stack.enter_context(open_bundle(bundle_dir, "onnxruntime", cpu, walk="onnx"))
        meta, b = bundle.meta, bundle.labeler
        variants = {
            p: stack.enter_context(
                open_bundle(bundle_dir, "onnxruntime", cpu, walk="onnx", precision=p)
            ).labeler
            for p in meta.get("precisions", {})
        }
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
        v_tally = {p: _Tally(len(meta["classes"])) for p in variants}
        truth = truth or _mask_truth
        for item in images:
            gt = truth(item)
            keys, img, label_b = _compare(t, b, item, gt, class_threshold, tally)
            for p, v in variants.items():
                _compare_variant(b, v, img, keys, label_b, gt, v_tally[p])
        provider = bundle.providers["cam"]
    agreement = 100.0 * tally.same / tally.pixels
    miou = None
    if tally.with_masks:
        mt, mb = (scores(tally.conf[side])["miou"] for side in ("t", "b"))
        miou = {"torch": mt, "bundle": mb, "delta": mb - mt, "images": tally.with_masks}
    limit = {k: tolerance[k] * max(1.0, tally.scale[k]) for k in RAW}
    checks = tally.class_checks
    precisions = {p: _variant_report(v_tally[p], p, targets[p]) for p in variants}
    ok = all(tally.diff[k] <= limit[k] for k in RAW) and agreement >= min_agreement
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
        "precisions": precisions,
        "ok": ok and all(r["ok"] for r in precisions.values()),
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
    for p, r in report.get("precisions", {}).items():
        if r["label_agreement"] < r["min_agreement"]:
            bad.append(
                f"{p} labels agree with fp32 on {r['label_agreement']:.3f}% of pixels < "
                f"{r['min_agreement']}%"
            )
        drop = r["max_miou_drop"]
        if r["miou"] and drop is not None and r["miou"]["delta"] < -drop:
            bad.append(f"{p} mIoU {r['miou']['delta']:+.2f} points from fp32, beyond -{drop}")
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
    for p, r in report.get("precisions", {}).items():
        for k, v in r["max_abs_diff"].items():
            scale = r["max_abs_fp32"][k]
            what = f"max |fp32 - {p}| (of {scale:.3g})"
            rows.append((f"{p} {k}", what, f"{v:.2e}", "", ""))
        agree, need = r["label_agreement"], r["min_agreement"]
        ok = _ok(agree >= need)
        rows.append((f"{p} labels", "agreement with fp32", f"{agree:.3f} %", f">= {need} %", ok))
        rows.append(("", "worst image", f"{r['worst_image_agreement']:.3f} %", "", ""))
        if r["miou"]:
            m, drop = r["miou"], r["max_miou_drop"]
            rows.append((f"{p} mIoU", f"fp32 / {p}", f"{m['fp32']:.2f} / {m[p]:.2f}", "", ""))
            target, ok = ("", "") if drop is None else (f">= -{drop}", _ok(m["delta"] >= -drop))
            rows.append(("", f"delta ({p} - fp32)", f"{m['delta']:+.3f}", target, ok))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    head = f"{report['images']} images, ONNX Runtime {report['provider']}, rw.onnx walk"
    return head + "\n" + "\n".join(lines)


def _ok(passed: bool) -> str:
    return "ok" if passed else "FAIL"

"""``psa export``: two checkpoints → a model bundle (``psa build-engine``, in the torch-free
``export/engine.py``, turns one into TensorRT engines).

The bundle (``psa_infer/bundle.py`` reads it) is ``cam.onnx``, ``aff.onnx``, ``rw.onnx`` — all
at one opset — and ``meta.json``::

    schema_version, toolkit_version, exporter
    classes                      background first
    mean, std, color_order       normalisation of RGB / 255
    stride, radius, beta, steps, pairs
    alpha {label, low, high}     background powers: labeling; make-aff-labels' low/high
    scales, flip                 multi-scale CAM inference
    opset
    models {cam|aff|rw: {file, sha256, inputs, outputs}}
                                 tensors as {name, dtype, shape}; a named dimension is dynamic
    sources {cam|aff: {file, sha256, backbone}}

It is written into a temporary sibling directory and renamed into place, so a reader never sees
half a bundle; re-exporting over a bundle replaces it whole (engines included: they were built
from the old ONNX files).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from export.onnx_export import export_aff, export_cam
from export.rw_graph import save_rw_model
from psa_infer.artifacts import file_sha256
from psa_infer.bundle import (
    META,
    MODELS,
    SCHEMA_VERSION,
    BundleError,
    load_meta,
    onnx_io_specs,
    read_onnx,
)
from psa_infer.datasets import Sample
from psa_infer.pipeline import STRIDE
from psa_train.config import AffLabelsConfig, LabelConfig, MakeCamConfig

VERIFY_REPORT = "verify.json"


def _check_target(out: Path) -> None:
    """Refuse to replace anything but an earlier bundle (or an empty directory)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / META).is_file())):
        raise BundleError(f"{out}: exists and is not a psa bundle (no {META}); not replacing it")


def _publish(stage: Path, out: Path) -> None:
    """Move the finished ``stage`` directory to ``out``, replacing an earlier bundle there."""
    if not out.exists():
        os.replace(stage, out)
        return
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    os.replace(out, old)
    os.replace(stage, out)
    shutil.rmtree(old)


def _model_entry(path: Path, model) -> dict:
    inputs, outputs = onnx_io_specs(model)
    return {"file": path.name, "sha256": file_sha256(path), "inputs": inputs, "outputs": outputs}


def export_bundle(
    cam_ckpt: str | os.PathLike,
    aff_ckpt: str | os.PathLike,
    out_dir: str | os.PathLike,
    label_cfg: LabelConfig,
    make_cam_cfg: MakeCamConfig,
    opset: int = 17,
    verify_images: Sequence[Sample] | None = None,
    aff_labels_cfg: AffLabelsConfig | None = None,
    exporter: str = "torchscript",
    precisions: Sequence[str] = ("fp32",),
    calib_images: Sequence[Sample] | None = None,
    verify_truth=None,
) -> Path:
    """Export a CAM and an affinity checkpoint to a bundle at ``out_dir``; returns its path.

    ``label_cfg`` gives the walk (alpha, beta, 2**logt steps, radius, pairs), ``make_cam_cfg``
    the scales and flip; ``aff_labels_cfg`` the low/high alphas recorded for reference.
    ``verify_images`` (``Sample``s, from ``export.verify.verify_images``): run the parity
    ladder on the finished bundle (mIoU against ``verify_truth(sample)``, default the samples'
    mask PNGs) and keep its report as ``verify.json``; a failed check raises
    ``export.verify.VerifyError`` and leaves ``out_dir`` as it was. ``precisions``: besides the
    float32 graphs, write the "fp16" / "int8" variants of cam.onnx and aff.onnx
    (``export/precision.py``; INT8 calibrated on ``calib_images``, training images) and put
    them on the ladder too.
    """
    from psa_train import __version__
    from psa_train.checkpoint import CheckpointError, sha256
    from psa_train.train_aff import load_aff_model
    from psa_train.train_cam import load_cam_model

    out = Path(out_dir)
    _check_target(out)
    cam_net, cam_meta = load_cam_model(cam_ckpt)
    aff_net, aff_meta = load_aff_model(aff_ckpt)
    if cam_meta["classes"] != aff_meta["classes"]:
        raise CheckpointError(
            f"{aff_ckpt}: trained for classes {aff_meta['classes'][1:]}, but {cam_ckpt} "
            f"predicts {cam_meta['classes'][1:]}"
        )
    for key in ("mean", "std"):
        if [float(v) for v in cam_meta[key]] != [float(v) for v in aff_meta[key]]:
            raise CheckpointError(
                f"{aff_ckpt}: trained with {key} {aff_meta[key]}, {cam_ckpt} with "
                f"{cam_meta[key]}; one bundle normalises images one way"
            )
    aff_labels_cfg = aff_labels_cfg or AffLabelsConfig()
    walk = label_cfg.walk()
    # A sibling of the target, so that the final rename stays on one file system.
    stage = out.resolve().with_name(f".{out.resolve().name}.tmp{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        models = {
            "cam": export_cam(cam_net, stage / MODELS["cam"][0], opset, exporter),
            "aff": export_aff(aff_net, stage / MODELS["aff"][0], opset, exporter),
        }
        rw_path = save_rw_model(stage / MODELS["rw"][0], **walk.to_meta(), opset=opset)
        models["rw"] = read_onnx(rw_path)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "toolkit_version": __version__,
            "exporter": exporter,
            "classes": list(cam_meta["classes"]),
            "mean": [float(v) for v in aff_meta["mean"]],
            "std": [float(v) for v in aff_meta["std"]],
            "color_order": "RGB",
            "stride": STRIDE,
            **walk.to_meta(),
            "normalize": bool(walk.normalize),
            "crf_sxy": float(walk.crf_sxy),
            # Only where it differs from the features' stride, so that stride-8 bundles stay
            # what older runtimes read.
            **({"walk_stride": int(walk.stride)} if walk.stride != STRIDE else {}),
            "alpha": {
                "label": float(walk.alpha),
                "low": float(aff_labels_cfg.low_alpha),
                "high": float(aff_labels_cfg.high_alpha),
            },
            "scales": [float(s) for s in make_cam_cfg.scales],
            "flip": bool(make_cam_cfg.flip),
            "opset": opset,
            "models": {k: _model_entry(stage / MODELS[k][0], m) for k, m in models.items()},
            "sources": {
                kind: {"file": Path(p).name, "sha256": sha256(p), "backbone": m["backbone"]}
                for kind, p, m in (("cam", cam_ckpt, cam_meta), ("aff", aff_ckpt, aff_meta))
            },
        }
        if any(p != "fp32" for p in precisions):
            from export.precision import write_variants

            meta["precisions"] = write_variants(stage, meta, precisions, calib_images)
        (stage / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        load_meta(stage)  # what the runtime will check, checked before anyone sees the bundle
        if verify_images:
            from export.verify import check_report, verify_bundle

            report = verify_bundle(stage, cam_ckpt, aff_ckpt, verify_images, truth=verify_truth)
            text = json.dumps(report, indent=2) + "\n"
            (stage / VERIFY_REPORT).write_text(text, encoding="utf-8")
            check_report(report)
        _publish(stage, out.resolve())
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out

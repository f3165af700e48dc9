"""``psa export``: two checkpoints → a model bundle; ``psa build-engine``: bundle → engines.

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
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from export.engine import EngineError, build_engine
from export.onnx_export import export_aff, export_cam
from export.rw_graph import save_rw_model
from psa_infer.artifacts import file_sha256
from psa_infer.backends import CAM_IMAGE, RW_FEATURES, RW_SCORES
from psa_infer.bundle import (
    META,
    MODELS,
    SCHEMA_VERSION,
    BundleError,
    engine_path,
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
) -> Path:
    """Export a CAM and an affinity checkpoint to a bundle at ``out_dir``; returns its path.

    ``label_cfg`` gives the walk (alpha, beta, 2**logt steps, radius, pairs), ``make_cam_cfg``
    the scales and flip; ``aff_labels_cfg`` the low/high alphas recorded for reference.
    ``verify_images`` (``Sample``s, from ``export.verify.verify_images``): run the parity
    ladder on the finished bundle and keep its report as ``verify.json``; a failed check raises
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
    steps = 2**label_cfg.logt
    # A sibling of the target, so that the final rename stays on one file system.
    stage = out.resolve().with_name(f".{out.resolve().name}.tmp{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        models = {
            "cam": export_cam(cam_net, stage / MODELS["cam"][0], opset, exporter),
            "aff": export_aff(aff_net, stage / MODELS["aff"][0], opset, exporter),
        }
        rw_path = save_rw_model(
            stage / MODELS["rw"][0],
            radius=label_cfg.radius,
            beta=label_cfg.beta,
            steps=steps,
            pairs=label_cfg.pairs,
            opset=opset,
        )
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
            "radius": label_cfg.radius,
            "beta": float(label_cfg.beta),
            "steps": steps,
            "pairs": label_cfg.pairs,
            "alpha": {
                "label": float(label_cfg.alpha),
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

            report = verify_bundle(stage, cam_ckpt, aff_ckpt, verify_images)
            text = json.dumps(report, indent=2) + "\n"
            (stage / VERIFY_REPORT).write_text(text, encoding="utf-8")
            check_report(report)
        _publish(stage, out.resolve())
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------- engines

DEFAULT_SIDES = (32, 448, 512)  # image sides MIN, OPT, MAX in pixels (VOC images are <= 500)
RW_PRECISION = "fp32"


def _pad8(n: float) -> int:
    return int(math.ceil(n / STRIDE) * STRIDE)


def engine_profiles(meta: dict, sides: Sequence[int] = DEFAULT_SIDES) -> dict[str, dict]:
    """Optimisation profiles {model: {input: (min, opt, max)}} for images of ``sides`` pixels.

    ``sides`` = (MIN, OPT, MAX) sides of the images to label (each of H and W anywhere in
    [MIN, MAX]). From them: cam.onnx sees every scale of meta.json (side × scale) in batches of
    2 with flip; aff.onnx sees the image padded to a multiple of 8; rw.onnx sees the stride-8
    grid with 1 … len(classes) score channels (background + present classes) and the feature
    depth D of aff.onnx.
    """
    lo, opt, hi = (int(s) for s in sides)
    if not 1 <= lo <= opt <= hi:
        raise EngineError(f"profile: expected image sides 1 <= MIN <= OPT <= MAX, got {sides}")
    batch = 2 if meta["flip"] else 1
    s_lo, s_hi = min(meta["scales"]), max(meta["scales"])
    cam_lo = max(1, round(lo * s_lo))
    cam_opt = max(cam_lo, opt)  # scale 1 is the typical input; all scales > 1 move it up
    cam_hi = max(cam_opt, math.ceil(hi * s_hi))
    depth = meta["models"]["aff"]["outputs"][0]["shape"][1]  # fixed: load_meta checks it
    g_lo, g_opt, g_hi = (_pad8(s) // STRIDE for s in (lo, opt, hi))
    n = len(meta["classes"])
    return {
        "cam": {
            CAM_IMAGE: (
                (1, 3, cam_lo, cam_lo),
                (batch, 3, cam_opt, cam_opt),
                (batch, 3, cam_hi, cam_hi),
            )
        },
        "aff": {CAM_IMAGE: tuple((1, 3, _pad8(s), _pad8(s)) for s in (lo, opt, hi))},
        "rw": {
            RW_SCORES: ((1, g_lo, g_lo), (min(2, n), g_opt, g_opt), (n, g_hi, g_hi)),
            RW_FEATURES: tuple((depth, g, g) for g in (g_lo, g_opt, g_hi)),
        },
    }


def build_bundle_engines(
    bundle_dir: str | os.PathLike,
    precision: str = "fp32",
    calib_dir: str | os.PathLike | None = None,
    sides: Sequence[int] = DEFAULT_SIDES,
    timing_cache: str | os.PathLike | None = None,
    workspace_gb: float = 4.0,
) -> list[Path]:
    """Build ``cam.engine``, ``aff.engine`` and ``rw.engine`` beside the bundle's ONNX files.

    Mean/std for INT8 calibration come from meta.json. The walk (rw) is always built in FP32:
    INT8 calibration feeds images, which rw.onnx does not take, and 256 steps of FP16 rounding
    would buy little on a small, memory-bound graph.
    """
    from export.engine import PRECISIONS

    root = Path(bundle_dir)
    meta = load_meta(root)
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    profiles = engine_profiles(meta, sides)
    built = []
    for name, (file, _, _) in MODELS.items():
        built.append(
            build_engine(
                root / file,
                engine_path(root, name),
                precision=RW_PRECISION if name == "rw" else precision,
                calib_dir=calib_dir if name != "rw" else None,
                profile=profiles[name],
                timing_cache=timing_cache,
                workspace_gb=workspace_gb,
                mean=meta["mean"],
                std=meta["std"],
            )
        )
    return built

"""ONNX → TensorRT engines (TensorRT 10.3+ and 11.x), with the sidecar the runtime checks.

Torch-free: ``psa build-engine`` runs on a Jetson that has TensorRT and numpy but no PyTorch
(a subprocess test imports this module and runs the command with ``import torch`` failing).

``build_engine`` builds one ONNX file as it is: a strongly typed network (TensorRT 11 knows no
other kind; 10.x has it since 10.0), so each tensor keeps the type the graph gives it. Reduced
precision is a property of the graph — FP16 variants carry casts, INT8 variants explicit Q/DQ
nodes (``export/precision.py``) — so there are no builder precision flags and no calibrator.
One optimisation profile over the input shapes, optionally a timing cache, and ``<engine>.json``
(``psa_infer.backends.EngineInfo``): GPU name, TensorRT version, precision, the ONNX file and its
sha256, the profile and the image sides it covers.

``build_bundle_engines`` does this for a bundle's cam, aff and rw graphs of one precision with
the profiles of ``psa_infer.profiles.engine_profiles`` (the shapes the runtime feeds, tiles
included). Everything up to the build is checked first, without TensorRT, so bad arguments fail
the same way on a CPU-only machine; tensorrt and cuda-python are imported only to build. What a
user can cause — an unreadable ONNX file, a missing precision variant, a bad profile, a graph
TensorRT refuses, a TensorRT older than 10.3 — is a ``PsaError`` naming the file or option.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from psa_infer.artifacts import file_sha256
from psa_infer.backends import (
    EngineInfo,
    format_shape,
    gpu_name,
    import_cudart,
    import_tensorrt,
    shape_matches,
    sidecar_path,
)
from psa_infer.bundle import (
    META,
    MODELS,
    PRECISIONS,
    engine_path,
    load_meta,
    model_entries,
    onnx_io_specs,
    read_onnx,
)
from psa_infer.errors import PsaError
from psa_infer.profiles import DEFAULT_SIDES, Profile, check_sides, engine_profiles

_SHAPE = re.compile(r"^\d+(x\d+)*$")


class EngineError(PsaError):
    """An engine cannot be built as asked; the one-line message names the file or option."""


def parse_profile(spec: str | Sequence[str]) -> Profile:
    """``"image:1x3x256x256,1x3x512x512,1x3x1024x1024"`` → {"image": (min, opt, max)}.

    Several inputs: a list of such strings, or one string joined with ``;``.
    """
    items = spec.split(";") if isinstance(spec, str) else list(spec)
    profile: Profile = {}
    for item in (i.strip() for i in items):
        name, _, shapes = item.partition(":")
        parts = [p.strip() for p in shapes.split(",")]
        if not name or len(parts) != 3 or not all(_SHAPE.match(p) for p in parts):
            raise EngineError(
                f"profile: expected 'name:MIN,OPT,MAX' with shapes like 1x3x512x512, got {item!r}"
            )
        profile[name.strip()] = tuple(tuple(int(d) for d in p.split("x")) for p in parts)
    return profile


def check_profile(inputs: Sequence[dict], profile: Mapping[str, tuple]) -> Profile:
    """The profile, checked against the graph's inputs (names, ranks, fixed dims, min<=opt<=max)."""
    by_name = {i["name"]: i for i in inputs}
    for name in profile:
        if name not in by_name:
            raise EngineError(f"profile: unknown input {name!r} (inputs: {', '.join(by_name)})")
    out: Profile = {}
    for name, spec in by_name.items():
        dims = spec["shape"]
        shown = format_shape(dims)
        if name not in profile:
            if all(isinstance(d, int) for d in dims):
                out[name] = (tuple(dims),) * 3  # static input: the profile is its shape
                continue
            raise EngineError(
                f"{name}: dynamic shape {shown} needs a profile, e.g. "
                f"'{name}:1x3x256x256,1x3x512x512,1x3x1024x1024'"
            )
        shapes = tuple(tuple(int(d) for d in s) for s in profile[name])
        fixed = all(shape_matches(dims, s) for s in shapes)
        ordered = (
            fixed
            and len(shapes) == 3
            and all(0 < a <= b <= c for a, b, c in zip(*shapes, strict=True))
        )
        if not fixed or not ordered:
            raise EngineError(
                f"{name}: expected min <= opt <= max shapes matching {shown}, got "
                + ", ".join("x".join(map(str, s)) for s in shapes)
            )
        out[name] = shapes
    return out


def write_sidecar(engine_path: str | Path, info: EngineInfo) -> Path:
    """Write ``<engine>.json`` beside the engine; ``EngineInfo.read`` reads it back."""
    path = sidecar_path(engine_path)
    path.write_text(info.to_json(), encoding="utf-8")
    return path


def _check_args(onnx_path: Path, precision: str, workspace_gb) -> None:
    if not onnx_path.is_file():
        raise EngineError(f"{onnx_path}: no such ONNX file")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(workspace_gb, bool) or not (
        isinstance(workspace_gb, (int, float)) and workspace_gb > 0
    ):
        raise ValueError(f"workspace_gb: expected a number > 0, got {workspace_gb!r}")


def _strongly_typed(trt) -> int:
    """``create_network``'s flags: strongly typed. TensorRT 11 keeps the flag but ignores it
    (every network is strongly typed there); should a later version drop it, 0 means the same."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    profile: Mapping[str, tuple] | str | Sequence[str] | None = None,
    precision: str = "fp32",
    timing_cache: str | os.PathLike | None = None,
    workspace_gb: float = 4.0,
    image_sides: Sequence[int] | None = None,
) -> Path:
    """Build ``engine_path`` from ``onnx_path`` on this machine's GPU; returns the engine path.

    ``profile``: {input: (min, opt, max)} shapes, or strings for ``parse_profile``; required
    for every input with dynamic dimensions. ``precision`` names what the graph computes in
    (fp32, or an fp16/int8 variant); it is recorded, not applied — the graph's own types
    decide — except that "fp32" also turns TF32 off (TensorRT allows TF32 convolutions and
    matmuls by default on Ampere and later; "fp32" means FP32, so the ladder's FP32 rung
    compares like with like). ``timing_cache``: a file read if present and written after the
    build. ``image_sides``: the (MIN, OPT, MAX) image pixels the profile was made for, kept in
    the sidecar so that the runtime can refuse an image by its size.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _check_args(onnx_path, precision, workspace_gb)
    inputs, outputs = onnx_io_specs(read_onnx(onnx_path))
    if isinstance(profile, (str, list, tuple)):
        profile = parse_profile(profile)
    shapes = check_profile(inputs, profile or {})
    sides = list(check_sides(image_sides)) if image_sides is not None else []

    trt, cudart = import_tensorrt(), import_cudart()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [parser.get_error(i) for i in range(parser.num_errors)]
        errors = "; ".join(f"node {e.node()}: {e.desc()}" for e in errs)
        raise EngineError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    cache_path = Path(timing_cache) if timing_cache else None
    old = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(old), False)  # False: refuse a foreign cache

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"{onnx_path}: TensorRT failed to build an engine (its log says why)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(plan))
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    info = EngineInfo(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name(cudart),
        precision=precision,
        onnx_sha256=file_sha256(onnx_path),
        profile={k: [list(s) for s in v] for k, v in shapes.items()},
        inputs=inputs,
        outputs=outputs,
        onnx_file=onnx_path.name,
        image_sides=sides,
    )
    write_sidecar(engine_path, info)
    return engine_path


def bundle_builds(
    bundle_dir: str | os.PathLike, precision: str = "fp32", sides: Sequence[int] = DEFAULT_SIDES
) -> list[tuple[Path, Path, dict]]:
    """What ``build_bundle_engines`` would build, checked without TensorRT: a list of
    (ONNX file, engine file, profile) for cam, aff and rw.

    The ONNX files are the ``precision`` variant's, as meta.json lists them (rw.onnx has no
    variant: the walk stays float32); the engines go beside them (``engine_path``).
    """
    root = Path(bundle_dir)
    meta = load_meta(root)
    entries = model_entries(meta, precision, root / META)
    profiles = engine_profiles(meta, sides)
    return [
        (root / entries[name]["file"], engine_path(root, name, precision), profiles[name])
        for name in MODELS
    ]


def build_bundle_engines(
    bundle_dir: str | os.PathLike,
    precision: str = "fp32",
    sides: Sequence[int] = DEFAULT_SIDES,
    timing_cache: str | os.PathLike | None = None,
    workspace_gb: float = 4.0,
) -> list[Path]:
    """Build the cam, aff and rw engines of ``precision`` beside the bundle's ONNX files, for
    images of ``sides`` = (MIN, OPT, MAX) pixels; returns the engine paths."""
    builds = bundle_builds(bundle_dir, precision, sides)
    return [
        build_engine(
            onnx,
            engine,
            profile,
            precision="fp32" if onnx.name == MODELS["rw"][0] else precision,
            timing_cache=timing_cache,
            workspace_gb=workspace_gb,
            image_sides=sides,
        )
        for onnx, engine, profile in builds
    ]

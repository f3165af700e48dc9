"""ONNX → TensorRT engine (TensorRT 10 API), with the sidecar the runtime checks.

``build_engine`` parses the ONNX file (every parser error reported), builds one optimisation
profile over the input shapes, FP32/FP16, or INT8 calibrated on a folder of images (entropy
calibrator 2, images preprocessed as the runtime does: RGB/255, then mean/std), optionally with
a timing cache, and writes ``<engine>.json`` (``psa_infer.backends.EngineInfo``): GPU name,
TensorRT version, precision, profile, the ONNX file's sha256 and its tensor specs. Everything up
to the build is checked first, without TensorRT, so bad arguments fail the same way on a
CPU-only machine; tensorrt and cuda-python are imported only to build. What a user can cause —
an unreadable ONNX file (``psa_infer.bundle.BundleError``), a bad profile, a graph TensorRT
refuses, a calibration folder without images — is a ``PsaError`` naming the file or option.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from psa_infer.artifacts import file_sha256
from psa_infer.backends import (
    EngineInfo,
    cuda_check,
    format_shape,
    gpu_name,
    import_cudart,
    import_tensorrt,
    shape_matches,
    sidecar_path,
)
from psa_infer.bundle import onnx_io_specs, read_onnx
from psa_infer.cam import normalize_image
from psa_infer.errors import PsaError

PRECISIONS = ("fp32", "fp16", "int8")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)
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


def calibration_batches(
    calib_dir: str | Path, shape: Shape, mean: Sequence[float], std: Sequence[float]
) -> Iterator[np.ndarray]:
    """(B, 3, H, W) float32 batches of the folder's images, resized to H×W and normalised.

    The images are sorted by name; the last incomplete batch is dropped (TensorRT calibrates
    at a fixed batch size).
    """
    b, _, h, w = shape
    files = sorted(p for p in Path(calib_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for i in range(0, len(files) - b + 1, b):
        batch = []
        for path in files[i : i + b]:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB").resize((w, h), Image.BICUBIC))
            batch.append(normalize_image(img, mean, std))
        yield np.stack(batch)


def write_sidecar(engine_path: str | Path, info: EngineInfo) -> Path:
    """Write ``<engine>.json`` beside the engine; ``EngineInfo.read`` reads it back."""
    path = sidecar_path(engine_path)
    path.write_text(info.to_json(), encoding="utf-8")
    return path


def _check_args(onnx_path: Path, precision: str, calib_dir, mean, std, workspace_gb) -> None:
    if not onnx_path.is_file():
        raise EngineError(f"{onnx_path}: no such ONNX file")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not (isinstance(workspace_gb, (int, float)) and workspace_gb > 0):
        raise ValueError(f"workspace_gb: expected a number > 0, got {workspace_gb!r}")
    if precision != "int8":
        return
    if calib_dir is None or not Path(calib_dir).is_dir():
        raise ValueError(f"calib_dir: int8 needs a folder of calibration images, got {calib_dir}")
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in Path(calib_dir).iterdir()):
        raise EngineError(f"{calib_dir}: no {'/'.join(IMAGE_SUFFIXES)} images to calibrate on")
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        raise ValueError(f"int8: expected 3 mean and 3 std values, got mean={mean} std={std}")


def _calibrator(trt, cudart, batches: Iterator[np.ndarray], batch_size: int):
    """An IInt8EntropyCalibrator2 feeding ``batches`` through one device buffer."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # the bindings need the explicit call
            self.ptr, self.nbytes, self.cache = 0, 0, None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names):
            x = next(batches, None)
            if x is None:
                return None  # calibration done
            if x.nbytes > self.nbytes:
                if self.ptr:
                    cuda_check(cudart, cudart.cudaFree(self.ptr), "cudaFree")
                self.ptr = int(cuda_check(cudart, cudart.cudaMalloc(x.nbytes), "cudaMalloc"))
                self.nbytes = x.nbytes
            h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            cuda_check(cudart, cudart.cudaMemcpy(self.ptr, x.ctypes.data, x.nbytes, h2d), "copy")
            return [self.ptr]

        def read_calibration_cache(self):
            return self.cache

        def write_calibration_cache(self, cache) -> None:
            self.cache = bytes(cache)

    return Calibrator()


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    precision: str = "fp32",
    calib_dir: str | Path | None = None,
    profile: Mapping[str, tuple] | str | Sequence[str] | None = None,
    timing_cache: str | Path | None = None,
    workspace_gb: float = 4.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Path:
    """Build ``engine_path`` from ``onnx_path`` on this machine's GPU; returns the engine path.

    ``profile``: {input: (min, opt, max)} shapes, or strings for ``parse_profile``; required
    for every input with dynamic dimensions. ``precision`` "int8" calibrates at the ``opt``
    shape on the images of ``calib_dir`` normalised with ``mean``/``std`` (the bundle's
    meta.json values). ``timing_cache``: a file read if present and written after the build.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    _check_args(onnx_path, precision, calib_dir, mean, std, workspace_gb)
    inputs, outputs = onnx_io_specs(read_onnx(onnx_path))
    if isinstance(profile, (str, list, tuple)):
        profile = parse_profile(profile)
    shapes = check_profile(inputs, profile or {})
    opt_shapes = [opt for _, opt, _ in shapes.values()]
    if precision == "int8" and not (len(opt_shapes) == 1 and len(opt_shapes[0]) == 4):
        raise EngineError(
            f"int8: calibration feeds images, so the model needs one (B, 3, H, W) input; "
            f"{onnx_path.name} has the inputs {', '.join(shapes)}"
        )

    trt, cudart = import_tensorrt(), import_cudart()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
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
        # TensorRT allows TF32 (10-bit mantissa) matmuls/convs by default on Ampere and later;
        # "fp32" means FP32, so that the ladder's FP32 rung compares like with like.
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers without int8 kernels fall to fp16
    if precision == "int8":
        batches = calibration_batches(calib_dir, opt_shapes[0], mean, std)
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, cudart, batches, opt_shapes[0][0])
        config.set_calibration_profile(opt_profile)
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
    )
    write_sidecar(engine_path, info)
    return engine_path

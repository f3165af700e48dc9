"""Backends: a dict of numpy arrays in, a dict of numpy arrays out (DESIGN.md, "Model bundle").

* ``OnnxRuntimeBackend`` — an ``.onnx`` file under ONNX Runtime (TensorRT, CUDA or CPU
  execution provider, whichever is present, in that order);
* ``TensorRTBackend`` — an ``.engine``/``.plan`` file built by ``psa build-engine``, run with the
  TensorRT 10 named-tensor API and device memory from cuda-python.

Both describe their ``inputs``/``outputs`` (name, dtype, shape with dimension names or None for
dynamic dimensions) and check every feed against them, naming the tensor and what was expected.
onnxruntime, tensorrt and cuda-python are imported inside the class that needs them, so this
module imports with numpy alone. ``cam_forward_from``, ``aff_forward_from``, ``classify_from``
and ``walk_from`` turn a backend into the callables ``psa_infer.pipeline.Labeler`` takes.

What a user can cause — a missing runtime module, a model file that cannot be loaded, an engine
or sidecar that does not fit this machine, an input outside an engine's profile — is a
``BackendError`` naming the file or module; a feed that breaks the declared inputs is the
caller's bug and a ``ValueError``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from psa_infer.errors import DIST, PsaError

# Tensor names of the exported bundle (export/ writes graphs with exactly these).
CAM_IMAGE, CAM_CAMS, CAM_LOGITS = "image", "cams", "logits"
AFF_IMAGE, AFF_FEATURES = "image", "features"
RW_SCORES, RW_FEATURES, RW_WALKED = "scores", "features", "walked"

Dim = int | str | None
# Strongly typed networks (precision from the graph: FP16 casts, INT8 Q/DQ) exist since 10.0;
# 10.3 is what JetPack 6.1/6.2 ship, the oldest this project supports (pyproject's `trt` extra).
MIN_TENSORRT = (10, 3)


class BackendError(PsaError):
    """A model file or the runtime it needs cannot be used here; the message names which."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, numpy dtype and shape (int, dimension name, or None)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        """'float32 of shape (D, h, w)'."""
        return f"{np.dtype(self.dtype).name} of shape {format_shape(self.shape)}"


def format_shape(dims: Sequence[Dim]) -> str:
    """'(B, 3, H, W)'; a dynamic dimension without a name shows as '?'."""
    text = ", ".join("?" if d is None else str(d) for d in dims)
    return f"({text},)" if len(dims) == 1 else f"({text})"


def _got(x: object) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype.name} {tuple(x.shape)}"
    return type(x).__name__


def shape_matches(dims: Sequence[Dim], shape: Sequence[int]) -> bool:
    """Whether ``shape`` has the rank of ``dims`` and its size wherever ``dims`` fixes one."""
    return len(dims) == len(shape) and all(
        not isinstance(d, int) or d == n for d, n in zip(dims, shape, strict=True)
    )


def check_feed(specs: Sequence[TensorSpec], feed: Mapping[str, object]) -> None:
    """Raise ValueError unless ``feed`` has exactly the inputs ``specs``, of their dtype and shape.

    A named dimension must take the same size in every input that uses it (``h`` of ``scores``
    and ``features``, say).
    """
    names = [s.name for s in specs]
    for key in feed:
        if key not in names:
            raise ValueError(f"unknown input {key!r}: expected {', '.join(names)}")
    sizes: dict[str, tuple[int, str]] = {}
    for spec in specs:
        if spec.name not in feed:
            raise ValueError(f"missing input {spec.name!r}: expected {spec.describe()}")
        x = feed[spec.name]
        ok = (
            isinstance(x, np.ndarray)
            and x.dtype == spec.dtype
            and x.ndim == len(spec.shape)
            and all(
                not isinstance(d, int) or d == n for d, n in zip(spec.shape, x.shape, strict=True)
            )
        )
        if not ok:
            raise ValueError(f"{spec.name}: expected {spec.describe()}, got {_got(x)}")
        for d, n in zip(spec.shape, x.shape, strict=True):
            if isinstance(d, str):
                size, where = sizes.setdefault(d, (n, spec.name))
                if size != n:
                    raise ValueError(
                        f"{spec.name}: expected {spec.describe()} with {d} = {size} as in "
                        f"{where}, got {_got(x)}"
                    )


class Backend:
    """A model that maps a dict of named numpy arrays to a dict of named numpy arrays."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``feed`` against ``inputs`` and run; returns every output by name."""
        check_feed(self.inputs, feed)
        return self._run(feed)

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds (device memory, sessions)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- ONNX Runtime

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
TRT_PROVIDER = "TensorrtExecutionProvider"
# Fastest first; "auto" keeps those this onnxruntime build offers.
PREFERRED_PROVIDERS = (
    TRT_PROVIDER,
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            f"onnxruntime is not installed: pip install '{DIST}[cpu]' (or '{DIST}[gpu]' on a CUDA "
            "machine; on a Jetson, NVIDIA's onnxruntime-gpu wheel for its JetPack)"
        ) from None
    return onnxruntime


def choose_providers(requested: str | Sequence[str], available: Sequence[str]) -> list[str]:
    """Execution providers to ask for: ``"auto"`` → TensorRT, CUDA, CPU where ``available``."""
    if isinstance(requested, str):
        if requested != "auto":
            raise ValueError(f"providers: expected 'auto' or a list of names, got {requested!r}")
        return [p for p in PREFERRED_PROVIDERS if p in available]
    missing = [p for p in requested if p not in available]
    if missing or not requested:
        raise BackendError(
            f"providers: {', '.join(missing) or 'none given'} not available in this onnxruntime "
            f"(available: {', '.join(available)})"
        )
    return list(requested)


class OnnxRuntimeBackend(Backend):
    """An ONNX model under ONNX Runtime.

    ``path_or_bytes``: an ``.onnx`` file or its serialised bytes. ``providers``: ``"auto"`` or
    a list of execution-provider names. ``threads``: intra-op threads (default
    ``os.cpu_count()``; ONNX Runtime's own default differs between versions).
    ``provider_options``: {provider name: its options}, passed to the providers that are used
    (``psa_infer.bundle.ort_provider_options`` makes them for a bundle: the TensorRT provider's
    engine cache and profile, the CUDA device). ``provider`` is the provider the session
    actually runs on.
    """

    def __init__(
        self,
        path_or_bytes: str | os.PathLike | bytes,
        providers: str | Sequence[str] = "auto",
        threads: int | None = None,
        provider_options: Mapping[str, Mapping[str, object]] | None = None,
    ) -> None:
        ort = _import_onnxruntime()
        if isinstance(path_or_bytes, bytes):
            model, self.name = path_or_bytes, "<onnx bytes>"
        else:
            path = Path(path_or_bytes)
            if not path.is_file():
                raise BackendError(f"{path}: no such ONNX file")
            model, self.name = str(path), path.name
        if threads is not None and (isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads: expected an integer >= 1, got {threads!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        # One graph at a time: the pipeline runs one model after another, never in parallel.
        options.inter_op_num_threads = 1
        # Idle workers sleep instead of spinning: rw.onnx runs ~18k small ops, and on a 2-core
        # machine spinning workers steal the core the next op needs (56×56, C=3, 2 threads:
        # 0.33 s spinning, 0.21 s not; large network ops are unaffected).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Inputs change shape from image to image and scale to scale; ORT's memory patterns
        # keep a plan (and its memory) per shape seen: 1.46 GB for five ~1200² tile shapes,
        # 0.92 GB without, at the same speed (benchmarks/label_bench.py, 2-core CPU).
        options.enable_mem_pattern = False
        chosen = choose_providers(providers, ort.get_available_providers())
        opts = provider_options or {}
        with_options = [(p, dict(opts[p])) if p in opts else p for p in chosen]
        cache = opts.get(TRT_PROVIDER, {}).get("trt_engine_cache_path")
        if cache and TRT_PROVIDER in chosen:
            Path(cache).mkdir(parents=True, exist_ok=True)  # ready before the provider looks
        try:
            self.session = ort.InferenceSession(model, options, providers=with_options)
        except Exception as e:  # onnxruntime raises its own types; all mean "this file cannot run"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = model if isinstance(model, str) else self.name
            raise BackendError(f"{where}: onnxruntime cannot load it: {first}") from e
        self.provider = self.session.get_providers()[0]
        self.inputs = tuple(self._spec(a) for a in self.session.get_inputs())
        self.outputs = tuple(self._spec(a) for a in self.session.get_outputs())

    def _spec(self, arg) -> TensorSpec:
        if arg.type not in _ORT_DTYPES:
            raise BackendError(f"{self.name}: {arg.name}: unsupported tensor type {arg.type}")
        return TensorSpec(arg.name, np.dtype(_ORT_DTYPES[arg.type]), tuple(arg.shape))

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [s.name for s in self.outputs]
        return dict(zip(names, self.session.run(names, dict(feed)), strict=True))


# ---------------------------------------------------------------------------- TensorRT


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` → ``model.engine.json``: what the engine was built with and for."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


@dataclass(frozen=True)
class EngineInfo:
    """The sidecar of a TensorRT engine (written by ``export.engine.build_engine``).

    ``profile`` maps each input to its optimisation profile ``[min, opt, max]`` shapes;
    ``inputs``/``outputs`` keep the ONNX graph's tensor specs (dimension names included) so the
    runtime can describe what it expects. ``onnx_file`` is the graph it was built from (a
    precision variant's, e.g. ``cam.fp16.onnx``) and ``image_sides`` the (MIN, OPT, MAX) image
    pixels its profile covers ([] if it was built for tensor shapes only).
    """

    tensorrt_version: str
    gpu_name: str
    precision: str
    onnx_sha256: str
    profile: dict[str, list[list[int]]] = field(default_factory=dict)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    schema_version: int = 1
    onnx_file: str = ""
    image_sides: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike) -> EngineInfo:
        """Parse a sidecar; missing or unknown keys are errors (it is an artifact with a schema)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BackendError(f"{path}: cannot read the engine's sidecar ({e})") from None
        fields = set(cls.__dataclass_fields__)
        required = {"tensorrt_version", "gpu_name", "precision", "onnx_sha256"}
        if not isinstance(data, dict) or not required <= set(data) or not set(data) <= fields:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise BackendError(
                f"{path}: expected the keys {sorted(required)} (and optionally "
                f"{sorted(fields - required)}), got {keys}"
            )
        for key in sorted(required):
            if not isinstance(data[key], str):
                raise BackendError(f"{path}: '{key}': expected a string, got {data[key]!r}")
        return cls(**data)


def check_engine_compat(
    engine_name: str, info: EngineInfo, tensorrt_version: str, gpu: str
) -> None:
    """Refuse an engine built with another TensorRT version or on another GPU.

    TensorRT engines are specific to the TensorRT version and the GPU model that built them;
    loading one elsewhere fails deep inside TensorRT or, worse, runs untuned kernels.
    """
    if info.tensorrt_version != tensorrt_version or info.gpu_name != gpu:
        raise BackendError(
            f"{engine_name}: built with TensorRT {info.tensorrt_version} on {info.gpu_name!r}, "
            f"this is TensorRT {tensorrt_version} on {gpu!r} — rebuild it with "
            "psa build-engine"
        )


def import_cudart():
    """cuda-python's runtime module: ``cuda.bindings.runtime`` (>= 12.6) or ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendError(
                f"cuda-python is not installed: pip install '{DIST}[trt]' (tensorrt, cuda-python)"
            ) from None
    return cudart


def cuda_check(cudart, result, what: str):
    """Unpack a cuda-python call's ``(err, *values)``; raise RuntimeError naming ``what``."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != int(cudart.cudaError_t.cudaSuccess):
        _, text = cudart.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error in {what}: {text.decode(errors='replace')}")
    return values[0] if len(values) == 1 else tuple(values) or None


def gpu_name(cudart=None) -> str:
    """Name of the current CUDA device, e.g. 'NVIDIA A100-SXM4-80GB' or 'Orin'."""
    cudart = cudart or import_cudart()
    device = cuda_check(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    props = cuda_check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    return (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\0")


def tensorrt_version_ok(version: str) -> bool:
    """Whether a TensorRT ``__version__`` ("10.3.0", "11.0.0.12") is at least ``MIN_TENSORRT``."""
    parts = re.match(r"^(\d+)\.(\d+)", str(version))
    return parts is not None and tuple(map(int, parts.groups())) >= MIN_TENSORRT


def import_tensorrt():
    """The tensorrt module (10.3 or later), or a BackendError saying what to install."""
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            f"tensorrt is not installed: pip install '{DIST}[trt]' (tensorrt, cuda-python); on a "
            "Jetson, JetPack 6.1+'s python3-libnvinfer (a venv needs --system-site-packages)"
        ) from None
    version = getattr(tensorrt, "__version__", "?")
    if not tensorrt_version_ok(version):
        minimum = ".".join(map(str, MIN_TENSORRT))
        raise BackendError(
            f"tensorrt {version} is too old: psa needs TensorRT >= {minimum} (strongly typed "
            f"networks; JetPack 6.1+ on a Jetson, pip install '{DIST}[trt]' on a GPU server)"
        )
    return tensorrt


class TensorRTBackend(Backend):
    """A serialised TensorRT engine (TensorRT 10 named-tensor API, cuda-python memory).

    Reads the sidecar ``<engine>.json`` first and refuses an engine built for another TensorRT
    version or GPU. Device buffers are allocated on first use and grown when a larger input
    arrives; inputs outside the engine's optimisation profile are refused with its limits.
    """

    def __init__(self, engine_path: str | os.PathLike) -> None:
        path = Path(engine_path)
        if not path.is_file():
            raise BackendError(f"{path}: no such TensorRT engine")
        side = sidecar_path(path)
        if not side.is_file():
            raise BackendError(
                f"{path.name}: no {side.name} beside it (TensorRT version, GPU) — rebuild it "
                "with psa build-engine"
            )
        info = EngineInfo.read(side)
        trt = import_tensorrt()
        self._cudart = cudart = import_cudart()
        check_engine_compat(path.name, info, trt.__version__, gpu_name(cudart))
        self.name, self.info, self._trt = path.name, info, trt
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._stream = None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BackendError(
                f"{path.name}: TensorRT could not deserialize it — rebuild it with psa build-engine"
            )
        self.context = self.engine.create_execution_context()
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        named = {d["name"]: d for d in info.inputs + info.outputs}
        specs = {True: [], False: []}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dims = [None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name)]
            # Dimension names from the ONNX graph (kept in the sidecar) for the messages.
            onnx_dims = named.get(name, {}).get("shape", [])
            if len(onnx_dims) == len(dims):
                dims = [o if d is None else d for d, o in zip(dims, onnx_dims, strict=True)]
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            specs[is_input].append(TensorSpec(name, dtype, tuple(dims)))
        self.inputs, self.outputs = tuple(specs[True]), tuple(specs[False])

    def _outside_profile(self, name: str, shape, lo, hi) -> str:
        """Refusing an input outside the profile: in image pixels where the sidecar has them."""
        sides = self.info.image_sides
        built = (
            f"built for images of {sides[0]} to {sides[2]} pixels a side (psa build-engine "
            f"--profile {sides[0]},{sides[1]},{sides[2]})"
            if len(sides) == 3
            else "built for tensor shapes only"
        )
        return (
            f"{self.name}: {name}: shape {tuple(shape)} is outside the engine's optimisation "
            f"profile (min {tuple(lo)}, max {tuple(hi)}), {built} — rebuild it with a wider "
            "psa build-engine --profile MIN,OPT,MAX (image sides in pixels)"
        )

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                cuda_check(self._cudart, self._cudart.cudaFree(ptr), "cudaFree")
            ptr = int(cuda_check(self._cudart, self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart, ctx = self._cudart, self.context
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        hosts = []  # keep the contiguous copies alive until the stream is synchronised
        for spec in self.inputs:
            x = np.ascontiguousarray(feed[spec.name])
            if not ctx.set_input_shape(spec.name, x.shape):
                lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(spec.name, 0))
                raise BackendError(self._outside_profile(spec.name, x.shape, lo, hi))
            ptr = self._buffer(spec.name, max(x.nbytes, 1))
            call = cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self._stream)
            cuda_check(cudart, call, f"copying {spec.name} to the GPU")
            ctx.set_tensor_address(spec.name, ptr)
            hosts.append(x)
        out = {}
        for spec in self.outputs:
            y = np.empty(tuple(ctx.get_tensor_shape(spec.name)), spec.dtype)
            ctx.set_tensor_address(spec.name, self._buffer(spec.name, max(y.nbytes, 1)))
            out[spec.name] = y
        if not ctx.execute_async_v3(self._stream):
            raise RuntimeError(f"{self.name}: TensorRT failed to run the engine")
        for name, y in out.items():
            call = cudart.cudaMemcpyAsync(
                y.ctypes.data, self._buffers[name][0], y.nbytes, d2h, self._stream
            )
            cuda_check(cudart, call, f"copying {name} from the GPU")
        cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None


# ---------------------------------------------------------------------------- helpers


def open_backend(path: str | os.PathLike, **kwargs) -> Backend:
    """``.onnx`` → ``OnnxRuntimeBackend(path, **kwargs)``; ``.engine``/``.plan`` → TensorRT."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return OnnxRuntimeBackend(path, **kwargs)
    if suffix in (".engine", ".plan"):
        return TensorRTBackend(path, **kwargs)
    raise BackendError(f"{path}: expected a .onnx, .engine or .plan file")


def _output(backend: Backend, inputs: Sequence[str], output: str) -> Callable[..., np.ndarray]:
    """A callable feeding its positional arrays to ``inputs`` and returning ``output``."""
    names = [s.name for s in backend.outputs]
    if output not in names:
        raise ValueError(f"backend has no output {output!r} (outputs: {', '.join(names)})")

    def call(*arrays: np.ndarray) -> np.ndarray:
        return backend.run(dict(zip(inputs, arrays, strict=True)))[output]

    return call


def cam_forward_from(backend: Backend) -> Callable[[np.ndarray], np.ndarray]:
    """cam.onnx: ``image`` (B, 3, H, W) float32 → ``cams`` (B, C, H/8, W/8) float32."""
    return _output(backend, [CAM_IMAGE], CAM_CAMS)


def classify_from(backend: Backend) -> Callable[[np.ndarray], np.ndarray]:
    """cam.onnx: ``image`` (B, 3, H, W) float32 → ``logits`` (B, C) float32."""
    return _output(backend, [CAM_IMAGE], CAM_LOGITS)


def aff_forward_from(backend: Backend) -> Callable[[np.ndarray], np.ndarray]:
    """aff.onnx: ``image`` (B, 3, H, W) float32 → ``features`` (B, D, H/8, W/8) float32."""
    return _output(backend, [AFF_IMAGE], AFF_FEATURES)


def walk_from(backend: Backend) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """rw.onnx: ``scores`` (C, h, w) + ``features`` (D, h, w) → ``walked`` (C, h, w) float32."""
    return _output(backend, [RW_SCORES, RW_FEATURES], RW_WALKED)

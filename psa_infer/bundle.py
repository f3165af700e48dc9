"""The model bundle at run time: read and check ``meta.json``, open the models, build a Labeler.

A bundle (written by ``psa export``, ``export/bundle.py``) is a directory::

    cam.onnx   image (B, 3, H, W) → cams (B, C, h, w), logits (B, C)
    aff.onnx   image (B, 3, H, W) → features (B, D, h, w)
    rw.onnx    scores (C, h, w), features (D, h, w) → walked (C, h, w)
    meta.json  everything the runtime needs besides the weights (``load_meta``)
    *.engine   TensorRT engines, once ``psa build-engine`` ran on the device (+ .engine.json)

Preprocessing and walk settings come from meta.json, never from code defaults, so a bundle
labels the same way wherever it runs. Torch-free: numpy, onnx, and the backend's own runtime.

Each graph must be one self-contained file: meta.json's sha256 covers the .onnx files only, so
a graph keeping tensors in external data files is refused (our exporter never writes them:
``onnx.save_model`` keeps a graph under protobuf's 2 GB limit in one file).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from psa_infer.artifacts import file_sha256
from psa_infer.backends import (
    AFF_FEATURES,
    AFF_IMAGE,
    CAM_CAMS,
    CAM_IMAGE,
    CAM_LOGITS,
    RW_FEATURES,
    RW_SCORES,
    RW_WALKED,
    Backend,
    BackendError,
    EngineInfo,
    OnnxRuntimeBackend,
    TensorRTBackend,
    aff_forward_from,
    cam_forward_from,
    classify_from,
    format_shape,
    sidecar_path,
    walk_from,
)
from psa_infer.crf import REFERENCE_BILATERAL_SXY
from psa_infer.errors import PsaError
from psa_infer.pipeline import (
    STRIDE,
    WALK_STRIDES,
    Labeler,
    LabelResult,
    WalkParams,
    label_image,
)
from psa_infer.profiles import DEFAULT_SIDES, check_image_size, engine_profiles, profile_strings
from psa_infer.thresholds import check_thresholds

SCHEMA_VERSION = 1
META = "meta.json"
# Model name → (file, input names, output names), in the order the graphs declare them.
MODELS = {
    "cam": ("cam.onnx", (CAM_IMAGE,), (CAM_CAMS, CAM_LOGITS)),
    "aff": ("aff.onnx", (AFF_IMAGE,), (AFF_FEATURES,)),
    "rw": ("rw.onnx", (RW_SCORES, RW_FEATURES), (RW_WALKED,)),
}
# Precision variants (export/precision.py): ``<model>.<precision>.onnx`` beside the float32
# graphs, listed in meta.json as ``precisions: {fp16|int8: {cam|aff: {file, sha256}}}`` with the
# float32 graphs' inputs and outputs. rw.onnx has none: the walk runs in float32.
PRECISIONS = ("fp32", "fp16", "int8")
VARIANT_MODELS = ("cam", "aff")
BACKENDS = ("onnxruntime", "tensorrt")
WALKS = ("auto", "onnx", "numpy")
# Providers on which the walk runs as rw.onnx by default. On ONNX Runtime's CPU provider the numpy
# walk is faster (benchmarks/export_bench.py, 2 cores: 0.09 s vs 0.15 s for a 448 px image).
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# Where ONNX Runtime's TensorRT provider keeps the engines it builds, inside the bundle (which a
# re-export replaces whole, cache included).
ORT_TRT_CACHE = "ort_trt_cache"


class BundleError(PsaError):
    """A bundle is incomplete or inconsistent; the one-line message names the file."""


# ---------------------------------------------------------------------------- meta.json


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_str_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def _is_rgb_triple(x: object) -> bool:
    return isinstance(x, list) and len(x) == 3 and all(_is_number(v) for v in x)


# key → (check, what is expected); checked in this order, so messages name the first problem.
_TOP = {
    "schema_version": (_is_int, "an integer"),
    "toolkit_version": (lambda x: isinstance(x, str), "a string"),
    "classes": (
        lambda x: _is_str_list(x) and len(x) >= 2 and len(set(x)) == len(x),
        "a list of >= 2 distinct class names, background first",
    ),
    "mean": (_is_rgb_triple, "3 numbers (R, G, B)"),
    "std": (lambda x: _is_rgb_triple(x) and min(x) > 0, "3 numbers > 0 (R, G, B)"),
    "color_order": (lambda x: x == "RGB", "'RGB' (the only order this runtime feeds)"),
    "stride": (lambda x: x == STRIDE, f"{STRIDE} (the runtime's feature stride)"),
    "radius": (lambda x: _is_int(x) and x >= 1, "an integer >= 1"),
    "beta": (lambda x: _is_number(x) and x > 0, "a number > 0"),
    "steps": (lambda x: _is_int(x) and x >= 0, "an integer >= 0"),
    "pairs": (lambda x: x in ("full", "psa"), "'full' or 'psa'"),
    "alpha": (
        lambda x: (
            isinstance(x, dict) and all(_is_number(x.get(k)) for k in ("label", "low", "high"))
        ),
        "{'label': α, 'low': α, 'high': α} numbers",
    ),
    "scales": (
        lambda x: isinstance(x, list) and x and all(_is_number(s) and s > 0 for s in x),
        "a non-empty list of numbers > 0",
    ),
    "flip": (lambda x: isinstance(x, bool), "true or false"),
    "opset": (_is_int, "an integer"),
    "models": (lambda x: isinstance(x, dict), "an object with cam, aff and rw"),
    "sources": (lambda x: isinstance(x, dict), "an object with the source checkpoints"),
}


def _check_model_entry(where: str, name: str, entry: object) -> None:
    file, inputs, outputs = MODELS[name]
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: models.{name}: expected an object, got {entry!r}")
    for key in ("file", "sha256", "inputs", "outputs"):
        if key not in entry:
            raise BundleError(f"{where}: missing 'models.{name}.{key}'")
    if entry["file"] != file:
        raise BundleError(f"{where}: models.{name}.file: expected {file!r}, got {entry['file']!r}")
    for kind, expected in (("inputs", inputs), ("outputs", outputs)):
        specs = entry[kind]
        ok = isinstance(specs, list) and all(
            isinstance(s, dict)
            and {"name", "dtype", "shape"} <= set(s)
            and isinstance(s["shape"], list)
            for s in specs
        )
        names = tuple(s["name"] for s in specs) if ok else None
        if names != expected:
            raise BundleError(
                f"{where}: models.{name}.{kind}: expected tensors {list(expected)} as "
                f"{{name, dtype, shape}}, got {names if ok else specs!r}"
            )


def _check_channels(where: str, meta: dict) -> None:
    """cam.onnx's channels are the foreground classes; aff.onnx's feature depth is fixed."""
    n = len(meta["classes"]) - 1
    cam = {s["name"]: s["shape"] for s in meta["models"]["cam"]["outputs"]}
    for tensor, want in ((CAM_CAMS, ["B", n, "h", "w"]), (CAM_LOGITS, ["B", n])):
        dims = cam[tensor]
        if len(dims) != len(want) or dims[1] != n:
            raise BundleError(
                f"{where}: 'classes' lists {n} classes besides background, but models.cam.outputs "
                f"gives cam.onnx's {tensor} the shape {format_shape(dims)}: expected "
                f"{format_shape(want)} — re-export the bundle instead of editing meta.json"
            )
    dims = meta["models"]["aff"]["outputs"][0]["shape"]
    if len(dims) != 4 or not _is_int(dims[1]) or dims[1] < 1:
        raise BundleError(
            f"{where}: models.aff.outputs: expected aff.onnx's features as (B, D, h, w) with a "
            f"fixed depth D >= 1, got {format_shape(dims)}"
        )


def load_meta(bundle_dir: str | os.PathLike, check_files: bool = True) -> dict:
    """Read and check ``<bundle_dir>/meta.json``; returns it as a dict.

    Every key the runtime reads is checked for presence and type (``"b/meta.json: missing
    'mean'"``), the schema version must be this runtime's, and with ``check_files`` each ONNX
    file must exist with the sha256 that meta.json records (a file replaced after export is
    refused) and be a readable, self-contained ONNX graph (no external data) whose inputs and
    outputs are meta.json's; rw.onnx must bake in the walk settings that meta.json states.
    Without ``check_files`` meta.json is still checked against itself: cam.onnx's channels
    must be the foreground classes and aff.onnx's feature depth must be fixed.

    Raises:
        BundleError: with a one-line message naming the file and what was expected.
    """
    root = Path(bundle_dir)
    path = root / META
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory (expected cam.onnx, aff.onnx, ...)")
    if not path.is_file():
        raise BundleError(f"{path}: missing — is {root} a bundle written by psa export?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if "schema_version" in meta and meta["schema_version"] != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {meta['schema_version']!r} (written by psa "
            f"{meta.get('toolkit_version', '?')}), this runtime reads {SCHEMA_VERSION} — "
            "re-export the bundle with this psa, or run it with a matching psa"
        )
    for key, (check, expected) in _TOP.items():
        if key not in meta:
            raise BundleError(f"{path}: missing '{key}'")
        if not check(meta[key]):
            raise BundleError(f"{path}: '{key}': expected {expected}, got {meta[key]!r}")
    if not isinstance(meta.get("normalize", False), bool):  # optional: absent in older bundles
        raise BundleError(f"{path}: 'normalize': expected true or false, got {meta['normalize']!r}")
    sxy = meta.get("crf_sxy", REFERENCE_BILATERAL_SXY)  # optional: absent in older bundles
    if isinstance(sxy, bool) or not isinstance(sxy, (int, float)) or not 0 < sxy < math.inf:
        raise BundleError(f"{path}: 'crf_sxy': expected a finite number > 0, got {sxy!r}")
    ws = meta.get("walk_stride", STRIDE)  # optional: written only where it is not 8
    if isinstance(ws, bool) or ws not in WALK_STRIDES:
        raise BundleError(
            f"{path}: 'walk_stride': expected one of {', '.join(map(str, WALK_STRIDES))}, "
            f"got {ws!r}"
        )
    if meta["classes"][0] != "background":
        raise BundleError(f"{path}: 'classes': expected 'background' first, got {meta['classes']}")
    try:
        check_thresholds(str(path), meta)  # optional: written by `psa calibrate`
    except PsaError as e:
        raise BundleError(str(e)) from None
    for name in MODELS:
        if name not in meta["models"]:
            raise BundleError(f"{path}: missing 'models.{name}'")
        _check_model_entry(str(path), name, meta["models"][name])
    _check_channels(str(path), meta)
    _check_precisions(str(path), meta)
    if check_files:
        for name, (file, _, _) in MODELS.items():
            model = _check_onnx_file(root / file, meta["models"][name]["sha256"])
            _check_graph_io(root / file, model, path, meta["models"][name])
            if name == "rw":
                _check_rw_props(root / file, model, meta)
        for entries in meta.get("precisions", {}).values():
            for name in VARIANT_MODELS:
                model_path = root / entries[name]["file"]
                model = _check_onnx_file(model_path, entries[name]["sha256"])
                # A variant stands in for the float32 graph: the same inputs and outputs.
                _check_graph_io(model_path, model, path, meta["models"][name])
    return meta


def _check_precisions(where: str, meta: dict) -> None:
    """meta.json's optional ``precisions``: {fp16|int8: {cam|aff: {file, sha256}}}."""
    variants = meta.get("precisions", {})
    if not isinstance(variants, dict):
        raise BundleError(f"{where}: 'precisions': expected an object, got {variants!r}")
    for precision, entries in variants.items():
        if precision not in PRECISIONS[1:]:
            raise BundleError(
                f"{where}: precisions.{precision}: expected one of {', '.join(PRECISIONS[1:])}"
            )
        for name in VARIANT_MODELS:
            entry = entries.get(name) if isinstance(entries, dict) else None
            file = variant_file(name, precision)
            if not isinstance(entry, dict) or entry.get("file") != file or "sha256" not in entry:
                raise BundleError(
                    f"{where}: precisions.{precision}.{name}: expected {{'file': {file!r}, "
                    f"'sha256': ...}}, got {entry!r}"
                )


def variant_file(name: str, precision: str = "fp32") -> str:
    """The ONNX file of model ``name`` at ``precision``: cam.onnx, cam.fp16.onnx, cam.int8.onnx."""
    return MODELS[name][0] if precision == "fp32" else f"{name}.{precision}.onnx"


def _check_onnx_file(model_path: Path, sha256: str):
    """The file meta.json lists, unchanged since export, readable and self-contained."""
    if not model_path.is_file():
        raise BundleError(f"{model_path}: missing (meta.json lists it)")
    if file_sha256(model_path) != sha256:
        raise BundleError(
            f"{model_path}: sha256 differs from meta.json's — the file was replaced "
            "after export; re-export the bundle"
        )
    model = read_onnx(model_path)
    _check_self_contained(model_path, model)
    return model


# ---------------------------------------------------------------------------- ONNX files


def read_onnx(path: str | os.PathLike):
    """An ONNX file as an ``onnx.ModelProto``, without loading external data.

    Raises:
        BundleError: ``"<path>: not a readable ONNX model (...)"`` for a corrupt, truncated or
            foreign file (an OSError such as permission denied passes through).
    """
    import onnx
    from google.protobuf.message import Error as ProtobufError

    try:
        model = onnx.load(path, load_external_data=False)
    except (ProtobufError, ValueError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise BundleError(f"{path}: not a readable ONNX model ({text})") from None
    if not model.graph.output:
        raise BundleError(f"{path}: not a readable ONNX model (it has no graph outputs)")
    return model


def onnx_io_specs(model) -> tuple[list[dict], list[dict]]:
    """An ``onnx.ModelProto``'s graph inputs (initialisers excluded) and outputs as
    {name, dtype, shape} dicts, as meta.json records them.

    Dimensions are ints, dimension names, or None where the graph names none.
    """
    import numpy as np
    import onnx

    def spec(v) -> dict:
        t = v.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim
        ]
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        except KeyError:  # not a tensor, or no type numpy has: shown as ONNX's number
            dtype = f"onnx-type-{t.elem_type}"
        return {"name": v.name, "dtype": dtype, "shape": dims}

    weights = {i.name for i in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in weights]
    return inputs, [spec(v) for v in model.graph.output]


def _stored_tensors(graph):
    """Every tensor stored in ``graph``: initialisers, constant attributes, and subgraphs'."""
    yield from graph.initializer
    sparse = list(graph.sparse_initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                sparse.append(attr.sparse_tensor)
            sparse.extend(attr.sparse_tensors)
            if attr.HasField("g"):
                yield from _stored_tensors(attr.g)
            for g in attr.graphs:
                yield from _stored_tensors(g)
    for s in sparse:
        yield s.values
        yield s.indices


def _check_self_contained(path: Path, model) -> None:
    """Refuse tensors kept in external data files: meta.json's sha256 would not cover them."""
    import onnx

    external = [
        t for t in _stored_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        files = sorted({e.value for t in external for e in t.external_data if e.key == "location"})
        raise BundleError(
            f"{path}: keeps {len(external)} tensor(s) in external data files "
            f"({', '.join(files) or 'no location given'}), which meta.json's sha256 does not "
            "cover — a bundle's graphs must each be one self-contained .onnx file"
        )


def _describe(specs: list[dict]) -> str:
    """'cams float32 (B, 2, h, w), logits float32 (B, 2)'."""
    return ", ".join(f"{s['name']} {s['dtype']} {format_shape(s['shape'])}" for s in specs)


def _check_graph_io(path: Path, model, meta_path: Path, entry: dict) -> None:
    """The graph's own inputs and outputs must be those that meta.json records for it."""
    inputs, outputs = onnx_io_specs(model)
    for kind, got in (("inputs", inputs), ("outputs", outputs)):
        if got != entry[kind]:
            raise BundleError(
                f"{path}: the graph's {kind} are {_describe(got)}, {meta_path} says "
                f"{_describe(entry[kind])} — re-export the bundle instead of editing meta.json"
            )


def _check_rw_props(path: Path, model, meta: dict) -> None:
    """rw.onnx bakes radius/beta/steps/pairs in: they must be meta.json's (SPEC §5 settings)."""
    props = {p.key: p.value for p in model.metadata_props}
    for key in ("radius", "beta", "steps", "pairs"):
        want = str(float(meta[key])) if key == "beta" else str(meta[key])
        if props.get(key) != want:
            raise BundleError(
                f"{path}: built with {key}={props.get(key)}, meta.json says {want} — "
                "re-export the bundle instead of editing meta.json"
            )


def walk_params(meta: dict) -> WalkParams:
    """The random-walk settings that a bundle was exported with."""
    return WalkParams.from_meta(meta)


# ---------------------------------------------------------------------------- opening


def engine_path(bundle_dir: str | os.PathLike, name: str, precision: str = "fp32") -> Path:
    """Where ``psa build-engine`` writes a model's engine: ``<bundle>/cam.engine`` for "cam",
    ``cam.int8.engine`` for its int8 variant; rw.engine for every precision (the walk is fp32)."""
    stem = name if precision == "fp32" or name not in VARIANT_MODELS else f"{name}.{precision}"
    return Path(bundle_dir) / f"{stem}.engine"


def model_file(root: str | os.PathLike, meta: dict, name: str, precision: str = "fp32") -> Path:
    """The ONNX file that model ``name`` runs from at ``precision`` (``model_entries``)."""
    return Path(root) / model_entries(meta, precision, Path(root) / META)[name]["file"]


def model_entries(meta: dict, precision: str, where: str | os.PathLike = META) -> dict:
    """Model name → {file, sha256} of the graphs that run at ``precision`` (rw: always fp32)."""
    if precision not in PRECISIONS:
        raise BundleError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    entries = {k: {"file": v["file"], "sha256": v["sha256"]} for k, v in meta["models"].items()}
    if precision != "fp32":
        variants = meta.get("precisions", {})
        if precision not in variants:
            made = ", ".join(["fp32", *variants])
            raise BundleError(
                f"{where}: no {precision} graphs in this bundle (it has {made}) — export them: "
                f"psa export --precision fp32,{precision} ..."
            )
        entries.update({k: variants[precision][k] for k in VARIANT_MODELS})
    return entries


def _open_engine(root: Path, name: str, meta: dict, precision: str = "fp32") -> Backend:
    path = engine_path(root, name, precision)
    build = f"psa build-engine {root}" + (
        f" --precision {precision}" if precision != "fp32" else ""
    )
    if not path.is_file():
        raise BundleError(f"{path}: missing — build the engines on this machine: {build}")
    side = sidecar_path(path)
    if not side.is_file():
        return TensorRTBackend(path)  # which refuses it, saying how to rebuild it
    try:
        info = EngineInfo.read(side)
    except BackendError as e:
        raise BundleError(f"{e} — rebuild it: {build}") from None
    if info.onnx_sha256 != model_entries(meta, precision)[name]["sha256"]:
        raise BundleError(
            f"{path}: built from another {MODELS[name][0]} than this bundle's — rebuild it: {build}"
        )
    return TensorRTBackend(path)


def ort_provider_options(
    root: str | os.PathLike,
    meta: dict,
    name: str,
    precision: str = "fp32",
    device_id: int | None = None,
    sides: Sequence[int] = DEFAULT_SIDES,
) -> dict[str, dict]:
    """ONNX Runtime provider options for model ``name`` of a bundle: {provider: options}.

    The TensorRT provider builds an engine per graph; with no options it would rebuild one for
    every new input shape and keep none. So: an engine cache in ``<bundle>/ort_trt_cache``, one
    explicit profile covering images of ``sides`` pixels (``psa_infer.profiles``, the same as
    ``psa build-engine``'s), and FP16 kernels allowed for the fp16 graphs (INT8 graphs carry
    their own Q/DQ nodes; the walk stays float32). ``device_id`` (``--device cuda:N``) goes to
    the TensorRT and CUDA providers.
    """
    bad_id = isinstance(device_id, bool) or not isinstance(device_id, (int, type(None)))
    if bad_id or (device_id is not None and device_id < 0):
        raise ValueError(f"device_id: expected an integer >= 0, got {device_id!r}")
    lo, opt, hi = profile_strings(engine_profiles(meta, sides)[name])
    trt = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(Path(root) / ORT_TRT_CACHE),
        "trt_profile_min_shapes": lo,
        "trt_profile_opt_shapes": opt,
        "trt_profile_max_shapes": hi,
        "trt_fp16_enable": precision == "fp16" and name in VARIANT_MODELS,
    }
    cuda = {}
    if device_id is not None:
        trt["device_id"] = cuda["device_id"] = device_id
    return {"TensorrtExecutionProvider": trt, "CUDAExecutionProvider": cuda}


@dataclass
class _EngineLabeler(Labeler):
    """A Labeler on TensorRT engines: an image whose sides fall outside the pixels the engines
    were built for is refused by its size before any engine sees it (``check_image_size``)."""

    image_sides: tuple[int, int, int] = DEFAULT_SIDES
    engines: str = "the TensorRT engines"

    def predict_classes(self, img, threshold):
        check_image_size(img.shape[0], img.shape[1], self.image_sides, self.engines)
        return super().predict_classes(img, threshold)

    def label(self, img, *args, **kwargs):
        check_image_size(img.shape[0], img.shape[1], self.image_sides, self.engines)
        return super().label(img, *args, **kwargs)


def _size_checked(labeler: Labeler, engines: Sequence[Backend], root: Path) -> Labeler:
    """``labeler`` as an ``_EngineLabeler`` over the image sides every engine was built for;
    as it is where a sidecar records none (the engines then refuse tensor shapes)."""
    sides = [getattr(getattr(e, "info", None), "image_sides", []) for e in engines]
    if not sides or not all(len(s) == 3 for s in sides):
        return labeler
    lo, hi = max(s[0] for s in sides), min(s[2] for s in sides)
    opt = min(max(sides[0][1], lo), hi)
    kept = {f.name: getattr(labeler, f.name) for f in fields(Labeler)}
    return _EngineLabeler(**kept, image_sides=(lo, opt, hi), engines=f"{root}'s TensorRT engines")


@dataclass
class Bundle:
    """An opened bundle: its meta.json, the backends of its models, and the Labeler using them.

    ``walk`` is the walk actually used: "onnx" (rw.onnx / rw.engine) or "numpy"
    (``psa_infer.randomwalk``). ``providers`` names where each model runs (ONNX Runtime
    execution provider, or "TensorRT").
    """

    path: Path
    meta: dict
    labeler: Labeler
    walk: str
    backends: dict[str, Backend] = field(default_factory=dict)
    backend: str = "onnxruntime"

    @property
    def providers(self) -> dict[str, str]:
        """Model name → ONNX Runtime execution provider, or "TensorRT"."""
        return {k: getattr(b, "provider", "TensorRT") for k, b in self.backends.items()}

    @property
    def classes(self) -> list[str]:
        """Class names, background first (a label map's id i is ``classes[i]``)."""
        return list(self.meta["classes"])

    def label(self, image, classes=None, threshold=None, crf: bool = False) -> LabelResult:
        """Label one image (a path, a PIL image or an (H, W, 3) uint8 array).

        ``classes``: names of the classes it shows; None predicts them, with ``threshold``
        (default: the bundle's calibrated per-class thresholds, else 0.5). Returns the label
        map (``.label``, (H, W) uint8 ids into ``classes``) and its record (``.record``, as a
        line of labels.jsonl).
        """
        if threshold is None:
            calibrated = self.meta.get("class_thresholds")
            names = self.meta["classes"][1:]
            threshold = [calibrated[n] for n in names] if isinstance(calibrated, dict) else 0.5
        info = {"backend": self.backend, "walk": self.walk}
        return label_image(self.labeler, image, self.classes, classes, threshold, crf, info)

    def close(self) -> None:
        for b in self.backends.values():
            b.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bundle(
    bundle_dir: str | os.PathLike,
    backend: str = "onnxruntime",
    providers: str | Sequence[str] = "auto",
    walk: str = "auto",
    threads: int | None = None,
    precision: str = "fp32",
    device_id: int | None = None,
    sides: Sequence[int] = DEFAULT_SIDES,
) -> Bundle:
    """Open a bundle's models with ``backend`` and wire them into a Labeler.

    Args:
        backend: "onnxruntime" (the .onnx files; ``providers`` and ``threads`` as for
            ``OnnxRuntimeBackend``) or "tensorrt" (the ``<name>.engine`` files that
            ``psa build-engine`` wrote next to them on this machine).
        walk: "onnx" runs rw.onnx (rw.engine under TensorRT), "numpy" the numpy walk. "auto" =
            "onnx" on TensorRT and on ONNX Runtime's CUDA/TensorRT providers, where the walk's
            ~18k small operations run on the GPU; "numpy" on ONNX Runtime's CPU provider, where
            the numpy walk is faster than rw.onnx (benchmarks/export_bench.py). Both give the
            same scores to ~1e-6.
        precision: "fp32" (cam.onnx, aff.onnx), or a variant that ``psa export --precision``
            wrote: "fp16" / "int8" (cam.int8.onnx, ...; under TensorRT, engines built from
            them). The walk is float32 whatever the precision.
        device_id: the GPU of ONNX Runtime's CUDA and TensorRT providers (default: theirs, 0).
        sides: (MIN, OPT, MAX) image pixels that ONNX Runtime's TensorRT provider builds its
            engines for (``ort_provider_options``). TensorRT engines carry their own, from
            ``psa build-engine --profile``; an image outside them is refused by its size.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if walk not in WALKS:
        raise ValueError(f"walk: expected one of {', '.join(WALKS)}, got {walk!r}")
    root = Path(bundle_dir)
    meta = load_meta(root)
    entries = model_entries(meta, precision, root)
    opened: dict[str, Backend] = {}

    def model(name: str) -> Backend:
        if backend == "tensorrt":
            opened[name] = _open_engine(root, name, meta, precision)
        else:
            path = root / entries[name]["file"]
            options = ort_provider_options(root, meta, name, precision, device_id, sides)
            opened[name] = OnnxRuntimeBackend(path, providers, threads, options)
        return opened[name]

    try:
        cam, aff = model("cam"), model("aff")
        if walk == "auto":
            on_gpu = backend == "tensorrt" or getattr(cam, "provider", "") in _GPU_PROVIDERS
            walk = "onnx" if on_gpu else "numpy"
        labeler = Labeler(
            cam_forward_from(cam),
            aff_forward_from(aff),
            mean=tuple(float(v) for v in meta["mean"]),
            std=tuple(float(v) for v in meta["std"]),
            scales=tuple(float(s) for s in meta["scales"]),
            flip=meta["flip"],
            walk_params=walk_params(meta),
            classify=classify_from(cam),
            walk=walk_from(model("rw")) if walk == "onnx" else None,
        )
        if backend == "tensorrt":
            labeler = _size_checked(labeler, list(opened.values()), root)
    except BaseException:
        for b in opened.values():
            b.close()
        raise
    return Bundle(root, meta, labeler, walk, opened, backend)


def bundle_labeler(
    bundle_dir: str | os.PathLike,
    backend: str = "onnxruntime",
    providers: str | Sequence[str] = "auto",
    walk: str = "auto",
    threads: int | None = None,
) -> Labeler:
    """A Labeler for a bundle: ``open_bundle(...).labeler`` (see there for the arguments)."""
    return open_bundle(bundle_dir, backend, providers, walk, threads).labeler

"""Precision variants of a bundle's networks: FP16 graphs and INT8 graphs with explicit Q/DQ.

Precision is a property of the graphs (DESIGN.md, "Model bundle"): ``cam.fp16.onnx`` and
``aff.fp16.onnx`` compute in float16 behind float32 inputs and outputs; ``cam.int8.onnx`` and
``aff.int8.onnx`` carry explicit QuantizeLinear/DequantizeLinear pairs in the form TensorRT's
explicit quantization reads — signed int8, zero point 0 (symmetric), per-channel weight scales
on the output-channel axis, biases left in float (ONNX Runtime's quantizer makes int32 biases by
default, which TensorRT does not read). TensorRT builds them as strongly typed networks; here,
with no GPU, ONNX Runtime's CPU provider runs them for the parity ladder (``export/verify.py``).
The random walk (rw.onnx) has no variant: it stays float32.

Tools: onnxconverter-common's ``convert_float_to_float16`` for FP16; ONNX Runtime's static
quantizer (QDQ format) for INT8, with Q/DQ on the inputs of convolutions and additions only,
depthwise convolutions kept float and the channels between a depthwise convolution and the
next one equalized first (``equalize_depthwise``, an exact rescaling). Calibration runs the
bundle's own preprocessing on training images: cam.onnx sees every scale of meta.json (with
the mirror image when ``flip``), aff.onnx the padded image, i.e. exactly the inputs the
runtime feeds. ONNX Runtime's histogram calibrators stack the activations of one
``collect_data`` call, so each call gets batches of one shape; their histograms merge across
calls. The recipe (``INT8_RECIPE``) was chosen on the demo bundle by label agreement on
training images (README, "Precision variants").
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from psa_infer.artifacts import file_sha256
from psa_infer.bundle import PRECISIONS, VARIANT_MODELS, variant_file
from psa_infer.cam import normalize_image, scaled_inputs
from psa_infer.datasets import Sample, load_image
from psa_infer.errors import PsaError
from psa_infer.ops import pad_to_multiple
from psa_infer.pipeline import STRIDE

CALIB_METHODS = ("minmax", "entropy", "percentile")
# Where Q/DQ pairs go. "inputs": on the inputs of Conv and Add only (activations and weights),
# never on a convolution's output, so that an activation after a convolution (ReLU6's Clip) is
# quantized after it, on its own range — TensorRT's recommended placement, which it fuses into
# int8 convolutions with the activation inside. "all": ONNX Runtime's default, every operator
# its QDQ quantizer knows, outputs included (a Conv's pre-activation output gets its own
# symmetric range, half of which ReLU6 then throws away).
QDQ_PLACEMENTS = ("inputs", "all")
_INPUT_PLACEMENT_OPS = ("Conv", "Add")
MAX_EQUALIZE = 64.0
# Batches of one shape handed to one collect_data call: every activation of each batch is
# held until the call ends (a 240 px batch of 2 through MobileNetV2 d12 is ~0.2 GB).
_CALIB_CHUNK = 8


class PrecisionError(PsaError):
    """A precision variant cannot be made as asked (option, calibration images)."""


@dataclass(frozen=True)
class Int8Recipe:
    """How an INT8 graph is calibrated, where its Q/DQ pairs go and which layers stay float.

    ``method``: ONNX Runtime's calibration method (``CALIB_METHODS``); ``percentile`` its
    percentile of |activation| (``method="percentile"`` only, in (0, 100]). ``float_first``:
    the convolutions that read the image stay float (the input's 8 bits of colour are already
    near int8's resolution, and the first layer's error reaches every later one);
    ``float_last``: the convolutions that write a graph output (CAM classifier, affinity
    projection) stay float; ``float_depthwise``: grouped (depthwise) convolutions stay float —
    a 3×3 depthwise kernel has 9 weights per channel, often nearly cancelling, and its int8
    weights were the largest single error on MobileNetV2 (measured on the demo's aff.onnx: the
    mean error of log a_ij^β, the walk's affinities, 1.49 → 0.86 with them float, for about
    3 % of the convolutions' multiply-adds).
    ``placement``: ``QDQ_PLACEMENTS``. ``equalize``: the largest factor by which
    ``equalize_depthwise`` scales a channel between a depthwise convolution and the
    convolution after it (1 = off, at most ``MAX_EQUALIZE``).

    The default was picked on the demo bundle by final-label agreement with fp32 on 100
    held-out training images (calibration: 32 others): 97.45 % for the previous recipe (all
    placement, depthwise int8, no equalization), 98.50 % with depthwise float, 99.07 % with
    inputs placement too, 99.37 % with equalization ≤ 3× too (≤ 4×: 99.36 %); 95 % of the
    convolutions' multiply-adds stay int8. README, "Precision variants", has the table.
    """

    method: str = "percentile"
    percentile: float = 99.999
    float_first: bool = True
    float_last: bool = True
    float_depthwise: bool = True
    placement: str = "inputs"
    equalize: float = 3.0

    def __post_init__(self) -> None:
        if self.method not in CALIB_METHODS:
            raise PrecisionError(
                f"int8 calibration method: expected one of {', '.join(CALIB_METHODS)}, "
                f"got {self.method!r}"
            )
        if not (isinstance(self.percentile, (int, float)) and 0 < self.percentile <= 100):
            raise PrecisionError(
                f"int8 calibration percentile: expected a number in (0, 100], "
                f"got {self.percentile!r}"
            )
        if self.placement not in QDQ_PLACEMENTS:
            raise PrecisionError(
                f"int8 Q/DQ placement: expected one of {', '.join(QDQ_PLACEMENTS)}, "
                f"got {self.placement!r}"
            )
        ok = isinstance(self.equalize, (int, float)) and not isinstance(self.equalize, bool)
        if not (ok and 1.0 <= self.equalize <= MAX_EQUALIZE):
            raise PrecisionError(
                f"int8 equalization: expected a factor in [1, {MAX_EQUALIZE:g}] (1 = off), "
                f"got {self.equalize!r}"
            )

    def record(self) -> dict:
        """The recipe as meta.json's ``calibration`` keeps it (besides the image count)."""
        out = {"method": self.method}
        if self.method == "percentile":
            out["percentile"] = self.percentile
        out.update(
            float_first=self.float_first,
            float_last=self.float_last,
            float_depthwise=self.float_depthwise,
            placement=self.placement,
            equalize=self.equalize,
        )
        return out


INT8_RECIPE = Int8Recipe()


def parse_precisions(text: str) -> tuple[str, ...]:
    """``"fp32,fp16,int8"`` → ("fp32", "fp16", "int8"); fp32 is always made (the reference)."""
    got = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in got if p not in PRECISIONS]
    if bad or not got:
        raise PrecisionError(
            f"--precision: expected a comma-separated list of {', '.join(PRECISIONS)}, got {text!r}"
        )
    return tuple(p for p in PRECISIONS if p in got or p == "fp32")


# ---------------------------------------------------------------------------- FP16


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph computing in float16, its inputs and outputs kept float32 (Cast at the edges)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # "the float32 number 4.9e-08 will be truncated to 1e-07", per tiny weight: known,
        # and what the decision rungs of the ladder judge.
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    return _finish(half, model, "fp16")


# ---------------------------------------------------------------------------- INT8


def calibration_batches(
    name: str, images: Iterable[np.ndarray], meta: dict
) -> dict[tuple[int, ...], list[np.ndarray]]:
    """The inputs the runtime feeds ``name`` ("cam" or "aff") for ``images``, grouped by shape.

    cam.onnx: one (1 or 2, 3, h, w) batch per scale of meta.json (2 with the mirror image when
    ``flip``); aff.onnx: the normalised image zero-padded to a multiple of the stride,
    (1, 3, H8, W8). ``images`` are (H, W, 3) uint8 RGB.
    """
    groups: dict[tuple[int, ...], list[np.ndarray]] = defaultdict(list)
    mean, std = meta["mean"], meta["std"]
    for img in images:
        if name == "cam":
            batches = scaled_inputs(img, meta["scales"], mean, std, meta["flip"])
        else:
            batches = [pad_to_multiple(normalize_image(img, mean, std), STRIDE, 0.0)[None]]
        for b in batches:
            groups[b.shape].append(np.ascontiguousarray(b, np.float32))
    return dict(groups)


def _is_grouped(node: onnx.NodeProto) -> bool:
    """A grouped convolution (depthwise when there is one group per channel)."""
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


def keep_float_nodes(model: onnx.ModelProto, recipe: Int8Recipe) -> list[str]:
    """Names of the Conv nodes that ``recipe`` keeps in float (first and/or last layers,
    grouped convolutions)."""
    inputs = {i.name for i in model.graph.input}
    outputs = {o.name for o in model.graph.output}
    producer = {out: n for n in model.graph.node for out in n.output}
    keep = []
    if recipe.float_first:
        keep += [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[0] in inputs]
    if recipe.float_last:
        # Walk back from each output through value-preserving ops to the Conv that writes it.
        for out in outputs:
            node = producer.get(out)
            while node is not None and node.op_type in ("Relu", "Elu", "Flatten", "Identity"):
                node = producer.get(node.input[0])
            if node is not None and node.op_type == "Conv":
                keep.append(node.name)
    if recipe.float_depthwise:
        keep += [n.name for n in model.graph.node if _is_grouped(n)]
    return sorted(set(keep))


def _stored_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node values by name."""
    stored = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            stored[n.output[0]] = n.attribute[0].t
    return stored


def _equalizable(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, ...]]:
    """(depthwise Conv, Clip, Conv) chains that ``equalize_depthwise`` can rescale exactly.

    The depthwise convolution's only reader is a Clip from 0 to a stored bound (ReLU6), whose
    only reader is an ungrouped convolution; both convolutions' weights (and the first one's
    bias, if any) are initializers that nothing else reads.
    """
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            readers[i].append(n)
    outputs = {o.name for o in model.graph.output}
    stored = _stored_tensors(model)
    weights = {t.name for t in model.graph.initializer}
    from onnx import numpy_helper

    def own(name: str) -> bool:
        return name in weights and len(readers[name]) == 1

    def scalar(name: str) -> float | None:
        t = stored.get(name) if name else None
        return float(numpy_helper.to_array(t)) if t is not None and not t.dims else None

    chains = []
    for dw in model.graph.node:
        if not _is_grouped(dw) or dw.output[0] in outputs:
            continue
        (clip, *more) = readers[dw.output[0]] or [None]
        if more or clip is None or clip.op_type != "Clip" or len(clip.input) != 3:
            continue
        if scalar(clip.input[1]) != 0.0 or not (scalar(clip.input[2]) or 0) > 0:
            continue
        (conv, *more) = readers[clip.output[0]] or [None]
        if more or conv is None or conv.op_type != "Conv" or _is_grouped(conv):
            continue
        if clip.output[0] in outputs or conv.input[0] != clip.output[0]:
            continue
        biased = len(dw.input) > 2 and dw.input[2]
        if own(dw.input[1]) and own(conv.input[1]) and (not biased or own(dw.input[2])):
            chains.append((dw, clip, conv))
    return chains


def _channel_max(
    model: onnx.ModelProto, tensors: Sequence[str], batches: dict[tuple[int, ...], list]
) -> dict[str, np.ndarray]:
    """max |value| per channel (axis 1) of ``tensors`` over every calibration batch."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = model.graph.input[0].name
    top: dict[str, np.ndarray] = {}
    for arrays in batches.values():
        for x in arrays:
            for name, y in zip(tensors, session.run(list(tensors), {input_name: x}), strict=True):
                m = np.abs(y).max(axis=(0, *range(2, y.ndim)))
                top[name] = np.maximum(top[name], m) if name in top else m
    return top


def equalize_depthwise(
    model: onnx.ModelProto, batches: dict[tuple[int, ...], list[np.ndarray]], max_scale: float
) -> tuple[onnx.ModelProto, int]:
    """Cross-layer equalization of each depthwise conv → ReLU6 → conv chain; returns the new
    graph and the number of chains rescaled.

    Per-tensor int8 of the activation between the two convolutions gives every channel one
    step size, so a channel whose values stay small (measured on ``batches``, the calibration
    inputs) gets few levels. Channel c is scaled up by k_c = min(max_scale, largest channel
    max / its max): the depthwise weights and bias times k_c, the ReLU6 bound (Clip 0..6
    becomes Relu then Min with 6·k_c per channel) times k_c, the next convolution's input
    channel c divided by k_c. The same function in real arithmetic (float32: ~1e-5).
    """
    from onnx import numpy_helper

    chains = _equalizable(model)
    if not chains or max_scale <= 1.0:
        return model, 0
    top = _channel_max(model, [clip.output[0] for _, clip, _ in chains], batches)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    stored = _stored_tensors(out)
    nodes = list(out.graph.node)
    index = {n.output[0]: i for i, n in enumerate(nodes)}

    def scale(name: str, factor: np.ndarray) -> None:
        t = inits[name]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, name))

    replaced = {}
    for dw, clip, conv in chains:
        r = top[clip.output[0]].astype(np.float64)
        k = np.clip(r.max() / np.maximum(r, r.max() / max_scale), 1.0, max_scale)
        k = k.astype(np.float32)
        scale(dw.input[1], k.reshape(-1, 1, 1, 1))
        if len(dw.input) > 2 and dw.input[2]:
            scale(dw.input[2], k)
        scale(conv.input[1], (1.0 / k).reshape(1, -1, 1, 1))
        bound = float(numpy_helper.to_array(stored[clip.input[2]]))
        base = clip.name or clip.output[0]
        limit, relu_out = f"{base}/equalized_bound", f"{base}/relu_output"
        shape = (1, -1) + (1,) * (len(inits[dw.input[1]].dims) - 2)
        out.graph.initializer.append(numpy_helper.from_array((bound * k).reshape(shape), limit))
        replaced[index[clip.output[0]]] = [
            onnx.helper.make_node("Relu", [clip.input[0]], [relu_out], name=f"{base}/relu"),
            onnx.helper.make_node("Min", [relu_out, limit], [clip.output[0]], name=f"{base}/min"),
        ]
    new_nodes = []
    for i, n in enumerate(nodes):
        new_nodes += replaced.get(i, [n])
    # The Clips' bounds go with them when nothing else reads them.
    bounds = {name for _, clip, _ in chains for name in clip.input[1:]}
    read = {i for n in new_nodes for i in n.input} | {o.name for o in out.graph.output}
    new_nodes = [n for n in new_nodes if not (set(n.output) & bounds) or n.output[0] in read]
    kept = [t for t in out.graph.initializer if t.name not in bounds or t.name in read]
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out, len(chains)


class _Feeds:
    """An ONNX Runtime CalibrationDataReader over a list of input arrays."""

    def __init__(self, input_name: str, arrays: Sequence[np.ndarray]) -> None:
        self._it = iter([{input_name: a} for a in arrays])

    def get_next(self) -> dict | None:
        return next(self._it, None)


def to_int8(
    model_path: str | os.PathLike,
    batches: dict[tuple[int, ...], list[np.ndarray]],
    recipe: Int8Recipe = INT8_RECIPE,
) -> onnx.ModelProto:
    """``model_path`` quantized to INT8 with explicit symmetric Q/DQ, calibrated on ``batches``.

    ``batches`` as ``calibration_batches`` returns them (shape → arrays). With
    ``recipe.equalize`` > 1 the graph is first rescaled by ``equalize_depthwise`` (ranges
    measured on ``batches``), then calibrated. Q/DQ pairs go where ``recipe.placement`` says,
    on every node but those ``keep_float_nodes`` names; weights per output channel,
    activations per tensor.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        create_calibrator,
        quantize_static,
        save_tensors_data,
    )

    if not batches:
        raise PrecisionError("int8: no calibration images")
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise PrecisionError(
            f"int8: needs onnxruntime >= 1.32 (its quantizer's calibration cache), found "
            f"{onnxruntime.__version__}"
        )
    source = onnx.load(model_path)
    model, _ = equalize_depthwise(source, batches, recipe.equalize)
    input_name = model.graph.input[0].name
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.method]
    calib_options = {"symmetric": True}
    if recipe.method == "percentile":
        calib_options["percentile"] = recipe.percentile
    placement = {}
    if recipe.placement == "inputs":
        placement = {
            "op_types_to_quantize": list(_INPUT_PLACEMENT_OPS),
            "OpTypesToExcludeOutputQuantization": ["Conv"],
        }
    with tempfile.TemporaryDirectory(prefix="psa-int8-") as tmp:
        if model is not source:
            model_path = Path(tmp) / "equalized.onnx"
            onnx.save_model(model, model_path)
        calibrator = create_calibrator(
            Path(model_path),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=method,
            providers=["CPUExecutionProvider"],
            extra_options=calib_options,
        )
        # ONNX Runtime's calibrators print a line per batch on stdout ("Collecting tensor data
        # and making histogram ..."); stdout is the command's own.
        with contextlib.redirect_stdout(io.StringIO()):
            for arrays in batches.values():  # one shape per call; ranges/histograms merge
                for i in range(0, len(arrays), _CALIB_CHUNK):
                    calibrator.collect_data(_Feeds(input_name, arrays[i : i + _CALIB_CHUNK]))
            ranges = calibrator.compute_data()
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        del calibrator
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(model_path),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float_nodes(model, recipe),
            op_types_to_quantize=placement.pop("op_types_to_quantize", None),
            calibrate_method=method,
            calibration_cache_path=str(cache),
            extra_options={
                "ActivationSymmetric": True,  # zero point 0: TensorRT reads symmetric only
                "WeightSymmetric": True,
                "QuantizeBias": False,  # TensorRT reads float biases, not int32 ones
                **placement,
            },
        )
        quantized = onnx.load(out)
    problems = int8_form_problems(quantized)
    if problems:  # the quantizer's behaviour changed under us: refuse rather than mislead
        raise PrecisionError(
            f"int8: {len(problems)} Q/DQ nodes not in TensorRT's form: {problems[0]}"
        )
    return _finish(quantized, source, "int8")


def int8_form_problems(model: onnx.ModelProto) -> list[str]:
    """What in ``model``'s Q/DQ nodes TensorRT's explicit quantization would not read as meant.

    Expected: every QuantizeLinear/DequantizeLinear with a stored int8 zero point of 0 and
    positive scales; a DequantizeLinear of stored weights with one scale per channel of its
    ``axis``; no int32 tensors dequantized (quantized biases). Returns one line per problem.
    """
    from onnx import numpy_helper

    stored = _stored_tensors(model)
    problems = []
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        what = f"{n.op_type} {n.name or n.output[0]}"
        zp = stored.get(n.input[2]) if len(n.input) > 2 else None
        if zp is None:
            problems.append(f"{what}: no stored zero point (ONNX then means uint8)")
        elif zp.data_type != onnx.TensorProto.INT8:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(zp.data_type)
            problems.append(f"{what}: {np.dtype(dtype).name} zero point, expected int8")
        elif np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{what}: zero point not 0 (asymmetric)")
        scale = stored.get(n.input[1])
        if scale is None or np.any(numpy_helper.to_array(scale) <= 0):
            problems.append(f"{what}: scale not stored or not > 0")
        data = stored.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if data is None:
            continue
        if data.data_type == onnx.TensorProto.INT32:
            problems.append(f"{what}: dequantizes int32 {n.input[0]} (a quantized bias)")
        elif scale is not None and len(data.dims) > 1:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if list(scale.dims) != [data.dims[axis]]:
                problems.append(f"{what}: per-tensor weight scale, expected one per channel")
    return problems


# ---------------------------------------------------------------------------- both


def _finish(model: onnx.ModelProto, source: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """Keep the source's opset and the oldest IR version carrying it; record the precision."""
    want = {o.domain: o.version for o in source.opset_import}
    used = {n.domain for n in model.graph.node}
    del model.opset_import[:]
    for domain, version in want.items():
        model.opset_import.append(onnx.helper.make_opsetid(domain, version))
    extra = used - set(want)
    if extra:
        raise PrecisionError(f"{precision}: the converter wrote nodes of domains {sorted(extra)}")
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    props = {p.key: p.value for p in source.metadata_props}
    props["precision"] = precision
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def make_variant(
    name: str,
    precision: str,
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib_images: Sequence[np.ndarray] | None = None,
    meta: dict | None = None,
    recipe: Int8Recipe = INT8_RECIPE,
) -> onnx.ModelProto:
    """Write the ``precision`` variant of the fp32 graph ``fp32_path`` to ``out_path``.

    INT8 needs ``calib_images`` ((H, W, 3) uint8 RGB) and the bundle's ``meta`` (mean, std,
    scales, flip) to build the calibration inputs.
    """
    if precision == "fp16":
        model = to_fp16(onnx.load(fp32_path))
    elif precision == "int8":
        if not calib_images or meta is None:
            raise PrecisionError("int8: needs calibration images (--calib)")
        model = to_int8(fp32_path, calibration_batches(name, calib_images, meta), recipe)
    else:
        raise PrecisionError(f"precision: expected fp16 or int8 for a variant, got {precision!r}")
    onnx.save_model(model, out_path)
    return model


def write_variants(
    root: str | os.PathLike,
    meta: dict,
    precisions: Sequence[str],
    calib: Sequence[Sample] | None = None,
    recipe: Int8Recipe = INT8_RECIPE,
) -> dict:
    """Write the fp16/int8 variants of ``root``'s cam.onnx and aff.onnx; returns meta.json's
    ``precisions`` object ({precision: {model: {file, sha256}}}, int8 with its calibration).

    ``meta``: the bundle's meta.json so far (mean, std, scales, flip). ``calib``: the images
    that INT8 is calibrated on (required for "int8").
    """
    root = Path(root)
    wanted = [p for p in precisions if p != "fp32"]
    if "int8" in wanted and not calib:
        raise PrecisionError("--precision int8: needs calibration images (--calib IMAGES)")
    images = [load_image(s.image) for s in calib] if "int8" in wanted else None
    out: dict = {}
    for precision in wanted:
        entries: dict = {}
        for name in VARIANT_MODELS:
            file = variant_file(name, precision)
            make_variant(name, precision, root / variant_file(name), root / file, images, meta,
                         recipe)  # fmt: skip
            entries[name] = {"file": file, "sha256": file_sha256(root / file)}
        if precision == "int8":
            entries["calibration"] = {"images": len(images), **recipe.record()}
        out[precision] = entries
    return out

"""The random walk as one ONNX graph (``rw.onnx``), built with ``onnx.helper`` — no torch.

Inputs ``scores`` (C, h, w) and ``features`` (D, h, w), float32, every dimension dynamic; output
``walked`` (C, h, w) float32, equal to ``psa_infer.randomwalk.random_walk(scores,
pair_affinity(features, radius, pairs), beta, steps, radius)`` (DESIGN.md, "The random walk").

Only dense operators that TensorRT's ONNX parser takes in 8.5 and 10.x (checked against
``export/tensorrt_onnx_ops.txt`` by the tests): every shift is a ``Pad`` by the static radius
followed by a ``Slice`` whose starts and ends are constants — a slice end is counted from the
padded end, so no slice or pad depends on h or w, and the only shape arithmetic is one
``ConstantOfShape`` for a grid of ones. Memory is O(D·N + K·N) for the preparation and O(C·N)
per walk step.

Graph, once per call (K half-disk offsets d_k, ``psa_infer.randomwalk.pair_offsets``)::

    valid[k]  1 where the pair (p, p + d_k) is in the pair set (grid or PSA), from padded ones
    aff[k]    exp(-mean_d |f(p) - f(p + d_k)|) * valid[k]            one offset at a time
    fw[k]     aff[k] ** beta;   bw[k][q] = fw[k][q - d_k]            the mirrored half-disk
    W_j       [1; fw; bw]_j / sum_j [1; fw; bw]_j                    2K+1 maps, summing to 1

then ``steps`` iterations of an ONNX ``Loop`` (trip count a scalar int64 initialiser) whose
body is::

    v' = sum_j W_j * Slice_j(Pad(v))                                 v (1, C, h, w)

one Pad, then a Slice, a Mul and an Add per offset (see ``_walk_body`` for why this form).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from psa_infer.backends import RW_FEATURES, RW_SCORES, RW_WALKED
from psa_infer.randomwalk import check_walk_params, pair_offsets

_PAIR_SETS = ("full", "psa")
# A Slice end of "to the end of the axis" (ONNX clamps it to the dimension).
_TO_END = np.iinfo(np.int64).max
# TensorRT 8.5's parser reads opsets up to 17 (onnx-tensorrt release/8.5-GA, docs/operators.md);
# 13 is the first opset with the tensor-input forms (Slice, Pad, Unsqueeze, ReduceSum axes).
_MIN_OPSET = 13


def _end(offset_from_end: int) -> int:
    """Slice end ``offset_from_end`` (<= 0) counted from the axis end; 0 means the whole axis."""
    return offset_from_end if offset_from_end < 0 else _TO_END


class _Graph:
    """Nodes and initialisers of one (sub)graph, with unique names (TensorRT errors name nodes)."""

    def __init__(self, prefix: str, consts: list[onnx.TensorProto], opset: int) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.consts = consts  # shared: subgraphs read the main graph's initialisers
        self.opset = opset
        self._count = 0
        self._const_names: dict[tuple, str] = {}

    def const(self, value: np.ndarray | list | float | int, dtype=np.int64) -> str:
        """An initialiser of the main graph (deduplicated); scalars stay rank 0."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._const_names:
            name = f"c{len(self.consts)}"
            self.consts.append(numpy_helper.from_array(arr, name))
            self._const_names[key] = name
        return self._const_names[key]

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        self._count += 1
        name = f"{self.prefix}{op_type}_{self._count}"
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    # Small wrappers for the opset-dependent forms.
    def unsqueeze(self, x: str, axes: list[int]) -> str:
        return self.op("Unsqueeze", [x, self.const(axes)])

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int) -> str:
        # ReduceSum takes axes as an input from opset 13, the other reductions from opset 18.
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.const(axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)

    def pad(self, x: str, begin: list[int], end: list[int]) -> str:
        return self.op("Pad", [x, self.const(begin + end)], mode="constant")

    def slice(self, x: str, axes: list[int], starts: list[int], ends: list[int]) -> str:
        return self.op("Slice", [x, self.const(starts), self.const(ends), self.const(axes)])


def _ones_like_grid(g: _Graph, features: str) -> str:
    """(1, 1, h, w) float32 ones with the grid of ``features`` (D, h, w)."""
    hw = g.slice(g.op("Shape", [features]), [0], [1], [3])
    shape = g.op("Concat", [g.const([1, 1]), hw], axis=0)
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    return g.op("ConstantOfShape", [shape], value=one)


def _valid_pairs(g: _Graph, ones: str, offsets: list, radius: int, pairs: str) -> str:
    """1 where the pair (p, p + d_k) is in the pair set: (K, 1, h, w), or (1, 1, h, w) for psa."""
    m = radius - 1
    # Second pixels lie at most m below, left or right of the first: pad bottom, left, right.
    padded = g.pad(ones, [0, 0, 0, m], [0, 0, m, m])
    if pairs == "psa":
        # The reference keeps the first pixels p with p + (m, -m) and p + (m, m) both inside the
        # grid, for every offset (SPEC §3.1, border quirk; see randomwalk._from_region).
        lower_left = g.slice(padded, [2, 3], [m, 0], [_TO_END, _end(-2 * m)])
        lower_right = g.slice(padded, [2, 3], [m, 2 * m], [_TO_END, _TO_END])
        return g.op("Mul", [lower_left, lower_right])
    shifted = [
        g.slice(padded, [2, 3], [dy, m + dx], [_end(dy - m), _end(dx - m)]) for dy, dx in offsets
    ]
    return g.op("Concat", shifted, axis=0)


def _transition_weights(
    g: _Graph, features: str, radius: int, beta: float, pairs: str
) -> list[str]:
    """Normalised one-step weights ``W_j[q] = A(q + e_j, q) / D[q]``, 2K+1 maps (1, 1, h, w).

    Order of the offsets e_j: 0, then d_1 … d_K (pairs starting at q), then -d_1 … -d_K (pairs
    ending at q); ``_walk_body`` shifts the scores in the same order.
    """
    m = radius - 1
    offsets = pair_offsets(radius).tolist()
    f = g.unsqueeze(features, [0])  # (1, D, h, w)
    ones = _ones_like_grid(g, features)
    padded = g.pad(f, [0, 0, 0, m], [0, 0, m, m])
    # One offset at a time, so that memory stays O(D·N + K·N) whatever the feature depth D.
    dist = []
    for dy, dx in offsets:
        second = g.slice(padded, [2, 3], [dy, m + dx], [_end(dy - m), _end(dx - m)])
        diff = g.op("Abs", [g.op("Sub", [f, second])])
        # The channel *mean*, as the reference (SPEC §4).
        dist.append(g.reduce("ReduceMean", diff, [1], keepdims=1))  # (1, 1, h, w)
    aff = g.op("Exp", [g.op("Neg", [g.op("Concat", dist, axis=0)])])  # (K, 1, h, w)
    # Zero where the pair leaves the grid (the padded features there are not features) or is
    # not in the pair set.
    aff = g.op("Mul", [aff, _valid_pairs(g, ones, offsets, radius, pairs)])
    forward = g.op("Pow", [aff, g.const(beta, np.float32)])  # pair (q, q + d_k) feeds q
    # Pair (q - d_k, q) feeds q with the weight stored at its first pixel q - d_k: shift each
    # map by +d_k (pad top, left, right by m; zeros where q - d_k is outside).
    padded_fw = g.pad(forward, [0, 0, m, m], [0, 0, 0, m])
    backward = [
        g.slice(padded_fw, [0, 2, 3], [k, m - dy, m - dx], [k + 1, _end(-dy), _end(-dx - m)])
        for k, (dy, dx) in enumerate(offsets)
    ]
    numer = g.op("Concat", [ones, forward, *backward], axis=0)  # (2K+1, 1, h, w)
    # D[q]: the self loop plus every pair that ends in q (column sums of the reference's A).
    weights = g.op("Div", [numer, g.reduce("ReduceSum", numer, [0], keepdims=1)])
    # Split once here rather than inside the loop: the body reads 2K+1 ready maps.
    return [g.slice(weights, [0], [j], [j + 1]) for j in range(2 * len(offsets) + 1)]


def _walk_body(weights: list[str], radius: int, consts: list, opset: int) -> onnx.GraphProto:
    """Loop body: ``v[c, q] <- sum_j W_j[q] * v[c, q + e_j]`` on (1, C, h, w) float32.

    One Pad, then per offset a constant Slice, a Mul and an Add. Measured under ONNX Runtime
    (CPU, 56×56): as fast as one variadic Sum of the products and 2–4× faster than stacking the
    shifted copies (Concat + Mul + ReduceSum over a (2K+1, C, h, w) tensor, which streams
    (2K+1)·C·N floats through memory each step); the running sum keeps a step's working memory
    at O(C·N).
    """
    g = _Graph("walk/", consts, opset)
    m = radius - 1
    offsets = pair_offsets(radius).tolist()
    disk = [(0, 0)] + offsets + [(-dy, -dx) for dy, dx in offsets]
    padded = g.pad("v_in", [0, 0, m, m], [0, 0, m, m])
    total = None
    for (ey, ex), w in zip(disk, weights, strict=True):
        shifted = g.slice(padded, [2, 3], [m + ey, m + ex], [_end(ey - m), _end(ex - m)])
        term = g.op("Mul", [shifted, w])
        total = term if total is None else g.op("Add", [total, term])
    # The condition is constant: the trip count alone ends the loop. A Constant (not the
    # body's cond input) because older onnx-tensorrt loop importers register state inputs only.
    cond = g.op("Constant", [], value=helper.make_tensor("t", TensorProto.BOOL, [], [True]))
    g.nodes.append(helper.make_node("Identity", [total], ["v_out"], name="walk/v_out"))
    g.nodes.append(helper.make_node("Identity", [cond], ["cond_out"], name="walk/cond_out"))
    float4 = helper.make_tensor_type_proto(TensorProto.FLOAT, [1, "C", "h", "w"])
    return helper.make_graph(
        g.nodes,
        "walk_step",
        inputs=[
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_value_info("v_in", float4),
        ],
        outputs=[
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_value_info("v_out", float4),
        ],
    )


def _check_args(radius: int, beta: float, steps: int, pairs: str, opset: int) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
        raise ValueError(f"radius: expected an integer >= 1, got {radius!r}")
    check_walk_params(beta, steps)
    if pairs not in _PAIR_SETS:
        raise ValueError(f"pairs: expected 'full' or 'psa', got {pairs!r}")
    top = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not _MIN_OPSET <= opset <= top:
        raise ValueError(f"opset: expected an integer in [{_MIN_OPSET}, {top}], got {opset!r}")


def build_rw_model(
    *, radius: int, beta: float, steps: int, pairs: str, opset: int = 17
) -> onnx.ModelProto:
    """The random walk as an ONNX model (checked, shapes inferred).

    Inputs ``scores`` (C, h, w) float32 — class scores at feature resolution, background
    included — and ``features`` (D, h, w) float32 — affinity features; output ``walked``
    (C, h, w) float32. C, D, h, w are dynamic. ``radius``, ``beta``, ``steps`` and ``pairs``
    ("full": every in-grid pair; "psa": the reference's pair set, SPEC §3.1) are baked in, as
    for ``psa_infer.randomwalk`` (no defaults: ``psa_infer.pipeline.WalkParams`` holds them).
    ``opset`` >= 13; TensorRT 8.5 reads up to 17.
    """
    _check_args(radius, beta, steps, pairs, opset)
    consts: list[onnx.TensorProto] = []
    g = _Graph("", consts, opset)
    if len(pair_offsets(radius)) == 0:
        # radius 1 has no pairs: every node keeps its own score (T is the identity).
        g.nodes.append(helper.make_node("Identity", [RW_SCORES], [RW_WALKED], name=RW_WALKED))
    else:
        weights = _transition_weights(g, RW_FEATURES, radius, float(beta), pairs)
        body = _walk_body(weights, radius, consts, opset)
        # Trip count: a scalar int64 initialiser; no condition input (TensorRT's kCOUNT loop).
        loop = g.op(
            "Loop", [g.const(int(steps)), "", g.unsqueeze(RW_SCORES, [0])], n_out=1, body=body
        )
        squeeze = helper.make_node("Squeeze", [loop, g.const([0])], [RW_WALKED], name=RW_WALKED)
        g.nodes.append(squeeze)
    dims = {RW_SCORES: ["C", "h", "w"], RW_FEATURES: ["D", "h", "w"], RW_WALKED: ["C", "h", "w"]}
    info = {k: helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in dims.items()}
    graph = helper.make_graph(
        g.nodes,
        "psa_random_walk",
        inputs=[info[RW_SCORES], info[RW_FEATURES]],
        outputs=[info[RW_WALKED]],
        initializer=consts,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="psa.export.rw_graph",
        doc_string=f"AffinityNet random walk: radius={radius} beta={beta} steps={steps} "
        f"pairs={pairs}",
    )
    # The oldest IR version that carries the opset (8 for opset 17, which TensorRT 8.5 reads);
    # onnx's default, the newest, would shut out older parsers for no gain.
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    props = {"radius": radius, "beta": float(beta), "steps": steps, "pairs": pairs}
    helper.set_model_props(model, {k: str(v) for k, v in props.items()})
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def save_rw_model(path: str | Path, **kwargs) -> Path:
    """Build the random-walk model (``build_rw_model(**kwargs)``) and write it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_rw_model(**kwargs), path)
    return path

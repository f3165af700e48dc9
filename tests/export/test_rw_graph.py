"""rw.onnx against the numpy random walk, the reference's golden walk, and TensorRT's needs."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.rw_graph import build_rw_model, save_rw_model
from psa_infer.pipeline import REFERENCE_WALK
from psa_infer.randomwalk import pair_affinity, random_walk

REF = REFERENCE_WALK.to_meta()  # radius, beta, steps, pairs of the reference

ort = pytest.importorskip("onnxruntime")
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@cache
def session(radius: int = 5, beta: float = 8.0, steps: int = 256, pairs: str = "full"):
    model = build_rw_model(radius=radius, beta=beta, steps=steps, pairs=pairs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])


def walk_onnx(scores, features, **params) -> np.ndarray:
    return session(**params).run(["walked"], {"scores": scores, "features": features})[0]


def random_inputs(c: int, h: int, w: int, seed: int = 0, d: int = 6, feat_scale: float = 0.3):
    """Scores in [0, 1) and features whose affinities (~0.7) still mix at beta = 8."""
    rng = np.random.default_rng(seed)
    scores = rng.random((c, h, w)).astype(np.float32)
    features = (feat_scale * rng.standard_normal((d, h, w))).astype(np.float32)
    return scores, features


@pytest.mark.parametrize("pairs", ["full", "psa"])
@pytest.mark.parametrize("steps", [0, 1, 7, 256])
@pytest.mark.parametrize("radius", [2, 3, 5])
def test_matches_numpy_walk(radius, steps, pairs):
    # non-square with an interior in PSA mode, smaller than the radius, a single row/column
    sizes = [(2 * radius + 3, 2 * radius + 6), (radius - 1, radius + 1), (1, 9), (6, 1), (1, 1)]
    for i, (h, w) in enumerate(sizes):
        scores, features = random_inputs(3, h, w, seed=10 * radius + i)
        got = walk_onnx(scores, features, radius=radius, steps=steps, pairs=pairs)
        aff = pair_affinity(features, radius=radius, pairs=pairs)
        expected = random_walk(scores, aff, beta=8.0, steps=steps, radius=radius)
        assert got.shape == (3, h, w) and got.dtype == np.float32
        # Both sides are float32 convex combinations (weights >= 0 summing to 1); the graph
        # computes its weights in float32 instead of float64, ~1e-7 relative, which 256 steps
        # never amplify: observed <= 5e-6. A wrong weight or pair is off by >= 1e-3.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        if steps and i == 0:  # (the small maps have no PSA pairs at all)
            assert np.abs(got - scores).max() > 1e-3  # the walk did something


def test_matches_numpy_walk_at_beta_1_and_deep_features():
    scores, features = random_inputs(4, 11, 13, seed=3, d=64, feat_scale=1.0)
    got = walk_onnx(scores, features, radius=5, beta=1.0, steps=50)
    expected = random_walk(scores, pair_affinity(features, 5), beta=1.0, steps=50)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_reproduces_reference_walk_12x15():
    g = np.load(GOLDEN / "psa_rw_12x15.npz")
    scores = g["cam_vec"].reshape(21, 12, 15)
    got = walk_onnx(scores, g["features"][0], pairs="psa")
    # 1e-4: the reference squares a float32 N×N matrix 8 times and is itself 2e-5 away from its
    # float64 redo (golden README); our float32 walk stays within 5e-6 of that redo.
    np.testing.assert_allclose(got, g["cam_rw_lowres"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got, g["cam_rw_lowres_fp64"], rtol=0, atol=5e-6)


def test_absent_classes_stay_exactly_zero():
    scores, features = random_inputs(3, 9, 10)
    scores[1] = 0.0
    got = walk_onnx(scores, features)
    assert not got[1].any()
    # ... and a constant field stays constant (every step is a weighted mean)
    const = np.full((1, 9, 10), 0.25, np.float32)
    np.testing.assert_allclose(walk_onnx(const, features), const, rtol=0, atol=1e-6)


def test_graph_is_checked_dynamic_and_parser_friendly():
    model = build_rw_model(**REF)
    onnx.checker.check_model(model, full_check=True)
    dims = {
        v.name: [d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.input, *model.graph.output]
    }
    assert dims == {
        "scores": ["C", "h", "w"],
        "features": ["D", "h", "w"],
        "walked": ["C", "h", "w"],
    }
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    (loop,) = [n for n in model.graph.node if n.op_type == "Loop"]
    # TensorRT: the trip count is a scalar int64 initialiser, no condition input.
    trip = weights[loop.input[0]]
    assert trip.shape == () and trip.dtype == np.int64 and int(trip) == 256
    assert loop.input[1] == ""
    # Every Pad and Slice takes constant pads/starts/ends/axes: nothing depends on h or w.
    body = loop.attribute[0].g
    for node in [*model.graph.node, *body.node]:
        if node.op_type in ("Pad", "Slice"):
            assert all(name in weights for name in node.input[1:]), node.name
    # One step is 2K+1 shifted multiply-adds of the scores, K = 34.
    ops = [n.op_type for n in body.node]
    assert ops.count("Slice") == 69 and ops.count("Mul") == 69 and ops.count("Pad") == 1


def test_other_opsets_and_radius_1():
    scores, features = random_inputs(2, 7, 8)
    expected = random_walk(scores, pair_affinity(features, 3), beta=8.0, steps=5, radius=3)
    for opset in (13, 18):  # ReduceMean takes its axes as an input from opset 18
        model = build_rw_model(**{**REF, "radius": 3, "steps": 5}, opset=opset)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"scores": scores, "features": features})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # radius 1 has no pairs: T is the identity, as in the numpy walk
    model = build_rw_model(**{**REF, "radius": 1})
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(
        sess.run(None, {"scores": scores, "features": features})[0], scores
    )


def test_save_writes_a_loadable_model(tmp_path):
    path = save_rw_model(tmp_path / "bundle" / "rw.onnx", radius=3, beta=8.0, steps=4, pairs="psa")
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    assert props == {"radius": "3", "beta": "8.0", "steps": "4", "pairs": "psa"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"radius": 0}, r"radius: expected an integer >= 1, got 0"),
        ({"radius": 2.0}, r"radius: expected an integer >= 1, got 2.0"),
        ({"beta": 0}, r"beta: expected a finite number > 0, got 0"),
        ({"beta": float("nan")}, r"beta: expected a finite number > 0, got nan"),
        ({"steps": -1}, r"steps: expected an integer >= 0, got -1"),
        ({"steps": True}, r"steps: expected an integer >= 0, got True"),
        ({"pairs": "irn"}, r"pairs: expected 'full' or 'psa', got 'irn'"),
        ({"opset": 12}, r"opset: expected an integer in \[13, \d+\], got 12"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_rw_model(**{**REF, **kwargs})

"""The local random walk against the reference's golden vectors and a dense N×N oracle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from psa_infer import ops
from psa_infer.randomwalk import pair_affinity, pair_offsets, random_walk

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ROOT = Path(__file__).resolve().parents[2]

# The reference reduces over channels and exponentiates in float32 with torch's kernels, ours
# rounds the exact value once: a float32 channel mean d carries ~1e-7 relative error, which
# exp(-d) turns into a relative error of about that size (observed <= 2.4e-7).
AFF_RTOL = 5e-7


@pytest.fixture(autouse=True, params=["numpy", "numba"])
def kernel(request, monkeypatch):
    """Every test here runs with both walk loops (psa_infer.walk_kernel and the numpy one)."""
    monkeypatch.setenv("PSA_RW_KERNEL", request.param)
    return request.param


def golden(name: str) -> np.lib.npyio.NpzFile:
    return np.load(GOLDEN / name)


# ---------------------------------------------------------------------------- dense oracle


def dense_affinity(affinity: np.ndarray, radius: int) -> np.ndarray:
    """The reference's N×N matrix (float64): unit diagonal, A[p, q] = A[q, p] = a for each pair.

    Written from the definition, independently of the module: a pair (p, p + d_k) is taken from
    every nonzero ``affinity[k, y, x]`` whose second pixel is inside the grid.
    """
    _, h, w = affinity.shape
    n = h * w
    dense = np.eye(n)
    for k, (dy, dx) in enumerate(pair_offsets(radius).tolist()):
        ys, xs = np.nonzero(affinity[k])
        keep = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)
        ys, xs = ys[keep], xs[keep]
        p, q = ys * w + xs, (ys + dy) * w + xs + dx
        dense[p, q] = dense[q, p] = affinity[k, ys, xs]
    return dense


def dense_walk(scores: np.ndarray, affinity: np.ndarray, beta: float, steps: int, radius: int):
    """``v · T^steps`` with ``T = A**beta / colsum`` exactly as SPEC §5, in float64."""
    c, h, w = scores.shape
    a = dense_affinity(affinity.astype(np.float64), radius) ** beta
    t = a / a.sum(axis=0, keepdims=True)
    v = scores.reshape(c, h * w).astype(np.float64)
    return (v @ np.linalg.matrix_power(t, steps)).reshape(c, h, w)


def random_inputs(c: int, h: int, w: int, seed: int = 0, feat_scale: float = 0.3):
    """Scores in [0, 1) and features whose affinities (~0.7) still mix at beta = 8."""
    rng = np.random.default_rng(seed)
    scores = rng.random((c, h, w)).astype(np.float32)
    features = (feat_scale * rng.standard_normal((6, h, w))).astype(np.float32)
    return scores, features


# ---------------------------------------------------------------------------- pair set


def test_offsets_match_reference():
    g = golden("psa_pair_indices.npz")
    np.testing.assert_array_equal(pair_offsets(5), g["offsets_r5"])
    assert pair_offsets(5).dtype == np.int64
    for r, count in g["radius_vs_num_offsets"]:
        assert len(pair_offsets(int(r))) == count


@pytest.mark.parametrize("size", [(7, 9), (14, 12), (12, 15), (20, 17)])
def test_psa_pair_set_matches_reference_indices(size):
    h, w = size
    g = golden("psa_pair_indices.npz")
    ind_from, ind_to = g[f"ind_from_{h}x{w}"], g[f"ind_to_{h}x{w}"].reshape(34, -1)
    _, features = random_inputs(1, h, w)
    aff = pair_affinity(features, pairs="psa")
    assert aff.shape == (34, h, w) and aff.dtype == np.float32
    offsets = pair_offsets(5)
    for k in range(34):
        ys, xs = np.nonzero(aff[k])  # row-major, as the reference lists its from-pixels
        np.testing.assert_array_equal(ys * w + xs, ind_from)
        np.testing.assert_array_equal(ind_from + offsets[k, 0] * w + offsets[k, 1], ind_to[k])


@pytest.mark.parametrize("size", [(7, 9), (3, 2), (1, 6), (12, 15)])
@pytest.mark.parametrize("radius", [2, 5])
def test_full_pair_set_is_every_in_bounds_pair(size, radius):
    h, w = size
    _, features = random_inputs(1, h, w)
    aff = pair_affinity(features, radius=radius, pairs="full")
    for k, (dy, dx) in enumerate(pair_offsets(radius).tolist()):
        for y in range(h):
            for x in range(w):
                inside = 0 <= y + dy < h and 0 <= x + dx < w
                assert (aff[k, y, x] > 0) == inside, (k, y, x)


def test_psa_degree_map_shows_the_border_quirk():
    # Golden README: neighbours (excluding self) per node of the 12x15 PSA graph.
    _, features = random_inputs(1, 12, 15)
    exists = pair_affinity(features, pairs="psa") > 0
    degree = exists.sum(axis=0)
    for k, (dy, dx) in enumerate(pair_offsets(5).tolist()):
        ys, xs = np.nonzero(exists[k])
        np.add.at(degree, (ys + dy, xs + dx), 1)
    np.testing.assert_array_equal(degree[0], [0, 0, 0, 0, 34, 35, 36, 37, 38, 38, 38, 4, 3, 2, 1])
    np.testing.assert_array_equal(degree[1], [1, 2, 3, 4, 39, 41, 43, 44, 45, 44, 43, 8, 6, 4, 2])
    np.testing.assert_array_equal(degree[-1], [0, 0, 1, 2, 3, 4, 5, 5, 5, 4, 3, 2, 1, 0, 0])
    assert degree.max() == 63


# ---------------------------------------------------------------------------- affinities


def test_pair_affinity_matches_reference_network_tail():
    g = golden("psa_aff_from_features.npz")
    h, w = g["feat_batch"].shape[2:]
    ys, xs = np.divmod(np.arange(h * w), w)
    in_from = (ys <= h - 5) & (xs >= 4) & (xs <= w - 5)
    ys, xs = ys[in_from], xs[in_from]
    for feats, affs in ((g["feat_batch"], g["aff_batch"]), (g["feat_single"], g["aff_single"])):
        for f, expected in zip(feats, affs, strict=True):
            got = pair_affinity(f, pairs="psa")[:, ys, xs]
            np.testing.assert_allclose(got, expected, rtol=AFF_RTOL, atol=0)


def test_dense_oracle_matches_reference_dense_matrix():
    # The oracle's N×N builder reproduces the reference's forward(to_dense=True).
    g = golden("psa_aff_from_features.npz")
    dense = dense_affinity(pair_affinity(g["feat_single"][0], pairs="psa"), 5)
    np.testing.assert_allclose(dense, g["aff_mat_dense_single"], rtol=AFF_RTOL, atol=0)


def test_dense_oracle_matches_reference_transition_matrix():
    # ... and its A**beta / colsum is the reference's one-step T (float32 there, hence 1e-6).
    g = golden("psa_rw_12x15.npz")
    a = dense_affinity(pair_affinity(g["features"][0], pairs="psa").astype(np.float64), 5) ** 8
    np.testing.assert_allclose(a, g["aff_mat_pow_beta"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(a / a.sum(axis=0), g["trans_mat_1step"], rtol=0, atol=1e-6)


def test_pair_affinity_is_exp_of_mean_abs_difference():
    _, features = random_inputs(1, 6, 8, feat_scale=2.0)
    aff = pair_affinity(features, radius=3)
    for k, (dy, dx) in enumerate(pair_offsets(3).tolist()):
        y, x = 2, 3
        expected = np.exp(-np.mean(np.abs(features[:, y, x] - features[:, y + dy, x + dx])))
        assert aff[k, y, x] == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------- golden walk


def test_walk_matches_reference_12x15():
    g = golden("psa_rw_12x15.npz")
    h, w = 12, 15
    aff = pair_affinity(g["features"][0], pairs="psa")
    ys, xs = np.divmod(g["ind_from"], w)
    np.testing.assert_allclose(aff[:, ys, xs], g["aff"], rtol=AFF_RTOL, atol=0)
    # and nothing outside the PSA pair set
    outside = np.ones(aff.shape, bool)
    outside[:, ys, xs] = False
    assert not aff[outside].any()

    cam_rw = random_walk(g["cam_vec"].reshape(21, h, w), aff, beta=8.0, steps=256)
    assert cam_rw.shape == (21, h, w) and cam_rw.dtype == np.float32
    # The reference squares a float32 N×N matrix 8 times; its own float64 redo differs from it by
    # 2e-5 (golden README), so 1e-4 is the reference's precision, not ours ...
    np.testing.assert_allclose(cam_rw, g["cam_rw_lowres"], rtol=0, atol=1e-4)
    # ... ours, 256 float32 convex combinations, stays within 5e-6 of the float64 redo.
    np.testing.assert_allclose(cam_rw, g["cam_rw_lowres_fp64"], rtol=0, atol=5e-6)


def test_full_labeling_chain_reproduces_reference_labels():
    g = golden("psa_rw_12x15.npz")
    height, width = (int(s) for s in g["orig_shape"])
    meta = json.loads(str(g["meta_json"]))
    cams = np.zeros((20, height, width), np.float32)
    cams[g["cam_keys"]] = g["cam_values"]
    scores = ops.scores_with_background(cams, alpha=meta["alpha"])  # channel k+1 = class k
    padded = ops.pad_to_multiple(scores, 8)
    # The background's float32 power may differ in its last bit between CPUs (test_ops:
    # test_background_matches_reference_at_original_size); the pooled means then by a few ulp.
    np.testing.assert_array_max_ulp(padded, g["cam_full_padded"], maxulp=1)
    pooled = ops.avg_pool(padded, 8)
    np.testing.assert_allclose(pooled.reshape(21, -1), g["cam_vec"], rtol=1e-6, atol=0)

    aff = pair_affinity(g["features"][0], radius=5, pairs="psa")
    walked = random_walk(pooled, aff, beta=meta["beta"], steps=2 ** meta["logt"], radius=5)
    up = ops.resize_bilinear(walked, padded.shape[1:])
    # 1e-4 as above; the labels below must then agree exactly, the smallest top-1/top-2 margin
    # inside the image being 1.1e-4 (golden README).
    np.testing.assert_allclose(up, g["cam_rw_up"], rtol=0, atol=1e-4)
    labels = up.argmax(axis=0)[:height, :width].astype(np.uint8)
    np.testing.assert_array_equal(labels, g["res"])


# ---------------------------------------------------------------------------- dense oracle


@pytest.mark.parametrize("pairs", ["full", "psa"])
@pytest.mark.parametrize("steps", [0, 1, 7, 256])
@pytest.mark.parametrize("beta", [1.0, 8.0])
@pytest.mark.parametrize("radius", [2, 3, 5])
def test_walk_matches_dense_oracle(radius, beta, steps, pairs):
    h, w = 2 * radius + 3, 2 * radius + 6  # non-square, with an interior in PSA mode too
    scores, features = random_inputs(3, h, w, seed=radius)
    aff = pair_affinity(features, radius=radius, pairs=pairs)
    got = random_walk(scores, aff, beta=beta, steps=steps, radius=radius)
    expected = dense_walk(scores, aff, beta, steps, radius)
    # Each float32 step is a convex combination (weights >= 0 summing to 1), so rounding errors
    # (~1e-7 relative per step) add up but are never amplified: 256 steps stay well below 1e-5
    # for scores in [0, 1). A wrong weight or pair would be off by >= 1e-3.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    if steps:
        assert np.abs(got - scores).max() > 1e-3  # the walk did something


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (6, 1), (3, 4), (4, 3), (2, 17)])
@pytest.mark.parametrize("pairs", ["full", "psa"])
def test_walk_on_maps_smaller_than_the_radius(size, pairs):
    h, w = size
    scores, features = random_inputs(2, h, w)
    aff = pair_affinity(features, radius=5, pairs=pairs)
    got = random_walk(scores, aff, beta=2.0, steps=9, radius=5)
    np.testing.assert_allclose(got, dense_walk(scores, aff, 2.0, 9, 5), rtol=0, atol=1e-5)


def test_affinity_outside_the_grid_is_ignored():
    # Entries of pairs that leave the grid (garbage from a padded network output, say) must not
    # leak into wrapped-around pixels of the flat layout.
    scores, features = random_inputs(2, 6, 7)
    aff = pair_affinity(features, radius=3)
    noisy = aff.copy()
    noisy[aff == 0] = 0.9
    np.testing.assert_array_equal(
        random_walk(scores, noisy, steps=5, radius=3), random_walk(scores, aff, steps=5, radius=3)
    )


# ---------------------------------------------------------------------------- properties


def test_absent_channels_stay_exactly_zero():
    scores, features = random_inputs(5, 9, 11)
    scores[[1, 3]] = 0
    aff = pair_affinity(features)
    out = random_walk(scores, aff)
    assert not out[[1, 3]].any()
    assert (out[[0, 2, 4]] > 0).all()
    # skipping them changes nothing for the others
    np.testing.assert_array_equal(out[[0, 2, 4]], random_walk(scores[[0, 2, 4]], aff))


@pytest.mark.parametrize("pairs", ["full", "psa"])
def test_constant_field_stays_constant(pairs):
    _, features = random_inputs(1, 10, 13)
    scores = np.full((2, 10, 13), 0.25, np.float32)
    out = random_walk(scores, pair_affinity(features, pairs=pairs), beta=1.0)
    np.testing.assert_allclose(out, 0.25, rtol=1e-5)  # every column of T sums to 1


def test_walk_preserves_degree_weighted_sum_not_plain_sum():
    # v·T with T = A D⁻¹ gives D ⊙ v' = v·A, so sum_q D[q] v[c, q] is invariant (A symmetric);
    # the plain sum is not (T's rows do not sum to 1).
    scores, features = random_inputs(2, 9, 12)
    aff = pair_affinity(features, radius=4)
    degree = dense_affinity(aff.astype(np.float64), 4).__pow__(8.0).sum(axis=0).reshape(9, 12)
    out = random_walk(scores, aff, beta=8.0, steps=40, radius=4)
    before = (scores * degree).sum(axis=(1, 2))
    np.testing.assert_allclose((out * degree).sum(axis=(1, 2)), before, rtol=1e-5)
    assert np.abs(out.sum(axis=(1, 2)) - scores.sum(axis=(1, 2))).max() > 1e-2


def test_isolated_nodes_keep_their_value_in_psa_mode():
    scores, features = random_inputs(3, 12, 15)
    out = random_walk(scores, pair_affinity(features, pairs="psa"), beta=1.0)
    for y, x in [(0, 0), (0, 1), (0, 2), (0, 3), (11, 13), (11, 14)]:
        np.testing.assert_array_equal(out[:, y, x], scores[:, y, x])
    assert np.abs(out[:, 5, 7] - scores[:, 5, 7]).max() > 1e-3


def test_steps_zero_returns_a_copy_of_the_scores():
    scores, features = random_inputs(2, 5, 6)
    out = random_walk(scores, pair_affinity(features), steps=0)
    np.testing.assert_array_equal(out, scores)
    assert out is not scores


def test_radius_one_has_no_pairs_and_is_the_identity():
    scores, features = random_inputs(2, 4, 5)
    aff = pair_affinity(features, radius=1)
    assert aff.shape == (0, 4, 5)
    np.testing.assert_array_equal(random_walk(scores, aff, radius=1), scores)


# ---------------------------------------------------------------------------- errors


def test_bad_affinity_shape_names_what_was_expected():
    scores, features = random_inputs(3, 12, 15)
    aff = pair_affinity(features)
    msg = (
        r"affinity: expected \(34, 12, 15\) float32 for radius 5 and scores of shape "
        r"\(3, 12, 15\), got \(33, 12, 15\) float32"
    )
    with pytest.raises(ValueError, match=msg):
        random_walk(scores, aff[:33])
    with pytest.raises(ValueError, match=r"affinity: expected \(12, 12, 15\) float32 for radius 3"):
        random_walk(scores, aff, radius=3)
    with pytest.raises(ValueError, match=r"got \(34, 12, 15\) float64"):
        random_walk(scores, aff.astype(np.float64))
    with pytest.raises(ValueError, match="affinity: expected finite values >= 0"):
        random_walk(scores, -aff)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 0.0}, r"beta: expected a finite number > 0, got 0.0"),
        ({"beta": float("inf")}, r"beta: expected a finite number > 0, got inf"),
        ({"steps": -1}, r"steps: expected an integer >= 0, got -1"),
        ({"steps": 2.5}, r"steps: expected an integer >= 0, got 2.5"),
        ({"radius": 0}, r"radius must be >= 1, got 0"),
    ],
)
def test_bad_walk_parameters(kwargs, match):
    scores, features = random_inputs(1, 6, 6)
    with pytest.raises(ValueError, match=match):
        random_walk(scores, pair_affinity(features), **kwargs)


def test_bad_scores_and_features():
    scores, features = random_inputs(2, 6, 6)
    aff = pair_affinity(features)
    with pytest.raises(ValueError, match=r"scores: expected \(C, h, w\) float32, got \(6, 6\)"):
        random_walk(scores[0], aff)
    with pytest.raises(ValueError, match=r"scores: expected \(C, h, w\) float32, got .* float64"):
        random_walk(scores.astype(np.float64), aff)
    bad = scores.copy()
    bad[0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="scores: expected finite values"):
        random_walk(bad, aff)
    with pytest.raises(ValueError, match=r"features: expected \(C, h, w\) float32, got list"):
        pair_affinity([[1.0]])
    with pytest.raises(ValueError, match=r"features: expected \(C, h, w\) float32, got .*int64"):
        pair_affinity(np.zeros((2, 3, 3), np.int64))
    with pytest.raises(ValueError, match=r"pairs: expected 'full' or 'psa', got 'irn'"):
        pair_affinity(features, pairs="irn")


def test_numerics_modules_do_not_import_torch():
    code = (
        "import sys; import psa_infer.randomwalk, psa_infer.ops, psa_infer.crf; "
        "sys.exit('torch' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---------------------------------------------------------------------------- walk loops


def test_kernel_choice_follows_the_environment(kernel, monkeypatch):
    from psa_infer.randomwalk import walk_kernel

    assert walk_kernel() == kernel  # numba is a dev dependency: "numba" really is compiled
    monkeypatch.setenv("PSA_RW_KERNEL", "fortran")
    with pytest.raises(ValueError, match="PSA_RW_KERNEL: expected one of auto, numba, numpy"):
        walk_kernel()


@pytest.mark.parametrize("threads", ["1", "2", "5"])
def test_compiled_loop_equals_numpy_loop(monkeypatch, threads):
    """Both loops do the same float32 products; the compiled one fuses multiply and add."""
    monkeypatch.setenv("PSA_RW_THREADS", threads)
    scores, features = random_inputs(4, 23, 31, seed=3)
    aff = pair_affinity(features)
    got = {}
    for name in ("numpy", "numba"):
        monkeypatch.setenv("PSA_RW_KERNEL", name)
        got[name] = random_walk(scores, aff, beta=8.0, steps=257)
    np.testing.assert_allclose(got["numba"], got["numpy"], rtol=0, atol=2e-6)
    assert (got["numba"].argmax(0) == got["numpy"].argmax(0)).all()


def test_bad_thread_count_is_a_one_line_error(monkeypatch):
    from psa_infer.walk_kernel import walk_threads

    monkeypatch.setenv("PSA_RW_THREADS", "3")
    assert walk_threads() == 3
    for bad in ("two", "0", "-1"):
        monkeypatch.setenv("PSA_RW_THREADS", bad)
        with pytest.raises(ValueError, match="PSA_RW_THREADS: expected an integer >= 1"):
            walk_threads()

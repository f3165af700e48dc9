"""Image-array helpers of the labeling pipeline, against brute force, torch and golden arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from psa_infer import ops

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


# ---------------------------------------------------------------------------- padding, pooling


def test_pad_to_multiple_pads_bottom_and_right():
    x = rand((2, 10, 13))
    out = ops.pad_to_multiple(x, 8)
    assert out.shape == (2, 16, 16) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :10, :13], x)
    assert not out[:, 10:].any() and not out[:, :, 13:].any()
    filled = ops.pad_to_multiple(x, 4, value=-1.0)
    assert filled.shape == (2, 12, 16)
    assert (filled[:, 10:] == -1).all() and (filled[:, :, 13:] == -1).all()


def test_pad_to_multiple_returns_a_copy_when_already_aligned():
    x = rand((1, 8, 16))
    out = ops.pad_to_multiple(x, 8)
    np.testing.assert_array_equal(out, x)
    assert out is not x


def test_avg_pool_is_the_block_mean():
    x = rand((3, 16, 24))
    out = ops.avg_pool(x, 8)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    for c in range(3):
        for i in range(2):
            for j in range(3):
                block = x[c, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].astype(np.float64)
                assert out[c, i, j] == pytest.approx(block.mean(), rel=1e-6)
    np.testing.assert_allclose(ops.avg_pool(x, 1), x)


def test_avg_pool_is_bit_exact_with_the_reference():
    # infer_aff's F.avg_pool2d(cam, 8, 8) on the padded score map.
    g = np.load(GOLDEN / "psa_rw_12x15.npz")
    pooled = ops.avg_pool(g["cam_full_padded"], 8)
    np.testing.assert_array_equal(pooled.reshape(21, -1), g["cam_vec"])


def test_avg_pool_rejects_unpadded_maps():
    with pytest.raises(ValueError, match=r"x: expected height and width that are multiples of 8"):
        ops.avg_pool(rand((1, 10, 16)), 8)
    with pytest.raises(ValueError, match=r"k: expected an integer >= 1, got 0"):
        ops.avg_pool(rand((1, 8, 8)), 0)
    with pytest.raises(ValueError, match=r"x: expected a \(C, H, W\) array, got \(8, 8\) float32"):
        ops.avg_pool(rand((8, 8)), 8)


# ---------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    ("src", "dst"),
    [((12, 15), (96, 120)), ((5, 7), (13, 29)), ((7, 3), (3, 11)), ((1, 1), (4, 5)),
     ((9, 9), (9, 9)), ((10, 12), (5, 5)), ((3, 4), (1, 1))],
)  # fmt: skip
def test_resize_bilinear_matches_torch(src, dst):
    torch = pytest.importorskip("torch")
    x = rand((3, *src), seed=sum(src))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], size=dst, mode="bilinear", align_corners=False
    )[0].numpy()
    out = ops.resize_bilinear(x, dst)
    assert out.shape == (3, *dst) and out.dtype == np.float32
    # Same float32 formula and grouping as torch's kernel; the rest is rounding (<= 1 ulp of 1).
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_resize_bilinear_matches_reference_upsampling():
    g = np.load(GOLDEN / "psa_rw_12x15.npz")
    up = ops.resize_bilinear(g["cam_rw_lowres"], (96, 120))
    np.testing.assert_allclose(up, g["cam_rw_up"], rtol=0, atol=1e-6)


def test_resize_bilinear_identity_and_errors():
    x = rand((2, 6, 7))
    np.testing.assert_array_equal(ops.resize_bilinear(x, (6, 7)), x)
    with pytest.raises(ValueError, match=r"size: expected \(H, W\) with H, W >= 1, got \(0, 4\)"):
        ops.resize_bilinear(x, (0, 4))
    with pytest.raises(ValueError, match=r"size: expected \(H, W\)"):
        ops.resize_bilinear(x, 8)


# ---------------------------------------------------------------------------- background


def test_background_score_formula_and_empty_class_list():
    cams = rand((3, 5, 6))
    bg = ops.background_score(cams, 4)
    assert bg.shape == (5, 6) and bg.dtype == np.float32
    np.testing.assert_allclose(bg, (1 - cams.max(axis=0)) ** 4, rtol=1e-6)
    np.testing.assert_array_equal(ops.background_score(np.zeros((0, 5, 6), np.float32), 16), 1)


def test_scores_with_background_stacks_background_first():
    cams = rand((2, 4, 4))
    scores = ops.scores_with_background(cams, 32)
    assert scores.shape == (3, 4, 4) and scores.dtype == np.float32
    np.testing.assert_array_equal(scores[0], ops.background_score(cams, 32))
    np.testing.assert_array_equal(scores[1:], cams)


def test_background_matches_reference_at_original_size():
    # infer_aff: channel 0 = (1 - max over the 20 class channels)^16 before padding.
    g = np.load(GOLDEN / "psa_rw_12x15.npz")
    height, width = (int(s) for s in g["orig_shape"])
    cams = np.zeros((20, height, width), np.float32)
    cams[g["cam_keys"]] = g["cam_values"]
    scores = ops.scores_with_background(cams, 16)
    # numpy's float32 power takes another SIMD path on CPUs without AVX-512 and may round the
    # last bit differently (1 % of pixels, 1 ulp, on a 2-core AMD EPYC); the rest is exact.
    np.testing.assert_array_max_ulp(scores, g["cam_full_padded"][:, :height, :width], maxulp=1)
    np.testing.assert_array_equal(scores[1:], g["cam_full_padded"][1:, :height, :width])

"""The labeling pipeline's walked scores: the optional peak normalisation (WalkParams.normalize)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from psa_infer.pipeline import (
    REFERENCE_WALK,
    WalkParams,
    peak_normalize,
    scores_to_label,
    upsample_scores,
    walk_scores_at_stride,
)


def test_peak_normalize_scales_each_channel_to_one_and_keeps_zero_channels():
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 0.3, (3, 5, 7)).astype(np.float32)
    s[1] = 0.0
    out = peak_normalize(s)
    assert out.dtype == np.float32 and out.shape == s.shape
    np.testing.assert_allclose(out.reshape(3, -1).max(axis=1), [1.0, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out[2] * s[2].max(), s[2], rtol=1e-6)  # shape kept, only scaled


def test_peak_normalize_does_not_raise_a_channel_of_rounding_dust():
    # A walk mixed flat: the background's 2e-6 everywhere (as a tiny untrained AffinityNet
    # leaves it) must not be raised to tie with the class's 0.57.
    s = np.stack([np.full((4, 4), 2.3e-6), np.full((4, 4), 0.568)]).astype(np.float32)
    s[0, 0, 0] += 1e-12
    out = peak_normalize(s)
    assert (out.argmax(axis=0) == 1).all()
    np.testing.assert_allclose(out[1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[0], 2.3e-6 / (1e-3 * 0.568), rtol=1e-4)


def small_object_scene(grid: int = 16):
    """A disc of 13 stride-8 cells whose CAM is 0.3 with a 1.0 peak at its centre, and
    affinity features that set it apart from the background by a mean |difference| of 0.5
    (affinity e^-0.5 across its edge: a weakly trained AffinityNet's, not near zero)."""
    h = w = grid * 8
    yy, xx = np.mgrid[:h, :w]
    c = grid // 2
    obj = ((yy // 8 - c) ** 2 + (xx // 8 - c) ** 2) <= 4
    cams = np.zeros((1, h, w), np.float32)
    cams[0][obj] = 0.3
    cams[0][(yy // 8 == c) & (xx // 8 == c)] = 1.0
    feats = np.zeros((4, grid, grid), np.float32)
    gy, gx = np.mgrid[:grid, :grid]
    feats[0][((gy - c) ** 2 + (gx - c) ** 2) <= 4] = 2.0
    return cams, feats, obj


def test_normalize_keeps_a_small_object_that_the_raw_walk_erases():
    cams, feats, obj = small_object_scene()
    size = obj.shape
    raw = scores_to_label(
        upsample_scores(walk_scores_at_stride(cams, feats, REFERENCE_WALK)), [3], size
    )
    # 256 steps leak the object's scores out and the background's in: the class is gone.
    assert not (raw == 3).any()
    kept = scores_to_label(
        upsample_scores(
            walk_scores_at_stride(cams, feats, replace(REFERENCE_WALK, normalize=True))
        ),
        [3],
        size,
    )
    inside = ((kept == 3) & obj).sum()
    assert inside >= 0.8 * obj.sum() and inside >= 0.8 * (kept == 3).sum()


def test_normalize_is_off_in_the_reference_walk_and_applies_to_any_walk_callable():
    assert REFERENCE_WALK.normalize is False
    assert WalkParams(16.0, 8.0, 256, 5, "full").normalize is False  # the five-field form
    cams, feats, _ = small_object_scene()
    half = np.float32(0.5)

    def walk(v, f):  # a stand-in for rw.onnx: any backend's walk is normalised the same way
        return v * half

    p = replace(REFERENCE_WALK, normalize=True)
    out = walk_scores_at_stride(cams, feats, p, walk)
    np.testing.assert_allclose(out.reshape(2, -1).max(axis=1), [1.0, 1.0], rtol=1e-6)
    raw = walk_scores_at_stride(cams, feats, REFERENCE_WALK, walk)
    assert raw.reshape(2, -1).max() <= 0.5 + 1e-6

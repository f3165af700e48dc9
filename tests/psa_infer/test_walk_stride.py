"""The walk at stride 4 (WalkParams.stride, label.walk_stride): seeds, features, scores, the
bundle's meta.json and the TensorRT profiles; stride 8 stays the reference's walk."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from psa_infer.bundle import BundleError, load_meta, open_bundle
from psa_infer.ops import avg_pool, resize_bilinear
from psa_infer.pipeline import (
    REFERENCE_WALK,
    upsample_scores,
    walk_scores,
    walk_scores_at_stride,
    walk_seeds,
)
from psa_infer.profiles import engine_profiles
from psa_infer.randomwalk import pair_affinity, random_walk

STRIDE4 = replace(REFERENCE_WALK, stride=4)


def scene(h=37, w=45, d=6, seed=0):
    """Two CAM channels on an image that is not a multiple of 8, stride-8 features."""
    rng = np.random.default_rng(seed)
    cams = rng.random((2, h, w), dtype=np.float32)
    feats = rng.random((d, -(-h // 8), -(-w // 8)), dtype=np.float32)
    return cams, feats


def test_stride4_seeds_pool_to_the_stride8_seeds():
    cams, _ = scene()
    s8 = walk_seeds(cams, 16.0)
    s4 = walk_seeds(cams, 16.0, 4)
    assert s4.shape == (3, 2 * s8.shape[1], 2 * s8.shape[2])
    np.testing.assert_allclose(avg_pool(s4, 2), s8, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"walk stride: expected one of \(8, 4\), got 2"):
        walk_seeds(cams, 16.0, 2)


def test_stride4_walk_is_the_walk_of_the_upsampled_features():
    cams, feats = scene()
    out = walk_scores_at_stride(cams, feats, STRIDE4)
    seeds = walk_seeds(cams, STRIDE4.alpha, 4)
    f4 = resize_bilinear(feats, seeds.shape[1:])
    aff = pair_affinity(f4, radius=STRIDE4.radius, pairs=STRIDE4.pairs)
    want = random_walk(seeds, aff, STRIDE4.beta, STRIDE4.steps, STRIDE4.radius)
    np.testing.assert_array_equal(out, want)
    assert out.shape == (3, 2 * feats.shape[1], 2 * feats.shape[2])
    full = walk_scores(cams, feats, STRIDE4)  # upsampled ×4 to the padded image
    assert full.shape == (3, 8 * feats.shape[1], 8 * feats.shape[2])
    np.testing.assert_allclose(full, upsample_scores(out, 4))
    # Not the stride-8 walk: the two differ on this scene.
    at8 = upsample_scores(walk_scores_at_stride(cams, feats, REFERENCE_WALK))
    assert not np.allclose(at8, full)


def test_any_walk_callable_gets_features_on_the_seeds_grid():
    cams, feats = scene()
    seen = []

    def walk(v, f):  # a stand-in for rw.onnx
        seen.append((v.shape, f.shape))
        return v

    walk_scores_at_stride(cams, feats, STRIDE4, walk)
    ((v_shape, f_shape),) = seen
    assert v_shape[1:] == f_shape[1:] == (2 * feats.shape[1], 2 * feats.shape[2])
    with pytest.raises(ValueError, match=r"affinity features: expected \(D, 5, 6\) for a 37x45"):
        walk_scores_at_stride(cams, feats[:, :4], STRIDE4)


def test_bundle_meta_says_the_walk_stride(tiny_bundle, tmp_path):
    assert "walk_stride" not in load_meta(tiny_bundle.bundle)  # stride 8: left out
    copy = shutil.copytree(tiny_bundle.bundle, tmp_path / "b")
    meta = json.loads((copy / "meta.json").read_text())
    meta["walk_stride"] = 4
    (copy / "meta.json").write_text(json.dumps(meta))
    with open_bundle(copy) as opened:
        assert opened.labeler.walk_params.stride == 4
    p8 = engine_profiles(load_meta(tiny_bundle.bundle), (32, 448, 512))["rw"]
    p4 = engine_profiles(load_meta(copy), (32, 448, 512))["rw"]
    for name in p8:
        for a, b in zip(p8[name], p4[name], strict=True):
            assert b[1:] == (2 * a[1], 2 * a[2]) and b[0] == a[0]
    for bad in (2, True, "4"):
        meta["walk_stride"] = bad
        (copy / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(BundleError, match=r"'walk_stride': expected one of 8, 4, got"):
            load_meta(copy)


def test_stride4_bundle_labels_with_onnx_runtime_as_with_numpy(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle.bundle, tmp_path / "b")
    meta = json.loads((copy / "meta.json").read_text())
    meta["walk_stride"] = 4
    (copy / "meta.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (41, 53, 3), dtype=np.uint8)
    cams = rng.random((1, 41, 53), dtype=np.float32)
    with open_bundle(copy, walk="numpy") as a, open_bundle(copy, walk="onnx") as b:
        params = b.labeler.walk_params
        assert params.stride == 4 and b.labeler.walk is not None  # rw.onnx walks
        feats = b.labeler.features(img)  # stride 8: (D, 6, 7)
        by_onnx = walk_scores_at_stride(cams, feats, params, b.labeler.walk)
        by_numpy = walk_scores_at_stride(cams, feats, params)
        assert by_onnx.shape == (2, 12, 14)  # the walk ran on the 4-px grid
        np.testing.assert_allclose(by_onnx, by_numpy, rtol=1e-3, atol=1e-5)
        la, lb = a.labeler.label(img, [1]), b.labeler.label(img, [1])
        assert la.shape == lb.shape == (41, 53)
        assert (la == lb).mean() > 0.99


def test_the_recipe_key_takes_4_or_8():
    from psa_infer.errors import PsaError
    from psa_train.config import load_config

    assert load_config(None, ["label.walk_stride=4"]).label.walk().stride == 4
    assert load_config(None, []).label.walk() == REFERENCE_WALK  # the reference's stride 8
    with pytest.raises(PsaError, match=r"label.walk_stride: expected a multiple of 4 in 4..8"):
        load_config(None, ["label.walk_stride=6"])

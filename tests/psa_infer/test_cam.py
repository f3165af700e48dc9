"""Multi-scale CAMs and tiled network inputs (psa_infer.cam) with numpy stand-in networks."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from psa_infer import cam as cam_mod
from psa_infer import pipeline
from psa_infer.cam import (
    STRIDE,
    forward_tiled,
    multiscale_cam,
    normalize_image,
    scaled_inputs,
    tile_windows,
)
from psa_infer.ops import resize_bilinear
from psa_infer.pipeline import REFERENCE_WALK, STAGES, Labeler

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def local_net(channels: int, seed: int = 0):
    """A stand-in network with stride-8 outputs that looks 1 px beyond each 8×8 block.

    (B, 3, h, w) → 3×3 box blur (zero padding) → per-block mean (blocks cut at the border, as
    a stride-2 conv with padding 1 does) → a fixed channel mix → ReLU: (B, C, ceil(h/8),
    ceil(w/8)). Tiles with a margin of 8 px must reproduce its untiled output exactly.
    """
    mix = np.random.default_rng(seed).standard_normal((channels, 3)).astype(np.float32)

    def forward(x: np.ndarray) -> np.ndarray:
        b, _, h, w = x.shape
        p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        blur = sum(p[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
        hp, wp = math.ceil(h / STRIDE) * STRIDE, math.ceil(w / STRIDE) * STRIDE
        blur = np.pad(blur, ((0, 0), (0, 0), (0, hp - h), (0, wp - w)))
        pooled = blur.reshape(b, 3, hp // 8, 8, wp // 8, 8).mean(axis=(3, 5))
        return np.maximum(np.einsum("kc,bchw->bkhw", mix, pooled), 0).astype(np.float32)

    return forward


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Noise with a red disc and a blue square, so that the stand-in CAMs have peaks."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h // 3) ** 2 + (xx - w // 3) ** 2 < (min(h, w) // 5) ** 2] = (230, 30, 30)
    img[h // 2 : h // 2 + h // 4, w // 2 : w // 2 + w // 4] = (20, 40, 240)
    return img


def test_normalize_image_is_the_per_pixel_formula_bit_for_bit():
    img = image(13, 17)
    x = img.astype(np.float32) * np.float32(1 / 255.0)
    expected = ((x - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)
    out = normalize_image(img, MEAN, STD)
    assert out.dtype == np.float32 and out.shape == (3, 13, 17) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("n", [1, 7, 64, 100, 513, 1024, 1025, 2100, 4096])
@pytest.mark.parametrize(("tile", "margin"), [(64, 16), (512, 128), (1024, 128), (40, 0)])
def test_tile_windows_cover_every_output_cell_once_with_margin(n, tile, margin):
    windows = tile_windows(n, tile, margin)
    cells = []
    for start, stop, keep0, keep1 in windows:
        assert 0 <= start < stop <= n and start % STRIDE == 0
        assert 0 <= keep0 < keep1 <= math.ceil((stop - start) / STRIDE)
        first, end = start + keep0 * STRIDE, min(start + keep1 * STRIDE, n)  # kept pixels
        # Memory follows the window: at most tile + 2 margins (+ the axis' n % 8 at its end).
        assert stop - start < tile + 2 * margin + STRIDE or len(windows) == 1
        # Context: margin pixels on each side, unless the window reaches the axis' end.
        assert first - start >= margin or start == 0
        assert stop - end >= margin or stop == n
        cells += range(start // STRIDE + keep0, start // STRIDE + keep1)
    assert cells == list(range(math.ceil(n / STRIDE)))
    if n > tile:  # all windows but the last have one length
        assert len({stop - start for start, stop, _, _ in windows[:-1]}) <= 1


@pytest.mark.parametrize("flip", [False, True])
def test_forward_tiled_matches_the_untiled_network(flip):
    net = local_net(4)
    x = normalize_image(image(150, 203), MEAN, STD)
    whole = net(cam_mod.flip_batch(x, flip))
    tiled = forward_tiled(net, x, flip, tile=48, margin=8)
    assert tiled.shape == whole.shape == (2 if flip else 1, 4, 19, 26)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)
    # Without context the tile borders show: the margin is what makes tiles exact.
    assert np.abs(forward_tiled(net, x, flip, tile=48, margin=0) - whole).max() > 1e-3
    # No tiling below the tile size: one call of the network on the whole batch.
    np.testing.assert_array_equal(forward_tiled(net, x, flip, tile=256), whole)


def test_forward_tiled_errors():
    x = normalize_image(image(40, 40), MEAN, STD)
    with pytest.raises(ValueError, match=r"tile: expected None or an integer >= 8, got 4"):
        forward_tiled(local_net(2), x, tile=4)
    with pytest.raises(ValueError, match=r"tile margin: expected a multiple of 8 >= 0, got 12"):
        forward_tiled(local_net(2), x, tile=16, margin=12)

    def half_stride(b):  # a network at stride 4 cannot be stitched on the stride-8 grid
        return np.zeros((b.shape[0], 2, b.shape[2] // 4, b.shape[3] // 4), np.float32)

    msg = r"aff backend: a 32x32 tile gave maps of 8x8, expected 4x4 \(stride 8\)"
    with pytest.raises(ValueError, match=msg):
        forward_tiled(half_stride, x, tile=16, margin=8, name="aff")
    with pytest.raises(ValueError, match=r"cam backend: expected \(B=2, C, h, w\) float32"):
        forward_tiled(lambda b: np.zeros((1, 2, 5, 5), np.float32), x, flip=True)


def reference_multiscale_cam(forward, img, keys, scales, flip):
    """The reference's recipe written plainly: every map upsampled, mirror maps flipped after."""
    h, w = img.shape[:2]
    keys = np.asarray(keys)
    total = np.zeros((len(keys), h, w), np.float32)
    for batch in scaled_inputs(img, scales, MEAN, STD, flip):
        out = forward(batch)[:, keys - 1]
        total += resize_bilinear(out[0], (h, w))
        if flip:
            total += resize_bilinear(out[1], (h, w))[:, :, ::-1]
    return total / (total.reshape(len(keys), -1).max(axis=1)[:, None, None] + 1e-5)


@pytest.mark.parametrize("size", [(61, 47), (64, 80)])
def test_multiscale_cam_flips_back_at_stride_8_like_the_reference(size):
    net, img = local_net(5), image(*size)
    scales = (1.0, 0.5, 1.5, 2.0)
    got = multiscale_cam(net, img, [2, 5], scales, MEAN, STD, flip=True)
    # Linear, mirror-symmetric resizing: equal up to float32 rounding.
    np.testing.assert_allclose(
        got, reference_multiscale_cam(net, img, [2, 5], scales, True), atol=2e-6
    )
    x = normalize_image(img, MEAN, STD)
    again = multiscale_cam(net, img, [2, 5], scales, MEAN, STD, True, normalized=x)
    np.testing.assert_array_equal(again, got)


def labeler(**kw) -> Labeler:
    params = replace(REFERENCE_WALK, steps=8)
    return Labeler(local_net(6, 1), local_net(8, 2), MEAN, STD, walk_params=params, **kw)


def test_label_normalises_the_image_once(monkeypatch):
    calls = []
    real = cam_mod.normalize_image

    def counting(img, mean, std):
        calls.append(img.shape)
        return real(img, mean, std)

    monkeypatch.setattr(cam_mod, "normalize_image", counting)
    monkeypatch.setattr(pipeline, "normalize_image", counting)
    lab = labeler(scales=(1.0, 0.5))
    lab.label(image(40, 56), [1, 3])
    # Once at scale 1 (shared by the CAM network and AffinityNet), once at scale 0.5.
    assert calls == [(40, 56, 3), (20, 28, 3)]


def test_label_reports_stage_times_without_changing_the_labels():
    lab, img = labeler(), image(45, 70)
    times = {}
    out = lab.label(img, [2, 4], times=times)
    np.testing.assert_array_equal(out, lab.label(img, [2, 4]))
    assert set(times) == set(STAGES) - {"crf"}
    assert all(t > 0 for t in times.values())


def test_label_with_tiles_matches_untiled_labels():
    img = image(150, 170, seed=3)
    tiled = labeler(tile=64, tile_margin=16).label(img, [1, 6])
    whole = labeler(tile=None).label(img, [1, 6])
    assert set(np.unique(whole)) > {0}  # a label map with something to compare
    np.testing.assert_array_equal(tiled, whole)


def test_label_crf_uses_the_walk_params_bilateral_width(monkeypatch):
    import psa_infer.crf as crf_mod

    widths = []

    def recording(img, probs, **kw):
        widths.append(kw["bilateral_sxy"])
        return probs

    monkeypatch.setattr(crf_mod, "crf_inference", recording)
    img = image(40, 48)
    labeler().label(img, [1, 3], crf=True)
    params = replace(REFERENCE_WALK, steps=8, crf_sxy=50.0)
    Labeler(local_net(6, 1), local_net(8, 2), MEAN, STD, walk_params=params).label(
        img, [1, 3], crf=True
    )
    assert widths == [80.0, 50.0]  # the reference's (SPEC §2), then the bundle's own

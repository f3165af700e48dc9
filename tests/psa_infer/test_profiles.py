"""Optimisation profiles: every shape the runtime feeds lies inside them, tiles included."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from psa_infer.cam import STRIDE, TILE, TILE_MARGIN, tile_windows
from psa_infer.pipeline import REFERENCE_WALK, Labeler
from psa_infer.profiles import (
    DEFAULT_SIDES,
    ProfileError,
    check_image_size,
    check_sides,
    engine_profiles,
    profile_strings,
    window_range,
)

DEPTH = 6


def fake_meta(scales=(1.0, 0.5, 1.5, 2.0), flip=True, classes=3) -> dict:
    """The keys of meta.json that the profiles read."""
    return {
        "flip": flip,
        "scales": list(scales),
        "classes": ["background"] + [f"c{i}" for i in range(1, classes)],
        "models": {"aff": {"outputs": [{"name": "features", "shape": ["B", DEPTH, "h", "w"]}]}},
    }


def inside(shape, profile) -> bool:
    lo, _, hi = profile
    return len(shape) == len(lo) and all(a <= n <= b for a, n, b in zip(lo, shape, hi, strict=True))


class Recorder:
    """Network stand-ins that record every input shape, with outputs of the right shape."""

    def __init__(self, classes: int) -> None:
        self.fed = {"cam": [], "aff": [], "rw_scores": [], "rw_features": []}
        self.classes = classes

    def cam(self, batch):
        self.fed["cam"].append(batch.shape)
        b, _, h, w = batch.shape
        return np.ones((b, self.classes, math.ceil(h / STRIDE), math.ceil(w / STRIDE)), np.float32)

    def classify(self, batch):
        self.fed["cam"].append(batch.shape)
        return np.zeros((batch.shape[0], self.classes), np.float32)

    def aff(self, batch):
        self.fed["aff"].append(batch.shape)
        _, _, h, w = batch.shape
        return np.ones((1, DEPTH, h // STRIDE, w // STRIDE), np.float32)

    def walk(self, scores, features):
        self.fed["rw_scores"].append(scores.shape)
        self.fed["rw_features"].append(features.shape)
        return scores


@pytest.mark.parametrize("sides", [(32, 448, 512), (40, 300, 1100)])
def test_every_input_the_labeler_feeds_is_inside_the_profiles(sides):
    # (40, 300, 1100): at scale 2 a 1100-px side becomes 2200 px, which runs in tiles; the
    # profile must hold the tiles (and the untiled classification pass), not the 2200-px image.
    meta = fake_meta()
    p = engine_profiles(meta, sides)
    rec = Recorder(classes=2)
    labeler = Labeler(
        rec.cam, rec.aff, (0.5,) * 3, (0.25,) * 3, meta["scales"], True,
        replace(REFERENCE_WALK, steps=1), rec.classify, rec.walk,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    lo, _, hi = sides
    for h, w in [(lo, lo), (hi, hi), (lo, hi), (hi, lo), (lo + 7, hi - 3)]:
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        labeler.predict_classes(img, 0.5)
        labeler.label(img, [1, 2])
    shapes = {k: set(v) for k, v in rec.fed.items()}
    assert all(inside(s, p["cam"]["image"]) for s in shapes["cam"]), (shapes["cam"], p["cam"])
    assert all(inside(s, p["aff"]["image"]) for s in shapes["aff"]), (shapes["aff"], p["aff"])
    assert all(inside(s, p["rw"]["scores"]) for s in shapes["rw_scores"])
    assert all(inside(s, p["rw"]["features"]) for s in shapes["rw_features"])
    # and the profile is tight where the labeler reaches its ends
    largest_cam = max(max(s[2:]) for s in shapes["cam"])
    if hi * 2 > TILE:
        assert p["cam"]["image"][2][2] <= TILE + 2 * TILE_MARGIN + STRIDE - 1 < hi * 2
        assert any(s[0] == 1 and max(s[2:]) > TILE for s in shapes["cam"])  # tiles were fed
    else:
        assert largest_cam == p["cam"]["image"][2][2] == hi * 2


def test_profiles_of_the_default_sides():
    p = engine_profiles(fake_meta(), DEFAULT_SIDES)
    assert DEFAULT_SIDES == (32, 448, 1024)
    # scale 0.5 of 32 px; scale 1 of 448 px, flip pairs; scale 2 of 1024 px = 2048 px in tiles
    # of at most 1024 + 2 * 128 (+ the last one's 7 px of rounding)
    assert p["cam"]["image"] == ((1, 3, 16, 16), (2, 3, 448, 448), (2, 3, 1287, 1287))
    assert p["aff"]["image"] == ((1, 3, 32, 32), (1, 3, 448, 448), (1, 3, 1024, 1024))
    assert p["rw"]["scores"] == ((1, 4, 4), (2, 56, 56), (3, 128, 128))  # bg + 2 classes
    assert p["rw"]["features"] == ((DEPTH, 4, 4), (DEPTH, 56, 56), (DEPTH, 128, 128))
    no_flip = engine_profiles(fake_meta(scales=(1.0,), flip=False), (32, 448, 512))
    assert no_flip["cam"]["image"] == ((1, 3, 32, 32), (1, 3, 448, 448), (1, 3, 512, 512))


def test_window_range_matches_the_tiling():
    assert window_range(16, 1000) == (16, 1000)  # untiled: the axis itself
    lengths = {
        stop - start
        for n in range(1025, 3000)
        for start, stop, _, _ in tile_windows(n, TILE, TILE_MARGIN)
    }
    assert window_range(1025, 2999) == (min(lengths), max(lengths))


@pytest.mark.parametrize("sides", [(64, 32, 512), (0, 1, 2), (1, 2), (1.5, 2, 3)])
def test_bad_sides(sides):
    with pytest.raises(ProfileError, match=r"^profile: expected image sides 1 <= MIN <= OPT"):
        check_sides(sides)


def test_profile_strings_are_trtexec_and_onnxruntime_syntax():
    rw = engine_profiles(fake_meta(), (32, 448, 512))["rw"]
    lo, opt, hi = profile_strings(rw)
    assert lo == f"scores:1x4x4,features:{DEPTH}x4x4"
    assert opt == f"scores:2x56x56,features:{DEPTH}x56x56"
    assert hi == f"scores:3x64x64,features:{DEPTH}x64x64"


def test_an_image_outside_the_sides_is_named_in_pixels():
    check_image_size(32, 512, (32, 448, 512), "b")  # the ends are inside
    message = (
        r"^b: a 600x400-pixel image is outside the TensorRT engines' profile, built for image "
        r"sides of 32 to 512 pixels \(psa build-engine --profile 32,448,512\) — rebuild them "
        r"for it: psa build-engine --profile 32,448,600$"
    )
    with pytest.raises(ProfileError, match=message):
        check_image_size(400, 600, (32, 448, 512), "b")
    with pytest.raises(ProfileError, match=r"--profile 20,448,512$"):
        check_image_size(20, 100, (32, 448, 512), "b")

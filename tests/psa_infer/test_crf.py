"""Dense CRF wrapper: shapes, normalisation, parity with a direct pydensecrf call, smoothing."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from psa_infer.crf import crf_inference
from psa_infer.errors import PsaError

pytest.importorskip("pydensecrf.densecrf")


def two_region_case(noise: float = 0.25, seed: int = 0):
    """A 24×32 image, left half dark and right half bright, and noisy scores of the halves."""
    rng = np.random.default_rng(seed)
    h, w = 24, 32
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2 :] = 200
    image = (image + rng.integers(0, 10, image.shape)).astype(np.uint8)
    truth = np.zeros((h, w), np.int64)
    truth[:, w // 2 :] = 1
    noisy = np.where(rng.random((h, w)) < noise, 1 - truth, truth)
    probs = np.where(np.arange(2)[:, None, None] == noisy, 0.7, 0.3).astype(np.float32)
    return image, probs, truth


def test_marginals_shape_dtype_and_normalisation():
    image, probs, _ = two_region_case()
    q = crf_inference(image, probs)
    assert q.shape == probs.shape and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1.0, atol=1e-5)
    assert (q >= 0).all()


def test_same_as_the_reference_call():
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 27, 3), dtype=np.uint8)
    probs = rng.random((4, 20, 27)).astype(np.float32)
    crf = dcrf.DenseCRF2D(27, 20, 4)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.copy(image), compat=10)
    expected = np.array(crf.inference(10)).reshape(4, 20, 27)
    np.testing.assert_array_equal(crf_inference(image, probs), expected)


def test_crf_cleans_label_noise_along_image_edges():
    image, probs, truth = two_region_case(noise=0.25)
    before = (probs.argmax(axis=0) == truth).mean()
    after = (crf_inference(image, probs).argmax(axis=0) == truth).mean()
    assert before < 0.8
    assert after > 0.98


def test_accepts_read_only_and_strided_images():
    image, probs, _ = two_region_case()
    expected = crf_inference(image, probs, iterations=3)
    flipped = np.ascontiguousarray(image[:, ::-1])[:, ::-1]  # a negative-stride view
    flipped.flags.writeable = False
    np.testing.assert_array_equal(crf_inference(flipped, probs, iterations=3), expected)


@pytest.mark.parametrize(
    ("image", "probs", "match"),
    [
        (np.zeros((8, 9, 3), np.float32), None, r"image: expected \(H, W, 3\) uint8, got"),
        (np.zeros((8, 9), np.uint8), None, r"image: expected \(H, W, 3\) uint8, got \(8, 9\)"),
        (None, np.ones((2, 8, 8), np.float32), r"probs: expected \(L, 8, 9\) float32 with L >= 1"),
        (None, np.ones((2, 8, 9), np.float64), r"got \(2, 8, 9\) float64"),
        (None, np.full((2, 8, 9), np.nan, np.float32), "probs: expected finite values"),
    ],
)
def test_bad_inputs(image, probs, match):
    image = np.zeros((8, 9, 3), np.uint8) if image is None else image
    probs = np.full((2, 8, 9), 0.5, np.float32) if probs is None else probs
    with pytest.raises(ValueError, match=match):
        crf_inference(image, probs)


def test_bad_iterations():
    with pytest.raises(ValueError, match=r"iterations: expected an integer >= 0, got -1"):
        crf_inference(np.zeros((4, 4, 3), np.uint8), np.ones((2, 4, 4), np.float32), -1)


def test_missing_pydensecrf_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)  # makes the import fail
    with pytest.raises(PsaError, match=r"'pydensecrf' \(PyPI: pydensecrf2\).*'crf' extra"):
        crf_inference(np.zeros((4, 4, 3), np.uint8), np.ones((2, 4, 4), np.float32))

"""Confident labels and pair labels against the reference's golden arrays and brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from psa_infer.randomwalk import pair_affinity, pair_offsets
from psa_train.afflabels import confident_labels, pair_labels

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def random_label(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(h, w), p=[0.4, 0.25, 0.2, 0.15])


def brute_force(label: np.ndarray, radius: int):
    """Full-layout labels from the definitions, one pair at a time."""
    h, w = label.shape
    offsets = pair_offsets(radius)
    out = np.zeros((3, len(offsets), h, w), np.float32)
    for k, (dy, dx) in enumerate(offsets.tolist()):
        for y in range(h):
            for x in range(w):
                if not (0 <= y + dy < h and 0 <= x + dx < w):
                    continue
                a, b = int(label[y, x]), int(label[y + dy, x + dx])
                valid = a != 255 and b != 255
                out[0, k, y, x] = a == b == 0
                out[1, k, y, x] = a == b and a != 0 and valid
                out[2, k, y, x] = a != b and valid
    return out


# ---------------------------------------------------------------------------- confident labels


def test_confident_labels_reproduce_reference_pipeline():
    g = np.load(GOLDEN / "psa_aff_label_pipeline.npz")
    scores = np.ascontiguousarray(g["label_scores_hwc"].transpose(2, 0, 1))  # (8, 96, 96)
    label = confident_labels(scores[:4], scores[4:], stride=8)
    assert label.dtype == np.uint8 and label.shape == (12, 12)
    np.testing.assert_array_equal(label, g["label_map"])


def test_confident_label_rules():
    # One 8x8 block per case; channels: bg, class 1, class 2.
    la = np.zeros((3, 8, 40), np.float32)
    ha = np.zeros((3, 8, 40), np.float32)
    la[:, :, 0:8] = [[[0.1]], [[0.8]], [[0.2]]]  # la says class 1, ha says class 1 → 1
    ha[:, :, 0:8] = [[[0.05]], [[0.8]], [[0.2]]]
    la[:, :, 8:16] = [[[0.9]], [[0.1]], [[0.0]]]  # la bg, ha class → uncertain, 255
    ha[:, :, 8:16] = [[[0.01]], [[0.1]], [[0.0]]]
    la[:, :, 16:24] = [[[0.9]], [[0.1]], [[0.0]]]  # la bg, ha bg → confident bg, 0
    ha[:, :, 16:24] = [[[0.5]], [[0.1]], [[0.0]]]
    la[:, :, 24:32] = [[[0.1]], [[0.2]], [[0.7]]]  # la class 2 but ha bg → 0 wins
    ha[:, :, 24:32] = [[[0.8]], [[0.2]], [[0.7]]]
    # columns 32:40 stay all zero: outside the image → 255
    np.testing.assert_array_equal(confident_labels(la, ha), [[1, 255, 0, 0, 255]])


def test_confident_labels_errors():
    la = np.zeros((3, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"ha: expected the shape of la \(3, 16, 16\), got"):
        confident_labels(la, la[:2])
    with pytest.raises(ValueError, match=r"la: expected height and width that are multiples of"):
        confident_labels(la[:, :12], la[:, :12])
    with pytest.raises(ValueError, match=r"la: expected \(K\+1, H, W\) float32, got \(16, 16\)"):
        confident_labels(la[0], la[0])


# ---------------------------------------------------------------------------- pair labels


@pytest.mark.parametrize("size", [12, 16])
def test_psa_pair_labels_match_reference_extractor(size):
    g = np.load(GOLDEN / "psa_aff_labels.npz")
    bg_pos, fg_pos, neg = pair_labels(g[f"label_{size}"], radius=5, pairs="psa")
    for name, got in (("bg_pos", bg_pos), ("fg_pos", fg_pos), ("neg", neg)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, g[f"{name}_{size}"])


def test_psa_pair_labels_of_reference_pipeline():
    g = np.load(GOLDEN / "psa_aff_label_pipeline.npz")
    for got, name in zip(
        pair_labels(g["label_map"], 5, "psa"), ("bg_pos", "fg_pos", "neg"), strict=True
    ):
        np.testing.assert_array_equal(got, g[name])


@pytest.mark.parametrize(("size", "radius"), [((9, 13), 5), ((6, 4), 3), ((3, 2), 5), ((1, 1), 2)])
def test_full_pair_labels_match_brute_force(size, radius):
    label = random_label(*size)
    got = np.stack(pair_labels(label, radius=radius, pairs="full"))
    assert got.shape == (3, len(pair_offsets(radius)), *size)
    np.testing.assert_array_equal(got, brute_force(label, radius))


def test_full_layout_matches_pair_affinity_layout():
    # Labels exist exactly where pair_affinity has a pair (labels are all zero elsewhere), and
    # the PSA layout is the full layout read at the PSA first pixels.
    label = random_label(11, 14, seed=3)
    full = np.stack(pair_labels(label, 5, "full"))
    features = np.random.default_rng(0).random((4, 11, 14)).astype(np.float32)
    exists = pair_affinity(features, pairs="full") > 0
    assert not full[:, ~exists].any()
    assert full.sum(axis=0).max() == 1  # a pair is at most one of bg_pos, fg_pos, neg

    psa = np.stack(pair_labels(label, 5, "psa"))
    np.testing.assert_array_equal(psa, full[:, :, 0:7, 4:10].reshape(3, 34, -1))


def test_psa_pair_labels_of_a_too_small_map_are_empty():
    for got in pair_labels(np.zeros((5, 8), np.uint8), 5, "psa"):
        assert got.shape == (34, 0) and got.dtype == np.float32


def test_pair_labels_errors():
    with pytest.raises(ValueError, match=r"label: expected \(h, w\) uint8, got \(4, 4\) int64"):
        pair_labels(np.zeros((4, 4), np.int64), 5, "psa")
    with pytest.raises(ValueError, match=r"pairs: expected 'psa' or 'full', got 'dense'"):
        pair_labels(np.zeros((4, 4), np.uint8), 5, "dense")

"""benchmarks/walk_headroom.py: the mask's pair weights, the walk with them, its errors.

The whole-run check (its AffinityNet row is the run's own walk) is in tests/test_pipeline.py,
which has a finished run.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.walk_headroom import (
    VARIANTS,
    error_shares,
    main,
    mask_affinity,
    mask_shares,
    variant_weights,
    walk_labels,
)
from psa_infer.ops import avg_pool
from psa_infer.pipeline import WalkParams, walk_seeds
from psa_infer.randomwalk import pair_offsets


def _two_regions(h: int = 64, w: int = 64) -> np.ndarray:
    """Class 1 on the left half, background on the right, an ignore column between."""
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 2] = 1
    mask[:, w // 2] = 255
    return mask


def test_shares_count_each_cells_labels_and_leave_out_ignore_and_padding():
    mask = _two_regions(60, 60)  # not a multiple of 8: the last cells are part padding
    shares = mask_shares(mask, 3)
    assert shares.shape == (3, 8, 8)
    assert (shares[2] == 0).all()  # a label no pixel has
    np.testing.assert_allclose(shares[1, :7, 0], 1.0)  # pure class-1 cells
    np.testing.assert_allclose(shares[0, :7, 7], 4 * 8 / 64)  # 4 real columns of 8 in the cell
    # The cell holding the ignore column (x = 30 of 24..31): 6 columns of class 1, 1 of background.
    np.testing.assert_allclose(shares[:, 0, 3], [1 / 8, 6 / 8, 0.0])
    assert (shares.sum(axis=0) <= 1 + 1e-6).all()


def test_mask_affinity_is_one_inside_a_region_zero_across_and_zero_off_the_grid():
    shares = mask_shares(_two_regions(), 2)
    aff = mask_affinity(shares, radius=3)
    offsets = [tuple(o) for o in pair_offsets(3)]
    right = offsets.index((0, 1))
    assert aff[right, 0, 0] == pytest.approx(1.0)  # class 1 next to class 1
    assert aff[right, 0, 5] == pytest.approx(1.0)  # background next to background
    # Cell 4 (x 32..39) holds the ignore column and 7 columns of background.
    assert aff[right, 0, 3] == pytest.approx(0.0)  # class 1 next to it
    assert aff[right, 0, 4] == pytest.approx(7 / 8)  # it next to pure background
    far = offsets.index((0, 2))
    assert aff[far, 0, 1] == pytest.approx(1.0)
    assert aff[far, 0, 2] == pytest.approx(0.0)  # class 1 two cells from background
    assert (aff[right, :, 7] == 0).all()  # pairs that leave the grid do not exist


def test_the_walk_with_the_masks_weights_fills_the_region_its_seed_is_in():
    mask = _two_regions()
    cams = np.zeros((1, 64, 64), np.float32)
    cams[0, 28:36, 4:12] = 1.0  # a CAM only on a small part of the class-1 half
    params = WalkParams(16.0, 16.0, 256, 5, "full", normalize=True)
    weights = mask_affinity(mask_shares(mask, 2), 5)  # the walk raises them to beta
    label = walk_labels(walk_seeds(cams, params.alpha), np.array([1]), weights, params, mask.shape)
    assert (label[:, :24] == 1).mean() > 0.99  # the whole left half, not just the seed
    assert (label[:, 40:] == 0).all()  # and nothing of the right half


def test_variants_cut_edges_and_join_insides():
    learned = np.array([0.5, 0.25, 0.0], np.float32)
    from_mask = np.array([1.0, 0.0, 1.0], np.float32)
    w = variant_weights(learned, from_mask)
    assert list(w) == list(VARIANTS)
    np.testing.assert_array_equal(w["AffinityNet"], learned)
    np.testing.assert_array_equal(w["edges cut"], [0.5, 0.0, 0.0])
    np.testing.assert_array_equal(w["insides joined"], [1.0, 0.25, 1.0])
    np.testing.assert_array_equal(w["mask affinities"], from_mask)


def test_error_shares_read_the_confusion_by_rows_of_truth():
    conf = np.array([[90, 10, 0], [20, 70, 10], [0, 0, 100]])
    e = error_shares(conf)
    assert e == {"fg_to_bg": 10.0, "bg_to_fg": 10.0, "wrong_class": 5.0}


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^walk_headroom: .*data root does not exist"):
        main([str(tmp_path / "nothing")])


def test_a_limit_below_one_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--limit", "0"])
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err


def test_at_stride_4_the_shares_pool_back_and_the_masks_walk_still_fills_the_region():
    mask = _two_regions(60, 60)
    s4 = mask_shares(mask, 3, stride=4)
    assert s4.shape == (3, 16, 16)  # the 64-px padded grid, as walk_seeds(..., 4)
    np.testing.assert_allclose(avg_pool(s4, 2), mask_shares(mask, 3), atol=1e-7)
    cams = np.zeros((1, 60, 60), np.float32)
    cams[0, 28:36, 4:12] = 1.0
    params = WalkParams(16.0, 16.0, 512, 5, "full", normalize=True, stride=4)
    seeds = walk_seeds(cams, params.alpha, 4)
    weights = mask_affinity(s4, 5)
    label = walk_labels(seeds, np.array([1]), weights, params, mask.shape)
    assert label.shape == mask.shape
    assert (label[:, :24] == 1).mean() > 0.99 and (label[:, 36:] == 0).all()

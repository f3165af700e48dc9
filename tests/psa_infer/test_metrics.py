import numpy as np
import pytest

from psa_infer.metrics import confusion, format_table, scores


def test_confusion_and_miou_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 255]])
    c = confusion(gt, pred, 3)
    # 255 in gt ignored; 255 in pred counts as background
    assert c.sum() == 7
    assert c.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]
    r = scores(c, ["bg", "a", "b"])
    iou = [1 / 4, 2 / 4, 1 / 2]
    assert r["miou"] == pytest.approx(np.mean(iou) * 100)
    assert r["pixel_accuracy"] == pytest.approx(4 / 7 * 100)
    assert r["per_class_iou"]["a"] == 50.0
    assert "mIoU" in format_table(r)


def test_absent_class_is_excluded_from_mean():
    c = confusion(np.zeros((2, 2)), np.zeros((2, 2)), 3)
    r = scores(c)
    assert r["miou"] == 100.0
    assert r["per_class_iou"]["1"] is None


def test_bad_inputs():
    with pytest.raises(ValueError, match="ground truth has 4 pixels, prediction 2"):
        confusion(np.zeros((2, 2)), np.zeros(2), 2)
    with pytest.raises(ValueError, match="class id 5 outside 0..2"):
        confusion(np.full((2, 2), 5), np.zeros((2, 2)), 3)

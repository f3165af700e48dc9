"""Evaluation of CAM folders and label-PNG folders against a data set's masks (``psa eval``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from psa_infer.artifacts import check_keys, load_cam
from psa_infer.cam import cam_prediction
from psa_infer.datasets import DataError, DataSet, Sample, output_path
from psa_infer.metrics import confusion, scores
from psa_infer.palette import load_label_png


def _with_masks(dataset: DataSet, split: str) -> list[Sample]:
    samples = dataset.split(split)
    missing = [s.id for s in samples if not dataset.has_ground_truth(s)]
    if missing:
        raise DataError(
            f"{dataset.root}: split '{split}' has no ground-truth mask for '{missing[0]}' "
            f"(+{len(missing) - 1} more); evaluation needs SegmentationClass PNGs"
        )
    return samples


def evaluate_cams(
    dataset: DataSet, cam_dir: str | Path, split: str, thresholds: Sequence[float]
) -> list[dict]:
    """mIoU of CAM-only predictions at each background threshold (one report per threshold)."""
    cam_dir = Path(cam_dir)
    n = len(dataset.classes)
    confs = [np.zeros((n, n), np.int64) for _ in thresholds]
    for s in _with_masks(dataset, split):
        gt = dataset.ground_truth(s)
        cam_path = output_path(cam_dir, s.id, ".npz")
        cam, keys = load_cam(cam_path, dataset.num_classes, gt.shape)
        check_keys(cam_path, keys, s.labels)
        for i, t in enumerate(thresholds):
            confs[i] += confusion(gt, cam_prediction(cam, keys, t), n)
    out = []
    for t, c in zip(thresholds, confs, strict=True):
        out.append({"bg_threshold": float(t), **scores(c, dataset.classes)})
    return out


def evaluate_labels(dataset: DataSet, label_dir: str | Path, split: str) -> dict:
    """mIoU of a folder of label PNGs (``<id>.png``) against the split's masks."""
    label_dir = Path(label_dir)
    n = len(dataset.classes)
    conf = np.zeros((n, n), np.int64)
    for s in _with_masks(dataset, split):
        gt = dataset.ground_truth(s)
        path = output_path(label_dir, s.id, ".png")
        if not path.exists():
            raise DataError(f"{path}: no predicted label for '{s.id}'")
        pred = load_label_png(path)
        if pred.shape != gt.shape:
            raise DataError(f"{path}: expected a label map of size {gt.shape}, got {pred.shape}")
        conf += confusion(gt, pred, n)
    return scores(conf, dataset.classes)

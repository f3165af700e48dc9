"""Segmentation metrics from a confusion matrix (255 in the ground truth is ignored)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """(L, L) int64 confusion matrix, rows = ground truth, columns = prediction.

    Ground-truth pixels equal to 255 are ignored; a prediction outside 0..L-1 (e.g. 255)
    counts as background, as IRN's evaluation does.
    """
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.size} pixels, prediction {pred.size}")
    keep = gt != 255
    gt, pred = gt[keep], pred[keep]
    if gt.size and gt.max() >= num_labels:
        raise ValueError(f"ground-truth class id {int(gt.max())} outside 0..{num_labels - 1}")
    pred = np.where((pred >= 0) & (pred < num_labels), pred, 0)
    return np.bincount(gt * num_labels + pred, minlength=num_labels**2).reshape(
        num_labels, num_labels
    )


def scores(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """mIoU (nanmean over classes that occur in gt or prediction), per-class IoU, pixel acc."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    names = list(class_names) if class_names else [str(i) for i in range(len(tp))]
    total = conf.sum()
    return {
        "miou": float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total * 100) if total else float("nan"),
        "per_class_iou": {
            n: (None if np.isnan(v) else round(float(v) * 100, 2))
            for n, v in zip(names, iou, strict=True)
        },
        "pixels": int(total),
    }


def average_precision(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-class average precision of (N, C) scores against (N, C) bool truth: the mean, over
    the positives, of the precision among the images scored at least as high (ties counted
    together); NaN for a class with no positive. O(N log N) per class."""
    scores, truth = np.asarray(scores, np.float64), np.asarray(truth, bool)
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos = truth[:, c]
        if not pos.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        s, p = scores[order, c], pos[order]
        tp = np.cumsum(p)
        # the last index of each run of equal scores: every image of a tie sees the whole run
        ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))
        per_group = np.diff(np.concatenate([[0], tp[ends]]))  # positives in each tie group
        out[c] = float(np.sum(per_group * tp[ends] / (ends + 1)) / tp[-1])
    return out


def chance_map(scores: np.ndarray, truth: np.ndarray, trials: int = 200, q: float = 95) -> float:
    """The ``q``-th percentile of the mAP these scores reach against the labels of shuffled
    images: what a classifier that learned nothing scores here, with as many images."""
    rng = np.random.default_rng(0)
    maps = [
        np.nanmean(average_precision(scores, truth[rng.permutation(len(truth))]))
        for _ in range(trials)
    ]
    return float(np.percentile(maps, q))


def format_table(report: dict) -> str:
    """A plain-text per-class IoU table with the mIoU and pixel accuracy at the bottom."""
    names = list(report["per_class_iou"])
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  IoU %", "-" * (width + 8)]
    for n, v in report["per_class_iou"].items():
        lines.append(f"{n:<{width}}  {'   —' if v is None else f'{v:6.2f}'}")
    lines.append("-" * (width + 8))
    lines.append(f"{'mIoU':<{width}}  {report['miou']:6.2f}")
    lines.append(f"{'pixel acc.':<{width}}  {report['pixel_accuracy']:6.2f}")
    return "\n".join(lines)

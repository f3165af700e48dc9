"""Per-class score thresholds for ``--predict-classes``, calibrated on image-level labels.

A classifier's sigmoid scores are not equally sharp for every class, so one fixed 0.5 admits
too many of one class and too few of another. For each class this picks the threshold that
maximises the F1 score of "class present" over a set of labeled images (image-level labels
suffice: every user has them), and writes it into the bundle's meta.json
(``class_thresholds``, with ``class_thresholds_from`` saying on what), where ``psa label`` and
``Bundle.label`` read it unless a threshold is given. Torch-free: the scores come from the
bundle's own classifier, so a deployment can calibrate on its own images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from psa_infer.datasets import Sample, load_image
from psa_infer.errors import PsaError

# Candidate thresholds: 0.05, 0.10, … 0.95. Ties go to the one nearest 0.5.
GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


def class_f1(scores: np.ndarray, truth: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """F1 of ``scores > threshold`` against ``truth`` per class: (N, C) → (C,), NaN where a
    class is neither present nor predicted."""
    pred = scores > np.asarray(threshold)
    tp = (pred & truth).sum(0)
    denom = pred.sum(0) + truth.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def best_thresholds(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The F1-best threshold of GRID per class and its F1: (N, C) scores, (N, C) bool truth."""
    f1 = np.stack([np.nan_to_num(class_f1(scores, truth, t), nan=-1.0) for t in GRID])  # (T, C)
    best = f1.max(0)
    # the best candidates of each class, then the one nearest 0.5
    near = np.where(f1 == best, -np.abs(GRID - 0.5)[:, None], -np.inf)
    pick = near.argmax(0)
    return GRID[pick], np.where(best < 0, np.nan, best)


def collect_scores(labeler, samples: Sequence[Sample], num_classes: int, progress=True):
    """Classifier scores and image-level truth of the labeled samples: (N, C) float32, bool."""
    from tqdm import tqdm

    samples = [s for s in samples if s.labels is not None]
    if len(samples) < 2:
        raise PsaError("calibrate: need at least 2 images with image-level labels")
    scores = np.zeros((len(samples), num_classes), np.float32)
    truth = np.zeros((len(samples), num_classes), bool)
    for i, s in enumerate(tqdm(samples, desc="class scores", disable=not progress)):
        scores[i] = labeler.class_scores(load_image(s.image))
        truth[i, [c - 1 for c in s.labels]] = True
    return scores, truth


def calibrate(labeler, samples: Sequence[Sample], class_names: Sequence[str], progress=True):
    """The per-class thresholds and their F1 on the labeled samples (a report dict)."""
    names = list(class_names[1:])
    scores, truth = collect_scores(labeler, samples, len(names), progress)
    thresholds, f1 = best_thresholds(scores, truth)
    at_half = class_f1(scores, truth, 0.5)
    return {
        "thresholds": {n: float(t) for n, t in zip(names, thresholds, strict=True)},
        "f1": {n: _num(v) for n, v in zip(names, f1, strict=True)},
        "f1_at_0.5": {n: _num(v) for n, v in zip(names, at_half, strict=True)},
        "images": len(scores),
        "positives": {n: int(v) for n, v in zip(names, truth.sum(0), strict=True)},
    }


def _num(v) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 4)


def write_thresholds(bundle_dir: str | os.PathLike, report: dict, source: str) -> Path:
    """Put ``report``'s thresholds into ``<bundle>/meta.json`` (atomically), with what they were
    calibrated on (``source``: e.g. the data set and split)."""
    from psa_infer.bundle import META, load_meta
    from psa_infer.palette import atomic_path

    path = Path(bundle_dir) / META
    meta = load_meta(bundle_dir, check_files=False)
    meta["class_thresholds"] = report["thresholds"]
    meta["class_thresholds_from"] = {
        "source": source,
        "images": report["images"],
        "rule": "best F1 per class over 0.05..0.95 (ties: nearest 0.5)",
        "f1": report["f1"],
        "f1_at_0.5": report["f1_at_0.5"],
    }
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def check_thresholds(where: str, meta: dict) -> None:
    """meta.json's optional ``class_thresholds``: one number in (0, 1] per foreground class."""
    t = meta.get("class_thresholds")
    if t is None:
        return
    names = meta["classes"][1:]
    ok = isinstance(t, dict) and sorted(t) == sorted(names)
    ok = ok and all(isinstance(v, (int, float)) and 0 < v <= 1 for v in t.values())
    if not ok:
        raise PsaError(
            f"{where}: 'class_thresholds': expected a number in (0, 1] for each of {names}, "
            f"got {t!r}"
        )

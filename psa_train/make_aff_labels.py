"""Stage: confident regions for AffinityNet — ``psa make-aff-labels`` (SPEC §2–3).

From each image's CAMs, two score maps with a background channel ``(1 − max cam)^α``: a low
α (4: a strong background competitor, so what survives as foreground is confident) and a high
α (32: a weak background, so what is still background is confident), each refined by the
dense CRF. Both are stored (``<id>.npz``: ``la``, ``ha`` float16 (K+1, H, W), ``keys``)
because train-aff crops them jointly with the image before pooling them to stride 8, as the
reference does. ``preview/<id>.png`` shows the resulting confident labels at full resolution
(class ids, 0 background, 255 ignored) for people to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from psa_infer.artifacts import load_cam, save_aff_scores
from psa_infer.datasets import DataSet, load_image
from psa_infer.ops import scores_with_background
from psa_infer.palette import save_label_png
from psa_train.config import AffLabelsConfig, save_config


def crf_scores(img: np.ndarray, cam: np.ndarray, alpha: float, cfg: AffLabelsConfig):
    """[bg; cams] with background power ``alpha``, CRF-refined when ``cfg.crf``: (K+1, H, W)."""
    scores = scores_with_background(cam, alpha)
    if not cfg.crf:
        return scores.astype(np.float32)
    from psa_infer.crf import crf_inference

    return crf_inference(
        img, scores, iterations=cfg.crf_iterations, bilateral_sxy=cfg.crf_bilateral_sxy
    )


def confident_preview(la: np.ndarray, ha: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per-pixel confident labels as class ids: fg from la, bg from ha, else 255."""
    lut = np.concatenate([[0], keys]).astype(np.uint8)
    la_idx, ha_idx = la.argmax(0), ha.argmax(0)
    out = lut[la_idx]
    out[la_idx == 0] = 255
    out[ha_idx == 0] = 0
    return out


def make_aff_labels(
    dataset: DataSet,
    cam_dir: str | Path,
    out: str | Path,
    cfg: AffLabelsConfig,
    progress: bool = True,
) -> int:
    """Write la/ha score files for ``cfg.split``; returns how many were computed (not skipped)."""
    cam_dir, out = Path(cam_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    done = 0
    for s in tqdm(dataset.split(cfg.split), desc="make-aff-labels", disable=not progress):
        path = out / f"{s.id}.npz"
        if path.exists():
            continue
        img = load_image(s.image)
        cam, keys = load_cam(cam_dir / f"{s.id}.npz", dataset.num_classes, img.shape[:2])
        la = crf_scores(img, cam, cfg.low_alpha, cfg)
        ha = crf_scores(img, cam, cfg.high_alpha, cfg)
        save_aff_scores(path, la, ha, keys)
        save_label_png(out / "preview" / f"{s.id}.png", confident_preview(la, ha, keys))
        done += 1
    return done

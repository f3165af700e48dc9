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

from functools import partial
from pathlib import Path

import numpy as np

from psa_infer.artifacts import check_keys, load_cam, save_aff_scores
from psa_infer.datasets import DataSet, Sample, load_image, output_path
from psa_infer.ops import scores_with_background
from psa_infer.palette import save_label_png
from psa_infer.runs import run_items
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
    fail_fast: bool = False,
    workers: int = 1,
) -> dict:
    """Write la/ha score files for ``cfg.split``; returns the counts of
    ``psa_infer.runs.run_items`` (done, skipped, failed). ``workers``: processes that run the
    images' CRFs side by side (the files are the same for any number)."""
    cam_dir, out = Path(cam_dir), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return run_items(
        dataset.split(cfg.split),
        out,
        lambda s: all(p.exists() for p in _outputs(out, s)),
        partial(_confident_regions, cam_dir=cam_dir, out=out, k=dataset.num_classes, cfg=cfg),
        desc="make-aff-labels",
        fail_fast=fail_fast,
        progress=progress,
        workers=workers if cfg.crf else 1,  # without the CRF there is little to share
    )


def _outputs(out: Path, s: Sample) -> tuple[Path, Path]:
    return output_path(out, s.id, ".npz"), output_path(out / "preview", s.id, ".png")


def _confident_regions(s: Sample, cam_dir: Path, out: Path, k: int, cfg: AffLabelsConfig) -> None:
    """One image's la/ha file and preview (module level, so worker processes can run it)."""
    img = load_image(s.image)
    cam_path = output_path(cam_dir, s.id, ".npz")
    cam, keys = load_cam(cam_path, k, img.shape[:2])
    check_keys(cam_path, keys, s.labels)
    la = crf_scores(img, cam, cfg.low_alpha, cfg)
    ha = crf_scores(img, cam, cfg.high_alpha, cfg)
    scores_path, preview_path = _outputs(out, s)
    save_aff_scores(scores_path, la, ha, keys)
    save_label_png(preview_path, confident_preview(la, ha, keys))

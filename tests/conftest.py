"""Shared fixtures: tiny data sets written into tmp_path (no network, no GPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOLDEN = Path(__file__).resolve().parent / "golden"


def write_voc(root: Path, n: int = 6, size=(37, 45), classes=("background", "cat", "dog")):
    """A VOC-layout set: each image has a square of class (i % K) + 1 on a grey background."""
    from psa_infer.palette import save_label_png

    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(n):
        h, w = size
        img = np.full((h, w, 3), 120, np.uint8) + rng.integers(0, 20, (h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        c = i % (len(classes) - 1) + 1
        mask[5:20, 10:30] = c
        img[mask == c] = (200, 40 * c, 30)
        iid = f"img_{i:03d}"
        Image.fromarray(img).save(root / "JPEGImages" / f"{iid}.jpg", quality=95)
        save_label_png(root / "SegmentationClass" / f"{iid}.png", mask)
        ids.append(iid)
    half = n // 2
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:half]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[half:]) + "\n")
    (root / "psa_dataset.json").write_text(json.dumps({"name": "tiny", "classes": list(classes)}))
    return ids


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "voc"
    write_voc(root)
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Random-weight `tiny` CAM and affinity checkpoints, a VOC-layout set (37×45 images with
    masks) and the bundle exported from them with verification on the set's val split.

    Session-scoped: the export tests and the runtime tests share one export (~3 s).
    """
    from types import SimpleNamespace

    import torch

    from export.bundle import export_bundle
    from export.verify import verify_images
    from psa_train.checkpoint import save_checkpoint
    from psa_train.config import LabelConfig, MakeCamConfig
    from psa_train.train_aff import build_aff_model
    from psa_train.train_cam import build_cam_model

    root = tmp_path_factory.mktemp("bundle")
    classes = ("background", "cat", "dog")
    write_voc(root / "voc", classes=classes)
    torch.manual_seed(0)
    # The sidecar fields load_cam_model / load_aff_model read (as train_cam / train_aff write).
    meta = {
        "backbone": "tiny",
        "classes": list(classes),
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    cam = save_checkpoint(
        root / "cam", build_cam_model("tiny", None, 2).state_dict(), {**meta, "kind": "cam"}
    )
    aff = save_checkpoint(
        root / "aff", build_aff_model("tiny", None).state_dict(), {**meta, "kind": "aff"}
    )
    label_cfg, cam_cfg = LabelConfig(), MakeCamConfig(scales=(1.0, 0.5))
    images = verify_images(root / "voc", classes, "val")
    bundle = export_bundle(cam, aff, root / "bundle", label_cfg, cam_cfg, verify_images=images)
    return SimpleNamespace(
        root=root,
        data=root / "voc",
        cam=cam,
        aff=aff,
        bundle=bundle,
        classes=classes,
        label_cfg=label_cfg,
        cam_cfg=cam_cfg,
    )

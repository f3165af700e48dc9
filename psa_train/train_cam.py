"""Stage: train the CAM classifier (SPEC §1) — ``psa train-cam``.

Multi-label soft-margin loss on GAP logits of a bias-free 1×1 classifier, lr multipliers per
parameter group, poly decay, frozen BN and early blocks. Writes into ``out``:
``config.yaml`` (resolved), ``metrics.jsonl``, ``last.safetensors`` (+ optimiser and RNG
state, for ``--resume``) and, at the end, ``cam.safetensors`` + ``cam.json``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from psa_infer.datasets import DataError, DataSet, check_images
from psa_train.checkpoint import load_checkpoint, load_state_strict
from psa_train.common import fit, start_stage
from psa_train.config import TrainCamConfig, to_dict
from psa_train.data import ClsDataset


def build_cam_model(backbone: str, weights: str | None, num_classes: int):
    """The CAM network for a backbone name (a dict literal in psa_train.backbones picks it)."""
    from psa_train.backbones import build_backbone
    from psa_train.networks import CAMNet

    return CAMNet(build_backbone(backbone, weights), num_classes)


def _cls_step(model, batch):
    x, y = batch
    return F.multilabel_soft_margin_loss(model(x), y), {}


def train_cam(
    dataset: DataSet,
    out: str | Path,
    cfg: TrainCamConfig,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train the classifier on ``dataset``'s ``cfg.train_split``; returns the checkpoint path."""
    out, device = start_stage(out, cfg)
    torch.manual_seed(cfg.seed)
    samples = dataset.split(cfg.train_split)
    check_images(samples, f"train_cam.train_split '{cfg.train_split}'")
    ds = ClsDataset(samples, dataset.num_classes, cfg, train=True)
    model = build_cam_model(cfg.backbone, cfg.weights, dataset.num_classes).to(device)
    meta = {
        "kind": "cam",
        "backbone": cfg.backbone,
        "classes": list(dataset.classes),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "config": to_dict(cfg),
        "dataset": dataset.name,
    }
    val = _val_loader(dataset, cfg)
    validate = (lambda m: {"val_loss": _val_loss(m, val, device)}) if val else None
    return fit(model, ds, _cls_step, cfg, out, meta, "cam", resume, progress, validate)


def _val_loader(dataset: DataSet, cfg: TrainCamConfig):
    try:
        samples = dataset.split(cfg.val_split)
    except DataError:
        return None  # no validation split: train-only data sets are fine
    ds = ClsDataset(samples, dataset.num_classes, cfg, train=False)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False)


@torch.no_grad()
def _val_loss(model, loader, device) -> float:
    model.eval()
    total, n = 0.0, 0
    for x, y in loader:
        loss = F.multilabel_soft_margin_loss(model(x.to(device)), y.to(device), reduction="sum")
        total += loss.item()
        n += len(x)
    return total / max(n, 1)


def load_cam_model(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a trained CAM network from its checkpoint; returns (model in eval mode, meta)."""
    tensors, meta = load_checkpoint(path, kind="cam")
    model = build_cam_model(meta["backbone"], None, len(meta["classes"]) - 1)
    load_state_strict(model, tensors, str(path))
    return model.to(device).eval(), meta

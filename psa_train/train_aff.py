"""Stage: train AffinityNet (SPEC §4) — ``psa train-aff``.

Items come from `psa_train.data.AffDataset` (an image, its la/ha maps from make-aff-labels,
augmented together, turned into pair labels bg_pos, fg_pos, neg at stride 8). The loss is
``L_bg/4 + L_fg/4 + L_neg/2`` over the predicted pair affinities.
"""

from __future__ import annotations

from pathlib import Path

import torch

from psa_infer.datasets import DataSet, check_images
from psa_infer.errors import PsaError
from psa_train.checkpoint import load_checkpoint, load_state_strict
from psa_train.common import fit, start_stage
from psa_train.config import TrainAffConfig, to_dict
from psa_train.data import AffDataset


def build_aff_model(backbone: str, weights: str | None, widths=None):
    from psa_train.backbones import build_backbone
    from psa_train.networks import AffinityNet

    return AffinityNet(build_backbone(backbone, weights), widths)


def train_aff(
    dataset: DataSet,
    label_dir: str | Path,
    out: str | Path,
    cfg: TrainAffConfig,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train AffinityNet on the la/ha maps in ``label_dir``; returns the checkpoint path."""
    from psa_train.networks import affinity_loss, pair_affinity_torch

    out, device = start_stage(out, cfg)
    torch.manual_seed(cfg.seed)
    samples = dataset.split(cfg.train_split)
    check_images(samples, f"train_aff.train_split '{cfg.train_split}'")
    missing = [s.id for s in samples if not (Path(label_dir) / f"{s.id}.npz").exists()]
    if missing:
        raise PsaError(
            f"{label_dir}: no affinity labels for '{missing[0]}' (+{len(missing) - 1} more); "
            "run make-aff-labels on the same split first"
        )
    ds = AffDataset(samples, Path(label_dir), cfg, mean, std)
    model = build_aff_model(cfg.backbone, cfg.weights, cfg.widths).to(device)
    if cfg.freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    meta = {
        "kind": "aff",
        "backbone": cfg.backbone,
        "classes": list(dataset.classes),
        "mean": list(mean),
        "std": list(std),
        "radius": cfg.radius,
        "widths": list(model.widths),
        "config": to_dict(cfg),
        "dataset": dataset.name,
    }

    def step(model, batch):
        if cfg.freeze_backbone:
            model.backbone.eval()  # frozen means its BN statistics too
        x, bg_pos, fg_pos, neg = batch
        aff = pair_affinity_torch(model(x), radius=cfg.radius, pairs=cfg.pairs)
        loss, parts = affinity_loss(aff, bg_pos, fg_pos, neg)
        return loss, {k: float(v) for k, v in parts.items()}

    return fit(model, ds, step, cfg, out, meta, "aff", resume, progress)


def load_aff_model(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a trained AffinityNet from its checkpoint; returns (model in eval mode, meta)."""
    tensors, meta = load_checkpoint(path, kind="aff")
    model = build_aff_model(meta["backbone"], None, meta.get("widths"))
    load_state_strict(model, tensors, str(path))
    return model.to(device).eval(), meta

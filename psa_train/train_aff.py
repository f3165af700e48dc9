"""Stage: train AffinityNet (SPEC §4) — ``psa train-aff``.

Each item: the image and its la/ha score maps (from make-aff-labels) are colour-jittered (image
only), cropped together into a zero container *before* normalising (so padded image pixels are
black and padded scores are 0, as the reference), flipped, then the scores are pooled to
stride 8 and turned into confident labels and pair labels (bg_pos, fg_pos, neg). The loss is
``L_bg/4 + L_fg/4 + L_neg/2`` over the predicted pair affinities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from psa_infer.artifacts import load_aff_scores
from psa_infer.datasets import DataSet, Sample, load_image
from psa_train import transforms as T
from psa_train.afflabels import confident_labels, pair_labels
from psa_train.checkpoint import load_checkpoint, load_state_strict
from psa_train.common import fit, start_stage
from psa_train.config import TrainAffConfig, to_dict

STRIDE = 8


class AffDataset(Dataset):
    """Images with pair labels at stride 8 for the crop (SPEC §3–4)."""

    def __init__(self, samples: list[Sample], label_dir: Path, cfg: TrainAffConfig, mean, std):
        if cfg.crop % STRIDE:
            raise ValueError(f"train_aff.crop: must be a multiple of {STRIDE}, got {cfg.crop}")
        self.samples, self.label_dir, self.cfg = samples, Path(label_dir), cfg
        self.mean, self.std = mean, std
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s, cfg = self.samples[i], self.cfg
        rng = np.random.default_rng([cfg.seed, self.epoch, i])
        img = load_image(s.image)
        la, ha, _ = load_aff_scores(self.label_dir / f"{s.id}.npz")
        if la.shape[1:] != img.shape[:2]:
            raise ValueError(
                f"{self.label_dir / s.id}.npz: score maps of size {la.shape[1:]} do not match "
                f"image {s.image} of size {img.shape[:2]}"
            )
        img = T.color_jitter(img, rng, cfg.color_jitter)
        maps = np.concatenate([la, ha])
        img, maps = T.random_crop(img, cfg.crop, rng, maps)
        if cfg.hflip and rng.random() < 0.5:
            img, maps = img[:, ::-1], maps[:, :, ::-1]
        x = T.normalize(np.ascontiguousarray(img), self.mean, self.std)
        k = la.shape[0]
        label = confident_labels(maps[:k], maps[k:], stride=STRIDE)
        bg_pos, fg_pos, neg = pair_labels(label, radius=cfg.radius, pairs=cfg.pairs)
        return (
            torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
            torch.from_numpy(bg_pos),
            torch.from_numpy(fg_pos),
            torch.from_numpy(neg),
        )


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

    if cfg.pairs not in ("psa", "full"):
        raise ValueError(f"train_aff.pairs: expected 'psa' or 'full', got {cfg.pairs!r}")
    out, device = start_stage(out, cfg)
    torch.manual_seed(cfg.seed)
    samples = dataset.split(cfg.train_split)
    missing = [s.id for s in samples if not (Path(label_dir) / f"{s.id}.npz").exists()]
    if missing:
        raise ValueError(
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

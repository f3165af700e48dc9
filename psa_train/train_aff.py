"""Stage: train AffinityNet (SPEC §4) — ``psa train-aff``.

Items come from `psa_train.data.AffDataset` (an image, its la/ha maps from make-aff-labels,
augmented together, turned into pair labels bg_pos, fg_pos, neg at ``train_aff.pair_stride``:
8, the features' own grid, or 4, where the features are upsampled ×2 as the walk at stride 4
reads them). The loss is ``L_bg/4 + L_fg/4 + L_neg/2`` over the predicted pair affinities.

``cfg.holdout`` of the training images (train-cam's, by the same hash) are held out: each
epoch the loss on their confident pairs is set beside the best constant affinity's, the run
keeps the epoch where AffinityNet beats that constant most (``select: best``) and ends with a
verdict in ``out/heldout.json``. The pairs come from the CAMs, so the signal needs no masks; it
says whether AffinityNet generalises what the CAMs' confident regions teach, not whether the
CAMs are right.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from psa_infer.cam import STRIDE
from psa_infer.datasets import DataError, DataSet, check_images
from psa_infer.errors import PsaError
from psa_train.checkpoint import load_checkpoint, load_state_strict
from psa_train.common import (
    HELDOUT_LIST,
    fit,
    kept_row,
    split_holdout,
    start_stage,
    world,
    write_verdict,
)
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

    if cfg.weights == "cam":
        raise DataError(
            "train_aff.weights: 'cam' (the classifier of the same run) is what psa pipeline "
            "and psa demo give; here give the file: --weights RUN/cam/cam.safetensors"
        )
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
    train, held = split_holdout(samples, cfg.holdout)
    main = world()[0] == 0
    if main:
        (out / HELDOUT_LIST).write_text("".join(f"{s.id}\n" for s in held))
    ds = AffDataset(train, Path(label_dir), cfg, mean, std)
    held_ds = AffDataset(held, Path(label_dir), cfg, mean, std, train=False)
    held_loader = DataLoader(held_ds, batch_size=cfg.batch_size, shuffle=False)
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
        aff = pair_affinity_torch(
            on_pair_grid(model(x), cfg.pair_stride), radius=cfg.radius, pairs=cfg.pairs
        )
        loss, parts = affinity_loss(aff, bg_pos, fg_pos, neg)
        return loss, {k: float(v) for k, v in parts.items()}

    def validate(m) -> dict:
        return heldout_affinity(m, held_loader, cfg, device) if held else {}

    select = "heldout_aff_gain" if held and cfg.select == "best" else None
    path = fit(model, ds, step, cfg, out, meta, "aff", resume, progress, validate, select)
    if held and main:
        report = verdict(out, path)
        write_verdict(out, report, progress or report["verdict"] == "no better than a constant")
    return path


def on_pair_grid(features: torch.Tensor, pair_stride: int) -> torch.Tensor:
    """AffinityNet's stride-8 features (B, D, h, w) on the grid of ``train_aff.pair_stride``:
    as they are at 8; upsampled bilinearly to (8 / pair_stride)·(h, w) otherwise, as the walk
    at that stride upsamples them (``psa_infer.ops.resize_bilinear``)."""
    if pair_stride == STRIDE:
        return features
    f = STRIDE // pair_stride
    size = (features.shape[2] * f, features.shape[3] * f)
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


MIN_HELDOUT = 8  # as train-cam's: fewer images say nothing either way
PAIR_KINDS = ("bg", "fg", "neg")
WEIGHTS = {"bg": 0.25, "fg": 0.25, "neg": 0.5}  # the loss's, SPEC §4


@torch.no_grad()
def heldout_affinity(model, loader, cfg: TrainAffConfig, device) -> dict:
    """AffinityNet on the held-out images' confident pairs (centred crop, no augmentation):
    the loss of SPEC §4 pooled over every pair of the set, the same for the best constant
    affinity, the gain ``1 - loss / constant``, and the share of each kind of pair it gets
    right (affinity above 0.5 for bg/fg pairs, below for neg)."""
    from psa_train.networks import pair_affinity_torch

    model.eval()
    nll = dict.fromkeys(PAIR_KINDS, 0.0)
    right = dict.fromkeys(PAIR_KINDS, 0.0)
    count = dict.fromkeys(PAIR_KINDS, 0.0)
    for x, *labels in loader:
        features = on_pair_grid(model(x.to(device)), cfg.pair_stride)
        aff = pair_affinity_torch(features, radius=cfg.radius, pairs=cfg.pairs)
        aff = aff.double()
        for kind, lab in zip(PAIR_KINDS, labels, strict=True):
            lab = lab.to(device).double()
            if kind == "neg":
                loss, ok = -torch.log(1.0 + 1e-5 - aff), aff < 0.5
            else:
                loss, ok = -torch.log(aff + 1e-5), aff > 0.5
            nll[kind] += float((lab * loss).sum())
            right[kind] += float((lab * ok).sum())
            count[kind] += float(lab.sum())
    present = {k: count[k] > 0 for k in PAIR_KINDS}
    loss = sum(WEIGHTS[k] * nll[k] / count[k] for k in PAIR_KINDS if present[k])
    const = constant_loss(present)
    return {
        "heldout_aff_loss": loss,
        "heldout_const_loss": const,
        "heldout_aff_gain": 1 - loss / const if const > 0 else None,
        **{f"heldout_{k}_right": right[k] / count[k] if present[k] else None for k in PAIR_KINDS},
        **{f"heldout_{k}_pairs": int(count[k]) for k in PAIR_KINDS},
    }


def constant_loss(present: dict) -> float:
    """The lowest loss one affinity ``c`` for every pair reaches: with weight ``p`` on the
    positive kinds present and ``q`` on neg, ``c = p / (p + q)``; 0 when a side is missing
    (a constant 0 or 1 is then exact)."""
    p = sum(WEIGHTS[k] for k in ("bg", "fg") if present[k])
    q = WEIGHTS["neg"] if present["neg"] else 0.0
    if p == 0 or q == 0:
        return 0.0
    c = p / (p + q)
    return -p * math.log(c) - q * math.log(1 - c)


def verdict(out: Path, checkpoint: Path) -> dict:
    """Judge the kept epoch's held-out row of ``metrics.jsonl``: "learned" (beats the constant),
    "no better than a constant", or "unknown" (too few images, or no pairs of both signs)."""
    meta, row, n = kept_row(out, checkpoint, "aff")
    gain = row["heldout_aff_gain"]
    if gain is None or n < MIN_HELDOUT:
        word = "unknown"
    elif gain <= 0:
        word = "no better than a constant"
    else:
        word = "learned"
    right = ", ".join(
        f"{k} {row[f'heldout_{k}_right']:.1%}"
        for k in PAIR_KINDS
        if row[f"heldout_{k}_right"] is not None
    )
    msg = (
        f"train-aff: epoch {meta['epoch']} on {n} held-out training images: pair loss "
        f"{row['heldout_aff_loss']:.4f} ("
        + (
            f"one constant affinity: {row['heldout_const_loss']:.4f}, gain {gain:.1%}"
            if gain is not None
            else "no pairs of one sign, which one constant affinity fits exactly"
        )
        + f"), pairs right: {right or 'none'} — "
    )
    msg += {
        "learned": "AffinityNet learned",
        "no better than a constant": "AffinityNet is no better than a constant affinity",
        "unknown": f"too few held-out images (or pairs in them) to judge it: fewer than "
        f"{MIN_HELDOUT} images, or no pairs of one sign (raise train_aff.holdout)",
    }[word]
    if word == "no better than a constant":
        msg = (
            "WARNING: " + msg + ". The walk will spread the CAMs along nothing specific: check "
            "the classifier's verdict and the confident regions (make-aff-labels' la/ha maps)"
        )
    return {
        "verdict": word,
        "gain": gain,
        "epoch": meta["epoch"],
        "heldout_images": n,
        "row": row,
        "message": msg,
    }


def load_aff_model(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a trained AffinityNet from its checkpoint; returns (model in eval mode, meta)."""
    tensors, meta = load_checkpoint(path, kind="aff")
    model = build_aff_model(meta["backbone"], None, meta.get("widths"))
    load_state_strict(model, tensors, str(path))
    return model.to(device).eval(), meta

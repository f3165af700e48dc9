"""Stage: train the CAM classifier (SPEC §1) — ``psa train-cam``.

Multi-label soft-margin loss on GAP logits of a bias-free 1×1 classifier, lr multipliers per
parameter group, poly decay, frozen BN and early blocks. Writes into ``out``:
``config.yaml`` (resolved), ``metrics.jsonl``, ``last.safetensors`` (+ optimiser and RNG
state, for ``--resume``) and, at the end, ``cam.safetensors`` + ``cam.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from psa_infer.datasets import DataError, DataSet, check_images
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
    """Train the classifier on ``dataset``'s ``cfg.train_split``; returns the checkpoint path.

    ``cfg.holdout`` of the training images are held out (listed in ``out/heldout.txt``) and
    scored every epoch; the run ends with a verdict (``out/heldout.json``, and a warning when
    the classifier is near chance).
    """
    out, device = start_stage(out, cfg)
    torch.manual_seed(cfg.seed)
    samples = dataset.split(cfg.train_split)
    check_images(samples, f"train_cam.train_split '{cfg.train_split}'")
    train, held = split_holdout(samples, cfg.holdout)
    main = world()[0] == 0  # under torchrun only rank 0 writes files and says things
    if main:
        (out / HELDOUT_LIST).write_text("".join(f"{s.id}\n" for s in held))
    ds = ClsDataset(train, dataset.num_classes, cfg, train=True)
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
    prior = class_prior(train, dataset.num_classes)

    def validate(m) -> dict:
        row = {"val_loss": _val_loss(m, val, device)} if val else {}
        if held:
            row.update(heldout_scores(m, held, prior, cfg, dataset.classes, device))
        return row

    select = "heldout_map" if held and cfg.select == "best" else None
    path = fit(model, ds, _cls_step, cfg, out, meta, "cam", resume, progress, validate, select)
    if held and main:
        report = verdict(out, path)
        write_verdict(out, report, progress or report["verdict"] == "near chance")
    return path


def class_prior(samples: list, num_classes: int) -> np.ndarray:
    """How often each class is present in ``samples``, (C,), kept inside [1e-4, 1 - 1e-4]."""
    counts = np.zeros(num_classes)
    for s in samples:
        counts[[c - 1 for c in s.labels]] += 1
    return np.clip(counts / max(len(samples), 1), 1e-4, 1 - 1e-4)


@torch.no_grad()
def heldout_scores(model, held: list, prior: np.ndarray, cfg, classes, device) -> dict:
    """The classifier on the held-out images, each whole at scale 1 (as --predict-classes
    sees it): mAP, macro F1 at 0.5 and loss, beside a constant that predicts the prior."""
    from psa_infer.cam import normalize_image
    from psa_infer.datasets import load_image
    from psa_infer.metrics import average_precision, chance_map
    from psa_infer.thresholds import class_f1

    model.eval()
    scores = np.zeros((len(held), len(prior)), np.float32)
    truth = np.zeros((len(held), len(prior)), bool)
    for i, s in enumerate(held):
        x = normalize_image(load_image(s.image), cfg.mean, cfg.std)[None]
        scores[i] = torch.sigmoid(model(torch.from_numpy(x).to(device))).float().cpu().numpy()[0]
        truth[i, [c - 1 for c in s.labels]] = True
    ap = average_precision(scores, truth)
    f1 = class_f1(scores, truth, 0.5)
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    loss = -np.mean(truth * np.log(p) + ~truth * np.log(1 - p))
    prior_loss = -np.mean(truth * np.log(prior) + ~truth * np.log(1 - prior))
    present = truth.any(0)
    names = list(classes[1:])
    return {
        "heldout_map": float(np.nanmean(ap)) if present.any() else None,
        "heldout_prior_map": float(truth.mean(0)[present].mean()) if present.any() else None,
        "heldout_chance_map": chance_map(scores, truth) if present.any() else None,
        "heldout_f1": float(np.nanmean(f1)) if np.isfinite(f1).any() else None,
        "heldout_loss": float(loss),
        "heldout_prior_loss": float(prior_loss),
        "heldout_ap": {n: _num(v) for n, v in zip(names, ap, strict=True)},
        "heldout_class_f1": {n: _num(v) for n, v in zip(names, f1, strict=True)},
    }


def _num(v) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 4)


# The verdict. "Near chance": the held-out mAP is no higher than the 95th percentile of what
# the same scores reach against shuffled images' labels (``chance_map``; it widens as the
# held-out set shrinks). "Weak": less than half of the way from the class-frequency constant's
# mAP to a perfect 1.0.
WEAK = 0.5
MIN_HELDOUT = 8  # fewer images say nothing either way


def verdict(out: Path, checkpoint: Path) -> dict:
    """Read the kept epoch's held-out row from ``metrics.jsonl`` and judge it."""
    meta, row, n = kept_row(out, checkpoint, "cam")
    m, pm, cm = row["heldout_map"], row["heldout_prior_map"], row["heldout_chance_map"]
    loss, prior_loss = row["heldout_loss"], row["heldout_prior_loss"]
    skill = None if m is None else (m - pm) / max(1e-9, 1 - pm)
    gain = 1 - loss / prior_loss
    if skill is None or n < MIN_HELDOUT:
        word = "unknown"
    elif m <= cm:
        word = "near chance"
    elif skill < WEAK:
        word = "weak"
    else:
        word = "learned"
    phrase = {
        "learned": "the classifier learned",
        "weak": "the classifier learned a little: expect weak CAMs",
        "near chance": "the classifier is near chance",
        "unknown": f"too few held-out images (or classes in them) to judge it: fewer than "
        f"{MIN_HELDOUT} (raise train_cam.holdout)",
    }[word]
    msg = (
        f"train-cam: epoch {meta['epoch']} on {n} held-out training images: mAP "
        f"{_fmt(m)} (shuffled labels reach {_fmt(cm)}, a constant of the class frequencies "
        f"{_fmt(pm)}), loss {loss:.4f} (the constant: {prior_loss:.4f}) — {phrase}"
    )
    if word == "near chance":
        msg = (
            "WARNING: " + msg + ". Its CAMs will mark little that is specific to a class: "
            "check the image labels, train longer or with another learning rate, or use a "
            "backbone with ImageNet weights"
        )
    return {
        "verdict": word,
        "skill": skill,
        "chance_map": cm,
        "loss_gain": gain,
        "epoch": meta["epoch"],
        "heldout_images": n,
        "row": row,
        "message": msg,
    }


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _val_loader(dataset: DataSet, cfg: TrainCamConfig):
    if cfg.val_split is None:
        return None
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

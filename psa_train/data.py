"""Torch data sets over the torch-free readers of psa_infer.datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from psa_infer.artifacts import load_aff_scores
from psa_infer.cam import STRIDE
from psa_infer.datasets import Sample, load_image
from psa_infer.errors import PsaError
from psa_train import transforms as T
from psa_train.afflabels import confident_labels, pair_labels
from psa_train.config import TrainAffConfig


class ClsDataset(Dataset):
    """Images with multi-hot labels, augmented as the reference's train_cls (SPEC §1).

    Each item's randomness comes from (seed, epoch, index), so a run is repeatable and a
    resumed run sees the same augmentations it would have seen.
    """

    def __init__(self, samples: list[Sample], num_classes: int, cfg, train: bool = True):
        self.samples = samples
        self.num_classes = num_classes
        self.cfg = cfg
        self.train = train
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        cfg = self.cfg
        img = load_image(s.image)
        if self.train:
            rng = np.random.default_rng([cfg.seed, self.epoch, i])
            img = T.resize_long(img, rng, *cfg.resize_long)
            if cfg.hflip and rng.random() < 0.5:
                img = img[:, ::-1]
            img = T.color_jitter(np.ascontiguousarray(img), rng, cfg.color_jitter)
            x = T.normalize(img, cfg.mean, cfg.std)
            x = T.random_crop(x, cfg.crop, rng)  # after normalising: padding = mean colour
        else:
            x = T.normalize(img, cfg.mean, cfg.std)
            x = center_crop(x, cfg.crop)
        y = np.zeros(self.num_classes, np.float32)
        for c in s.labels:
            y[c - 1] = 1.0
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), torch.from_numpy(y)


class AffDataset(Dataset):
    """Images with pair labels at stride 8 for the crop, augmented as the reference (SPEC §3–4).

    The image is colour-jittered (its la/ha score maps are not), both are cropped together into
    a zero container *before* normalising (so padded image pixels are black and padded scores
    0, as the reference) and flipped; then the scores are pooled to stride 8 and turned into
    confident labels and pair labels (bg_pos, fg_pos, neg). Randomness comes from
    (seed, epoch, index), as in `ClsDataset`.
    """

    def __init__(self, samples: list[Sample], label_dir: Path, cfg: TrainAffConfig, mean, std):
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
            raise PsaError(
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


def center_crop(x: np.ndarray, size: int) -> np.ndarray:
    """Centre size×size window of an (H, W, C) array, zero-padded where it is smaller."""
    h, w = x.shape[:2]
    out = np.zeros((size, size, x.shape[2]), x.dtype)
    ch, cw = min(h, size), min(w, size)
    sy, sx = (h - ch) // 2, (w - cw) // 2
    dy, dx = (size - ch) // 2, (size - cw) // 2
    out[dy : dy + ch, dx : dx + cw] = x[sy : sy + ch, sx : sx + cw]
    return out

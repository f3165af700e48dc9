"""Torch data sets over the torch-free readers of psa_infer.datasets."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from psa_infer.datasets import Sample, load_image
from psa_train import transforms as T


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


def center_crop(x: np.ndarray, size: int) -> np.ndarray:
    """Centre size×size window of an (H, W, C) array, zero-padded where it is smaller."""
    h, w = x.shape[:2]
    out = np.zeros((size, size, x.shape[2]), x.dtype)
    ch, cw = min(h, size), min(w, size)
    sy, sx = (h - ch) // 2, (w - cw) // 2
    dy, dx = (size - ch) // 2, (size - cw) // 2
    out[dy : dy + ch, dx : dx + cw] = x[sy : sy + ch, sx : sx + cw]
    return out

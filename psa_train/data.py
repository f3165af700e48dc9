"""Torch data sets over the torch-free readers of psa_infer.datasets: classification (CAM),
affinity and segmentation training items."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from psa_infer.artifacts import load_aff_scores
from psa_infer.datasets import DataError, Sample, load_image, output_path
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
    """Images with pair labels for the crop, augmented as the reference (SPEC §3–4).

    The image is colour-jittered (its la/ha score maps are not), both are cropped together into
    a zero container *before* normalising (so padded image pixels are black and padded scores
    0, as the reference) and flipped; then the scores are pooled to ``cfg.pair_stride`` (8 as
    the reference, or 4) and turned into confident labels and pair labels (bg_pos, fg_pos,
    neg). Randomness comes from (seed, epoch, index), as in `ClsDataset`. ``train=False``
    (held-out scoring): no jitter and no flip, and the centred crop, so every epoch sees the
    same pairs.
    """

    def __init__(
        self,
        samples: list[Sample],
        label_dir: Path,
        cfg: TrainAffConfig,
        mean,
        std,
        train: bool = True,
    ):
        self.samples, self.label_dir, self.cfg = samples, Path(label_dir), cfg
        self.mean, self.std = mean, std
        self.train = train
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
        maps = np.concatenate([la, ha])
        if self.train:
            img = T.color_jitter(img, rng, cfg.color_jitter)
            img, maps = T.random_crop(img, cfg.crop, rng, maps)
            if cfg.hflip and rng.random() < 0.5:
                img, maps = img[:, ::-1], maps[:, :, ::-1]
        else:
            img, maps = T.random_crop(img, cfg.crop, None, maps)
        x = T.normalize(np.ascontiguousarray(img), self.mean, self.std)
        k = la.shape[0]
        label = confident_labels(maps[:k], maps[k:], stride=cfg.pair_stride)
        bg_pos, fg_pos, neg = pair_labels(label, radius=cfg.radius, pairs=cfg.pairs)
        return (
            torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))),
            torch.from_numpy(bg_pos),
            torch.from_numpy(fg_pos),
            torch.from_numpy(neg),
        )


def label_dir_reader(label_dir: str | Path, num_classes: int) -> Callable[[Sample], np.ndarray]:
    """``sample → (H, W) uint8`` label map from ``label_dir/<id>.png`` (pseudo labels from
    ``psa label``, or a data set's ``SegmentationClass``): ids 0..K, 255 = ignore. A missing
    or unreadable file, or an id outside 0..K other than 255, is a DataError naming the file."""
    from psa_infer.palette import load_label_png

    label_dir = Path(label_dir)

    def read(s: Sample) -> np.ndarray:
        path = output_path(label_dir, s.id, ".png")
        if not path.is_file():
            raise DataError(f"{path}: no label map for training image '{s.id}'")
        try:
            label = load_label_png(path)
        except PsaError as e:
            raise DataError(str(e)) from None
        return check_label_ids(label, num_classes, path)

    read.source = lambda s: output_path(label_dir, s.id, ".png")  # for messages
    return read


def check_label_ids(label: np.ndarray, num_classes: int, where) -> np.ndarray:
    """``label`` if its ids are all in 0..num_classes or 255, else a DataError naming ``where``."""
    bad = np.unique(label[(label > num_classes) & (label != 255)])
    if bad.size:
        raise DataError(
            f"{where}: class id {int(bad[0])} in a label map of a data set with ids "
            f"0..{num_classes} (255 = ignore)"
        )
    return label


class SegDataset(Dataset):
    """Images with their label maps for the segmentation network, augmented together: a
    random resize (``cfg.scale_range``; the label nearest-neighbour), optional colour jitter
    (the image only), a horizontal flip, then a ``cfg.crop`` window (padding: the mean colour
    for the image, 255 = ignore for the label). Randomness from (seed, epoch, index), as in
    `ClsDataset`. Items: x (3, crop, crop) float32, y (crop, crop) int64.

    ``labels(sample)`` gives the (H, W) uint8 label map (`label_dir_reader`, or a data set's
    ``ground_truth``); one of another size than its image is a DataError naming both.
    """

    def __init__(self, samples: list[Sample], labels: Callable[[Sample], np.ndarray], cfg):
        self.samples, self.labels, self.cfg = samples, labels, cfg
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        s, cfg = self.samples[i], self.cfg
        rng = np.random.default_rng([cfg.seed, self.epoch, i])
        img, label = load_image(s.image), self.labels(s)
        check_label_size(label, img.shape[:2], s, label_source(self.labels, s))
        lo, hi = cfg.scale_range[0], cfg.scale_range[-1]
        f = rng.uniform(lo, hi)
        h, w = label.shape
        size = (max(1, round(w * f)), max(1, round(h * f)))
        img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
        if any(cfg.color_jitter):
            img = T.color_jitter(np.ascontiguousarray(img), rng, cfg.color_jitter)
        if cfg.hflip and rng.random() < 0.5:
            img, label = img[:, ::-1], label[:, ::-1]
        x = T.normalize(np.ascontiguousarray(img), cfg.mean, cfg.std)
        cont, src = T.crop_box(size[1], size[0], cfg.crop, rng)
        xc = np.zeros((cfg.crop, cfg.crop, 3), np.float32)  # 0 after normalising = mean colour
        yc = np.full((cfg.crop, cfg.crop), 255, np.int64)
        xc[cont], yc[cont] = x[src], label[src]
        return torch.from_numpy(np.ascontiguousarray(xc.transpose(2, 0, 1))), torch.from_numpy(yc)


def label_source(labels: Callable[[Sample], np.ndarray], s: Sample) -> str:
    """Where ``labels`` reads ``s``'s label map from, for messages (its file where known)."""
    source = getattr(labels, "source", None)
    return str(source(s)) if source else f"the label map of '{s.id}'"


def check_label_size(label: np.ndarray, size: tuple[int, int], s: Sample, where: str) -> None:
    """A label map must be of its image's size ``(H, W)`` (a DataError naming both files)."""
    if tuple(label.shape) != tuple(size):
        raise DataError(
            f"{where}: label map of {label.shape[0]}x{label.shape[1]} pixels (HxW), its image "
            f"{s.image} is {size[0]}x{size[1]}"
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

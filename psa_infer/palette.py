"""Palette PNG label maps: uint8 class ids, 255 = ignore, the VOC colour map embedded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from psa_infer.errors import PsaError

IGNORE = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: (n, 3) uint8, class id -> RGB (bit-interleaved id)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


_CMAP = voc_colormap()


def atomic_path(path: Path) -> Path:
    """A temporary sibling name for `path`; write there, then `os.replace` it into place."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an (H, W) uint8 label map as a palette PNG, atomically."""
    label = np.asarray(label)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected a label map of shape (H, W) uint8, got {label.shape} {label.dtype}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label, mode="P")
    img.putpalette(_CMAP.reshape(-1).tolist())
    tmp = atomic_path(path)
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def load_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as (H, W) uint8 class ids (palette indices, not colours)."""
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as e:
        raise PsaError(f"{path}: not a readable label PNG ({e})") from None
    if img.mode not in ("P", "L"):
        raise PsaError(
            f"{path}: expected a palette (P) or greyscale (L) PNG of class ids, got mode {img.mode}"
        )
    return np.array(img, dtype=np.uint8)


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) uint8 ids -> (H, W, 3) uint8 RGB with the VOC colours (255 -> VOC's cream)."""
    return _CMAP[np.asarray(label, dtype=np.uint8)]

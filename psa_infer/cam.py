"""Multi-scale + flip CAMs (SPEC §2), written once for every backend.

A backend is any callable ``forward(batch (B, 3, h, w) float32) -> (B, C, h8, w8) float32``
returning ReLU'd class activation maps at stride 8 (the torch network, an ONNX Runtime
session, a TensorRT engine). This module does the rest in numpy: resizing the image per
scale (PIL bicubic, as the reference), the flipped copy, upsampling each map to the image
size, summing, keeping the present classes and normalising each by its maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from psa_infer.ops import resize_bilinear

Forward = Callable[[np.ndarray], np.ndarray]


def normalize_image(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (3, H, W) float32 ``(x/255 − mean)/std``."""
    x = img.astype(np.float32) * np.float32(1 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def scaled_inputs(
    img: np.ndarray, scales: Sequence[float], mean, std, flip: bool = True
) -> list[np.ndarray]:
    """One (1 or 2, 3, h_s, w_s) batch per scale: the resized image and, if ``flip``, its mirror."""
    h, w = img.shape[:2]
    out = []
    for s in scales:
        size = (max(1, round(w * s)), max(1, round(h * s)))
        im = img if size == (w, h) else np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))
        x = normalize_image(im, mean, std)
        out.append(np.stack([x, x[:, :, ::-1]]) if flip else x[None])
    return out


def multiscale_cam(
    forward: Forward,
    img: np.ndarray,
    classes: Sequence[int],
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    flip: bool = True,
) -> np.ndarray:
    """Normalised CAMs of the present classes, (K, H, W) float32 in [0, 1].

    ``classes`` are foreground class ids 1..C (channel ``c - 1`` of the network's output).
    Summing the maps of every scale and flip, then dividing each class by its maximum
    (+1e-5), is the reference's recipe.
    """
    h, w = img.shape[:2]
    keys = np.asarray(sorted(classes), dtype=np.int64)
    total = np.zeros((len(keys), h, w), np.float32)
    if len(keys) == 0:
        return total
    for batch in scaled_inputs(img, scales, mean, std, flip):
        cams = np.asarray(forward(batch), dtype=np.float32)
        if cams.ndim != 4 or cams.shape[0] != batch.shape[0]:
            raise ValueError(
                f"cam backend: expected (B={batch.shape[0]}, C, h, w) float32, got {cams.shape}"
            )
        if keys.max() > cams.shape[1]:
            raise ValueError(
                f"class id {int(keys.max())} is outside the network's {cams.shape[1]} classes"
            )
        sel = cams[:, keys - 1]
        total += resize_bilinear(sel[0], (h, w))
        if flip:
            total += resize_bilinear(sel[1], (h, w))[:, :, ::-1]
    total /= total.reshape(len(keys), -1).max(axis=1)[:, None, None] + 1e-5
    return total


def cam_prediction(cams: np.ndarray, keys: Sequence[int], bg_threshold: float) -> np.ndarray:
    """CAM-only labels: argmax of [constant background; CAMs] → (H, W) uint8 class ids."""
    keys = np.asarray(keys, dtype=np.int64)
    h, w = cams.shape[1:]
    scores = np.concatenate([np.full((1, h, w), bg_threshold, np.float32), cams], axis=0)
    lut = np.concatenate([[0], keys]).astype(np.uint8)
    return lut[scores.argmax(axis=0)]

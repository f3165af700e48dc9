"""Multi-scale + flip CAMs (SPEC §2), written once for every backend.

A backend is any callable ``forward(batch (B, 3, h, w) float32) -> (B, C, h8, w8) float32``
returning ReLU'd class activation maps at stride 8 (the torch network, an ONNX Runtime
session, a TensorRT engine). This module does the rest in numpy: resizing the image per
scale (PIL bicubic, as the reference), the flipped copy, upsampling each map to the image
size, summing, keeping the present classes and normalising each by its maximum.

Large network inputs (the reference's scale 2.0 turns a 2048² image into a 4096² input; the
whole label then peaked at 17 GB on ONNX Runtime) run in overlapping tiles (``forward_tiled``):
both networks are fully convolutional with stride-8 outputs, so tiles whose corners sit on the
stride-8 grid give the untiled output wherever a tile's margin covers what the network sees
around a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from psa_infer.ops import resize_bilinear

Forward = Callable[[np.ndarray], np.ndarray]

STRIDE = 8  # output stride of both networks
# Inputs with a side above TILE pixels run in tiles; VOC-sized images (<= 500 px, so <= 1000 px
# at scale 2.0) never do. A 2048² image then peaks at 1.6 GB instead of 17 GB and labels 2x
# faster (benchmarks/label_bench.py, MobileNetV2, 2-core CPU). TILE_MARGIN pixels of context on
# each inner side of a tile: MobileNetV2's outputs are then bit-identical to the untiled ones.
TILE = 1024
TILE_MARGIN = 128


def normalize_image(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (3, H, W) float32 ``(x/255 − mean)/std``."""
    # The formula on the 256 possible values of each channel, then one gather per channel: the
    # same float32 results as computing it per pixel, in one pass instead of four.
    v = np.arange(256, dtype=np.float32) * np.float32(1 / 255.0)
    lut = (v[:, None] - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    out = np.empty((3, *img.shape[:2]), np.float32)
    for c in range(3):
        np.take(lut[:, c], img[:, :, c], out=out[c])
    return out


def _scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """PIL's (width, height) of an h × w image at ``scale``."""
    return max(1, round(w * scale)), max(1, round(h * scale))


def scaled_input(img: np.ndarray, scale: float, mean, std) -> np.ndarray:
    """The image resized by ``scale`` (PIL bicubic; as is at its own size), normalised:
    (3, round(H·scale), round(W·scale)) float32."""
    h, w = img.shape[:2]
    size = _scaled_size(h, w, scale)
    im = img if size == (w, h) else np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))
    return normalize_image(im, mean, std)


def flip_batch(x: np.ndarray, flip: bool) -> np.ndarray:
    """(3, h, w) → the network batch: (2, 3, h, w) with the mirror image second, or (1, 3, h, w)."""
    return np.stack([x, x[:, :, ::-1]]) if flip else x[None]


def scaled_inputs(
    img: np.ndarray, scales: Sequence[float], mean, std, flip: bool = True
) -> list[np.ndarray]:
    """One (1 or 2, 3, h_s, w_s) batch per scale: the resized image and, if ``flip``, its mirror."""
    return [flip_batch(scaled_input(img, s, mean, std), flip) for s in scales]


def tile_windows(n: int, tile: int | None, margin: int) -> list[tuple[int, int, int, int]]:
    """How ``forward_tiled`` splits one axis of ``n`` pixels: ``(start, stop, keep0, keep1)``.

    Each window ``[start, stop)`` is one tile's input; its output cells ``keep0:keep1`` (in
    stride-8 units) are kept, and they are the output cells ``start // 8 + keep0 : ...`` of the
    whole axis. The kept parts are equal intervals of at most ``tile`` pixels on the stride-8
    grid; each window adds ``margin`` pixels of context on both sides, and windows at the ends
    of the axis slide inwards instead of shrinking, so that all windows have one length (give
    or take the last one's ``n % 8``): fewer distinct input shapes for the runtime to plan
    memory for. ``n <= tile`` (or no ``tile``): one window, the whole axis.
    """
    if tile is None or n <= tile:
        return [(0, n, 0, math.ceil(n / STRIDE))]
    count = math.ceil(n / tile)
    size = math.ceil(n / count / STRIDE) * STRIDE
    length = min(n, size + 2 * margin)
    last_start = (n - length) // STRIDE * STRIDE  # starts stay on the stride-8 grid
    out = []
    for a in range(0, n, size):
        b = min(a + size, n)
        start = max(0, min(a - margin, last_start))
        stop = n if b + margin >= n else start + length
        keep0 = (a - start) // STRIDE
        keep1 = keep0 + math.ceil((b - a) / STRIDE)
        if out and out[-1][:2] == (start, stop):  # the end's window already covers this part
            keep0 = out.pop()[2]
        out.append((start, stop, keep0, keep1))
    return out


def _check_tile(value: object, margin: object) -> None:
    ok = value is None or (
        isinstance(value, int) and not isinstance(value, bool) and value >= STRIDE
    )
    if not ok:
        raise ValueError(f"tile: expected None or an integer >= {STRIDE}, got {value!r}")
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0 or margin % STRIDE:
        raise ValueError(f"tile margin: expected a multiple of {STRIDE} >= 0, got {margin!r}")


def forward_tiled(
    forward: Forward,
    x: np.ndarray,
    flip: bool = False,
    tile: int | None = None,
    margin: int = TILE_MARGIN,
    name: str = "cam",
) -> np.ndarray:
    """``forward(flip_batch(x, flip))``, run in overlapping tiles when x is larger than ``tile``.

    x: (3, H, W) float32, a normalised image. Returns (B, C, ceil(H/8), ceil(W/8)) float32,
    B = 2 with ``flip`` (the second map belongs to the mirror image, in its orientation), else 1.
    With a side above ``tile`` pixels, the image is cut into windows (``tile_windows``) and each
    window goes through ``forward`` alone — the image's windows, then the mirror's, one at a
    time, since tiles exist to bound memory — and the kept parts of the outputs are stitched
    together. Memory then follows the tile, not the image; outputs differ from the untiled
    ones only where the network would have looked further than ``margin`` pixels across a tile
    border. ``name`` names the network in error messages.
    """
    _check_tile(tile, margin)
    _, h, w = x.shape
    rows, cols = tile_windows(h, tile, margin), tile_windows(w, tile, margin)
    if len(rows) == len(cols) == 1:
        return _run(forward, flip_batch(x, flip), None, name)
    images = (x, x[:, :, ::-1]) if flip else (x,)
    out = None
    for i, image in enumerate(images):
        for y0, y1, ky0, ky1 in rows:
            for x0, x1, kx0, kx1 in cols:
                crop = np.ascontiguousarray(image[None, :, y0:y1, x0:x1])
                part = _run(forward, crop, (y1 - y0, x1 - x0), name)
                if out is None:
                    size = (math.ceil(h / STRIDE), math.ceil(w / STRIDE))
                    out = np.empty((len(images), part.shape[1], *size), np.float32)
                oy, ox = y0 // STRIDE + ky0, x0 // STRIDE + kx0
                out[i, :, oy : oy + ky1 - ky0, ox : ox + kx1 - kx0] = part[0, :, ky0:ky1, kx0:kx1]
    return out


def _run(
    forward: Forward, batch: np.ndarray, tile_size: tuple[int, int] | None, name: str
) -> np.ndarray:
    """forward(batch) as float32, checked: (B, C, h, w); a tile's output must be at stride 8."""
    out = np.asarray(forward(batch), dtype=np.float32)
    if out.ndim != 4 or out.shape[0] != batch.shape[0]:
        raise ValueError(
            f"{name} backend: expected (B={batch.shape[0]}, C, h, w) float32, got {out.shape}"
        )
    if tile_size is not None:
        want = tuple(math.ceil(n / STRIDE) for n in tile_size)
        if out.shape[2:] != want:
            raise ValueError(
                f"{name} backend: a {tile_size[0]}x{tile_size[1]} tile gave maps of "
                f"{out.shape[2]}x{out.shape[3]}, expected {want[0]}x{want[1]} (stride "
                f"{STRIDE}) to stitch tiles; label with tile=None"
            )
    return out


def multiscale_cam(
    forward: Forward,
    img: np.ndarray,
    classes: Sequence[int],
    scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    flip: bool = True,
    tile: int | None = None,
    margin: int = TILE_MARGIN,
    normalized: np.ndarray | None = None,
) -> np.ndarray:
    """Normalised CAMs of the present classes, (K, H, W) float32 in [0, 1].

    ``classes`` are foreground class ids 1..C (channel ``c - 1`` of the network's output).
    Summing the maps of every scale and flip, then dividing each class by its maximum
    (+1e-5), is the reference's recipe. ``tile``/``margin``: see ``forward_tiled``.
    ``normalized``: ``normalize_image(img, mean, std)`` if the caller has it already (it is the
    scale-1 input).

    The image and its mirror share one batch per scale; the scales cannot share one (their
    sizes differ). The mirror's map is flipped back at stride 8 and added before the single
    upsampling of each scale (bilinear resizing is linear and mirror-symmetric, so this is the
    reference's upsample-then-flip up to float rounding).
    """
    h, w = img.shape[:2]
    keys = np.asarray(sorted(classes), dtype=np.int64)
    total = np.zeros((len(keys), h, w), np.float32)
    if len(keys) == 0:
        return total
    for s in scales:
        same_size = _scaled_size(h, w, s) == (w, h)
        x = normalized if same_size and normalized is not None else scaled_input(img, s, mean, std)
        cams = forward_tiled(forward, x, flip, tile, margin)
        if keys.max() > cams.shape[1]:
            raise ValueError(
                f"class id {int(keys.max())} is outside the network's {cams.shape[1]} classes"
            )
        sel = cams[:, keys - 1]
        total += resize_bilinear(sel[0] + sel[1][:, :, ::-1] if flip else sel[0], (h, w))
    total /= total.reshape(len(keys), -1).max(axis=1)[:, None, None] + 1e-5
    return total


def cam_prediction(cams: np.ndarray, keys: Sequence[int], bg_threshold: float) -> np.ndarray:
    """CAM-only labels: argmax of [constant background; CAMs] → (H, W) uint8 class ids."""
    keys = np.asarray(keys, dtype=np.int64)
    h, w = cams.shape[1:]
    scores = np.concatenate([np.full((1, h, w), bg_threshold, np.float32), cams], axis=0)
    lut = np.concatenate([[0], keys]).astype(np.uint8)
    return lut[scores.argmax(axis=0)]

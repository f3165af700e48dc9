"""Training-time augmentation (SPEC §1, §4), numpy + PIL, seeded by a numpy Generator.

Images are (H, W, 3) uint8 until `normalize`, then (H, W, 3) float32. Score maps that travel
with an image (the la/ha maps of train-aff) are (C, H, W) and are cropped/flipped jointly.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance


def resize_long(img: np.ndarray, rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """Resize so the long side is a uniform integer in [low, high] (PIL bicubic)."""
    target = int(rng.integers(low, high + 1))
    h, w = img.shape[:2]
    s = target / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def color_jitter(
    img: np.ndarray, rng: np.random.Generator, jitter: tuple[float, float, float, float]
) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter in a random order (like ColorJitter)."""
    b, c, s, h = jitter
    pil = Image.fromarray(img)
    ops = []
    if b > 0:
        f = rng.uniform(max(0.0, 1 - b), 1 + b)
        ops.append(lambda im, f=f: ImageEnhance.Brightness(im).enhance(f))
    if c > 0:
        f = rng.uniform(max(0.0, 1 - c), 1 + c)
        ops.append(lambda im, f=f: ImageEnhance.Contrast(im).enhance(f))
    if s > 0:
        f = rng.uniform(max(0.0, 1 - s), 1 + s)
        ops.append(lambda im, f=f: ImageEnhance.Color(im).enhance(f))
    if h > 0:
        shift = rng.uniform(-h, h)
        ops.append(lambda im, shift=shift: _shift_hue(im, shift))
    for i in rng.permutation(len(ops)):
        pil = ops[i](pil)
    return np.asarray(pil)


def _shift_hue(im: Image.Image, shift: float) -> Image.Image:
    hsv = np.array(im.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def normalize(img: np.ndarray, mean, std) -> np.ndarray:
    """uint8 RGB → float32 (x/255 − mean)/std, (H, W, 3)."""
    x = img.astype(np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def crop_box(h: int, w: int, size: int, rng: np.random.Generator | None):
    """A random size×size window against an h×w image: (container, image) slices.

    Where the image is smaller than the crop it is placed at a random position inside a zero
    container, as the reference's RandomCrop does. ``rng`` None: the centred window (for
    held-out scoring, where the view must not change between epochs).
    """

    def offset(room: int) -> int:
        return room // 2 if rng is None else int(rng.integers(0, room + 1))

    ch, cw = min(size, h), min(size, w)
    w_space, h_space = w - size, h - size
    if w_space > 0:
        cont_left, img_left = 0, offset(w_space)
    else:
        cont_left, img_left = offset(-w_space), 0
    if h_space > 0:
        cont_top, img_top = 0, offset(h_space)
    else:
        cont_top, img_top = offset(-h_space), 0
    cont = (slice(cont_top, cont_top + ch), slice(cont_left, cont_left + cw))
    src = (slice(img_top, img_top + ch), slice(img_left, img_left + cw))
    return cont, src


def random_crop(
    img: np.ndarray, size: int, rng: np.random.Generator | None, maps: np.ndarray | None = None
):
    """Crop (or zero-pad) an (H, W, C) image, and optionally (C', H, W) maps, to size×size
    (the centred window where ``rng`` is None)."""
    h, w = img.shape[:2]
    cont, src = crop_box(h, w, size, rng)
    out = np.zeros((size, size, img.shape[2]), img.dtype)
    out[cont] = img[src]
    if maps is None:
        return out
    mout = np.zeros((maps.shape[0], size, size), maps.dtype)
    mout[:, cont[0], cont[1]] = maps[:, src[0], src[1]]
    return out, mout

"""Numpy image-array helpers of the labeling pipeline (SPEC §2, §3, §5), matching the reference.

All maps are channel-first ``(C, H, W)`` arrays. Torch-free: ``resize_bilinear`` reimplements
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

import numpy as np


def _check_chw(name: str, x: object) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{name}: expected a (C, H, W) array, got {got}")
    return x


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def pad_to_multiple(x: np.ndarray, multiple: int = 8, value: float = 0.0) -> np.ndarray:
    """Pad the bottom and right of a (C, H, W) map so H and W become multiples of ``multiple``.

    Returns (C, Hp, Wp) of x's dtype, ``Hp = ceil(H / multiple) * multiple``; the new pixels are
    ``value`` in every channel (the reference pads its score maps with 0, background included).
    """
    x = _check_chw("x", x)
    multiple = _check_positive_int("multiple", multiple)
    _, h, w = x.shape
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x.copy()
    return np.pad(x, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=value)


def avg_pool(x: np.ndarray, k: int = 8) -> np.ndarray:
    """Mean over non-overlapping k×k blocks: (C, H, W) → (C, H/k, W/k), float32.

    H and W must be multiples of k (pad first with ``pad_to_multiple``). Bit-exact with the
    reference's ``F.avg_pool2d(x, k, k)``: the k² values of a block are summed in float32 in
    row-major order, then divided by k². (The training-label reference pools with skimage's
    ``block_reduce``, whose float32 summation order differs by at most a few ulp.)
    """
    x = _check_chw("x", x)
    k = _check_positive_int("k", k)
    c, h, w = x.shape
    if h % k or w % k:
        raise ValueError(
            f"x: expected height and width that are multiples of {k}, got {(c, h, w)}; "
            "pad with pad_to_multiple first"
        )
    blocks = x.astype(np.float32, copy=False).reshape(c, h // k, k, w // k, k)
    total = np.zeros((c, h // k, w // k), dtype=np.float32)
    for i in range(k):
        for j in range(k):
            total += blocks[:, :, i, :, j]
    return total / np.float32(k * k)


def _source_index(
    out_size: int, in_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour indices and weights along one axis, as torch's bilinear (align_corners=False).

    Torch computes in float32: ``src = (dst + 0.5) * (in / out) - 0.5``, clamped at 0, then
    ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, ``l1 = src - i0``, ``l0 = 1 - l1``.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    l0 = (np.float32(1.0) - l1).astype(np.float32)
    return i0, i1, l0, l1


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (C, h, w) map to (C, H, W) float32, ``size = (H, W)``.

    Matches ``torch.nn.functional.interpolate(x[None], size, mode="bilinear",
    align_corners=False)`` (no antialiasing, as the reference's ``nn.Upsample``) to about 1e-6.
    """
    x = _check_chw("x", x)
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size)
    ):
        raise ValueError(f"size: expected (H, W) with H, W >= 1, got {size!r}")
    c, h, w = x.shape
    if h == 0 or w == 0:
        raise ValueError(f"x: expected a non-empty (C, h, w) map, got {(c, h, w)}")
    out_h, out_w = int(size[0]), int(size[1])
    x = x.astype(np.float32, copy=False)
    y0, y1, ly0, ly1 = _source_index(out_h, h)
    x0, x1, lx0, lx1 = _source_index(out_w, w)
    # Same grouping as torch: interpolate along width within each of the two rows, then blend.
    # The width pass depends only on the input row, so it runs once per input row (h rows)
    # and the two rows of every output pixel are gathered from it; the blend runs in place.
    # Same float32 operations (bit-identical), two full-size arrays instead of seven.
    rows = lx0 * x[:, :, x0] + lx1 * x[:, :, x1]
    out = rows[:, y0]
    out *= ly0[:, None]
    below = rows[:, y1]
    below *= ly1[:, None]
    out += below
    return out


def background_score(cams: np.ndarray, alpha: float) -> np.ndarray:
    """The reference's background score ``(1 - max_k cams_k) ** alpha``, (H, W) float32.

    cams: (K, H, W) normalised class activation maps (values in [0, 1]) of the present classes;
    with K = 0 the background is 1 everywhere. alpha: the background power (SPEC §2: 4 and 32
    for the la/ha CRF maps, 16 for the random walk).
    """
    cams = _check_chw("cams", cams)
    k, h, w = cams.shape
    if k == 0:
        return np.ones((h, w), dtype=np.float32)
    peak = cams.astype(np.float32, copy=False).max(axis=0)
    return np.power(np.float32(1.0) - peak, np.float32(alpha)).astype(np.float32)


def scores_with_background(cams: np.ndarray, alpha: float) -> np.ndarray:
    """Stack the background score on top of the class maps: ``[bg; cams]``, (K+1, H, W) float32.

    The scores are not normalised to sum to 1 (SPEC §2).
    """
    cams = _check_chw("cams", cams)
    bg = background_score(cams, alpha)
    return np.concatenate([bg[None], cams.astype(np.float32, copy=False)], axis=0)

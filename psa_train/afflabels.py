"""Affinity labels for AffinityNet training (SPEC §3): confident labels and pair labels.

Numpy only. The la/ha CRF score maps of an image become a stride-8 label map of confident
background (0), confident foreground (the channel index of a present class) and ignore (255);
every pair within the radius then becomes a positive (same label) or negative (different labels)
example, or no example when a label is 255.
"""

from __future__ import annotations

import numpy as np

from psa_infer.ops import avg_pool
from psa_infer.randomwalk import _from_region, pair_offsets  # one definition of the pair sets

IGNORE = 255
_PAIR_SETS = ("psa", "full")


def _describe(x: object) -> str:
    return f"{tuple(x.shape)} {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__


def confident_labels(la: np.ndarray, ha: np.ndarray, stride: int = 8) -> np.ndarray:
    """Confident label map at feature resolution, (H/stride, W/stride) uint8 (SPEC §3 steps 3–5).

    la, ha: (K+1, H, W) float32 low-α and high-α CRF score maps (channel 0 background, channel i
    the i-th present class), zero outside the image. H and W must be multiples of ``stride``:
    callers pad (the reference's 448 crop container) before calling.

    After a ``stride``×``stride`` block mean: a pixel whose 2(K+1) scores are all < 1e-5 (outside
    the image) is 255; otherwise it takes the low-α argmax if that is a class (confident
    foreground, since the low-α background is strong), 0 if the high-α argmax is background
    (confident background, since the high-α background is weak), and 255 otherwise. Values are
    channel indices, not VOC class ids.
    """
    for name, x in (("la", la), ("ha", ha)):
        if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[0] < 1:
            raise ValueError(f"{name}: expected (K+1, H, W) float32, got {_describe(x)}")
    if la.shape != ha.shape:
        raise ValueError(f"ha: expected the shape of la {la.shape}, got {_describe(ha)}")
    if la.shape[0] > IGNORE:
        raise ValueError(f"la: expected at most {IGNORE} channels, got {la.shape[0]}")
    channels, h, w = la.shape
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
    if h % stride or w % stride:
        raise ValueError(
            f"la: expected height and width that are multiples of stride {stride}, got "
            f"{la.shape}; pad the score maps first"
        )
    pooled = avg_pool(np.concatenate([la, ha], axis=0).astype(np.float32, copy=False), stride)
    no_score = pooled.max(axis=0) < 1e-5
    la_idx = pooled[:channels].argmax(axis=0)
    ha_idx = pooled[channels:].argmax(axis=0)
    label = la_idx.astype(np.uint8)
    label[la_idx == 0] = IGNORE
    label[ha_idx == 0] = 0
    label[no_score] = IGNORE
    return label


def _pair_labels(lf: np.ndarray, lt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bg_pos, fg_pos, neg (float32 0/1) from the labels at the two ends of each pair."""
    equal = lf == lt
    valid = (lf < IGNORE) & (lt < IGNORE)
    bg_pos = equal & (lf == 0)
    fg_pos = equal & (lf != 0) & valid
    neg = ~equal & valid
    return bg_pos.astype(np.float32), fg_pos.astype(np.float32), neg.astype(np.float32)


def pair_labels(
    label: np.ndarray, radius: int, pairs: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Affinity labels ``(bg_pos, fg_pos, neg)`` of the pairs within ``radius``, float32 0/1.

    label: (h, w) uint8 confident label map (0 background, class index, 255 ignore), e.g. from
    ``confident_labels``. For each pair (p, p + d_k), ``d_k = pair_offsets(radius)[k]`` (SPEC §3.1):
    bg_pos = both labels 0; fg_pos = equal labels, not background, not 255; neg = different
    labels, neither 255.

    pairs: ``"psa"`` — the reference's layout (K, Nf) (``ExtractAffinityLabelInRadius``): the
    first pixels are rows 0 … h-r, columns r-1 … w-r, row-major, ``Nf = (h-r+1)(w-2r+2)``
    (0 when the map is too small). ``"full"`` — (K, h, w), entry [k, y, x] for the pair
    ((y, x), (y, x) + d_k) as in ``pair_affinity(pairs="full")``, all three 0 where that pair
    leaves the map.
    """
    if pairs not in _PAIR_SETS:
        raise ValueError(f"pairs: expected 'psa' or 'full', got {pairs!r}")
    offsets = pair_offsets(radius)
    if not isinstance(label, np.ndarray) or label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label: expected (h, w) uint8, got {_describe(label)}")
    h, w = label.shape
    k_pairs = len(offsets)
    if pairs == "psa":
        # Same first pixels for every offset; the second pixel is always inside the map.
        y0, y1, x0, x1 = _from_region(0, 0, h, w, radius, "psa")
        nf = max(y1 - y0, 0) * max(x1 - x0, 0)
        if nf == 0:
            empty = np.zeros((k_pairs, 0), dtype=np.float32)
            return empty, empty.copy(), empty.copy()
        lf = label[y0:y1, x0:x1].reshape(1, nf)
        lt = np.stack(
            [label[y0 + dy : y1 + dy, x0 + dx : x1 + dx] for dy, dx in offsets.tolist()]
        ).reshape(k_pairs, nf)
        return _pair_labels(lf, lt)

    # Full layout: where the pair leaves the map the labels stay 0 in all three outputs.
    out = tuple(np.zeros((k_pairs, h, w), dtype=np.float32) for _ in range(3))
    for k, (dy, dx) in enumerate(offsets.tolist()):
        y0, y1, x0, x1 = _from_region(dy, dx, h, w, radius, "full")
        if y1 <= y0 or x1 <= x0:
            continue
        parts = _pair_labels(label[y0:y1, x0:x1], label[y0 + dy : y1 + dy, x0 + dx : x1 + dx])
        for dst, part in zip(out, parts, strict=True):
            dst[k, y0:y1, x0:x1] = part
    return out

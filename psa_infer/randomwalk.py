"""The random walk of AffinityNet in its local form (DESIGN.md, "The random walk").

Numpy only. Memory O(K·N), no N×N matrix anywhere.
"""

from __future__ import annotations

import numpy as np


def pair_offsets(radius: int = 5) -> np.ndarray:
    """The reference's half-disk of pair offsets, (K, 2) int64 (dy, dx).

    Order as in the reference (SPEC §3.1): (0, 1) … (0, r-1), then for dy = 1 … r-1 and
    dx = -(r-1) … r-1 every (dy, dx) with dy² + dx² < r². K = 34 for r = 5.
    """
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    offs = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dy * dy + dx * dx < radius * radius:
                offs.append((dy, dx))
    return np.array(offs, dtype=np.int64).reshape(-1, 2)

"""The random walk of AffinityNet in its local form (DESIGN.md, "The random walk").

Numpy, with the inner loop optionally compiled (``psa_infer.walk_kernel``, numba) — same
arithmetic either way. Memory O(K·N), no N×N matrix anywhere.

The reference (SPEC §5) builds the dense N×N matrix ``A`` (unit diagonal, ``A_ij = a_ij ** beta``
for every pair of its pair set), column-normalises it into ``T`` and returns ``v · T^256``. Each
column of ``T`` only has entries for the node itself and the nodes within the radius, so one step
of ``v ← v · T`` is, per node ``q``, a weighted sum over ``2K + 1`` shifted copies of ``v``::

    v'[c, q] = (1 / D[q]) * sum_j v[c, q + e_j] * A(q + e_j, q),    D[q] = sum_j A(q + e_j, q)

where ``e_j`` runs over the full disk (both halves of ``pair_offsets`` and the centre). The weights
``A(q + e_j, q) / D[q]`` are computed once; each step is then ``2K + 1`` multiply-adds of
contiguous slices of a flat, margin-padded copy of the scores.
"""

from __future__ import annotations

import os

import numpy as np

from psa_infer.errors import PsaError

_PAIR_SETS = ("full", "psa")
KERNELS = ("auto", "numba", "numpy")


def pair_offsets(radius: int = 5) -> np.ndarray:
    """The reference's half-disk of pair offsets, (K, 2) int64 (dy, dx).

    Order as in the reference (SPEC §3.1): (0, 1) … (0, r-1), then for dy = 1 … r-1 and
    dx = -(r-1) … r-1 every (dy, dx) with dy² + dx² < r². K = 34 for r = 5.
    """
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)):
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    offs = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dy * dy + dx * dx < radius * radius:
                offs.append((dy, dx))
    return np.array(offs, dtype=np.int64).reshape(-1, 2)


def _describe(x: object) -> str:
    """'(3, 12) float64' for an array, the type name for anything else (error messages)."""
    if isinstance(x, np.ndarray):
        return f"{tuple(x.shape)} {x.dtype}"
    return type(x).__name__


def _check_map(name: str, x: object) -> np.ndarray:
    """Check that ``x`` is a (C, h, w) float32 array with finite values; return it."""
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.dtype != np.float32:
        raise ValueError(f"{name}: expected (C, h, w) float32, got {_describe(x)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return x


def _from_region(dy: int, dx: int, h: int, w: int, radius: int, pairs: str) -> tuple[int, ...]:
    """Rows [y0, y1) and columns [x0, x1) of the first pixels p whose pair (p, p + (dy, dx)) exists.

    ``full``: every pair with both ends inside the h×w grid. ``psa``: the reference's pair set
    (SPEC §3.1, border quirk): first pixels only in rows 0 … h-r and columns r-1 … w-r, whatever
    the offset. The region may be empty (y1 <= y0 or x1 <= x0).
    """
    if pairs == "psa":
        return 0, h - radius + 1, radius - 1, w - radius + 1
    return max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)


def _check_pairs(pairs: str) -> None:
    if pairs not in _PAIR_SETS:
        raise ValueError(f"pairs: expected 'full' or 'psa', got {pairs!r}")


def check_walk_params(beta: float, steps: int) -> None:
    """β must be a finite number > 0 and the step count an integer >= 0 (one-line errors)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.number)):
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")


def pair_affinity(features: np.ndarray, radius: int = 5, pairs: str = "full") -> np.ndarray:
    """Affinities of the pairs of the half-disk around every pixel, (K, h, w) float32.

    features: (C, h, w) float32 affinity features (the AffinityNet output at stride 8).
    Entry ``[k, y, x]`` is ``exp(-mean_c |f_c(y, x) - f_c(y + dy_k, x + dx_k)|)`` for the pair
    ((y, x), (y + dy_k, x + dx_k)) with (dy_k, dx_k) = ``pair_offsets(radius)[k]`` — the channel
    *mean*, as the reference (SPEC §4) — and 0 where that pair does not exist.

    pairs: ``"full"`` — every pair with both pixels inside the grid (as IRN); ``"psa"`` — exactly
    the reference's pair set, which misses the pairs whose first pixel lies in the bottom r-1 rows
    or in the left or right r-1 columns (SPEC §3.1, border quirk). ``"psa"`` reproduces the
    reference's ``(K, Nf)`` affinities, placed at their first pixels.
    """
    _check_pairs(pairs)
    offsets = pair_offsets(radius)
    f = _check_map("features", features)
    c, h, w = f.shape
    if c == 0:
        raise ValueError(f"features: expected (C, h, w) float32 with C >= 1, got {_describe(f)}")
    out = np.zeros((len(offsets), h, w), dtype=np.float32)
    abs_sum = _channel_abs_sum_numpy
    if walk_kernel() == "numba":
        from psa_infer.walk_kernel import channel_abs_sum as abs_sum
    for k, (dy, dx) in enumerate(offsets.tolist()):
        y0, y1, x0, x1 = _from_region(dy, dx, h, w, radius, pairs)
        if y1 <= y0 or x1 <= x0:
            continue
        # The difference is exact in float32 as in the reference; the mean and exp run in
        # float64 so the result is the correctly rounded value (torch's float32 reduction and exp
        # are within about 1 ulp of it, their exact rounding is not reproducible in numpy).
        dist = abs_sum(f, dy, dx, y0, y1, x0, x1) / c
        out[k, y0:y1, x0:x1] = np.exp(-dist)
    return out


def _channel_abs_sum_numpy(
    f: np.ndarray, dy: int, dx: int, y0: int, y1: int, x0: int, x1: int
) -> np.ndarray:
    """``sum_c |f[c, y, x] − f[c, y + dy, x + dx]|`` on the region, float64 (channel order)."""
    diff = np.abs(f[:, y0:y1, x0:x1] - f[:, y0 + dy : y1 + dy, x0 + dx : x1 + dx])
    return diff.sum(axis=0, dtype=np.float64)


def _transition_weights(
    affinity: np.ndarray, beta: float, radius: int
) -> tuple[list[int], np.ndarray]:
    """Normalised one-step weights over the full disk in the flat layout.

    affinity: (K, h, w) pair affinities (``pair_affinity`` layout). Returns ``(shifts, weights)``:
    ``weights[j, q] = A(q + e_j, q) / D[q]`` (float32, (J, h·w)) for the J <= 2K+1 disk offsets
    e_j that carry any weight, and ``shifts[j]`` = e_j as a flat row-major index shift. Entries of
    pairs that leave the grid are ignored, so a wrapped flat shift always meets weight 0.
    """
    offsets = pair_offsets(radius).tolist()
    _, h, w = affinity.shape
    # float64 for the one-off preparation; the walk itself runs in float32 like the reference.
    powered = np.zeros(affinity.shape, dtype=np.float64)
    regions = [_from_region(dy, dx, h, w, radius, "full") for dy, dx in offsets]
    for k, (y0, y1, x0, x1) in enumerate(regions):
        if y1 > y0 and x1 > x0:
            powered[k, y0:y1, x0:x1] = affinity[k, y0:y1, x0:x1].astype(np.float64) ** beta
    # D[q]: the self loop, the pairs starting at q and the pairs ending at q (column sums of A).
    degree = 1.0 + powered.sum(axis=0)
    for k, ((dy, dx), (y0, y1, x0, x1)) in enumerate(zip(offsets, regions, strict=True)):
        if y1 > y0 and x1 > x0:
            degree[y0 + dy : y1 + dy, x0 + dx : x1 + dx] += powered[k, y0:y1, x0:x1]

    weights = np.zeros((2 * len(offsets) + 1, h, w), dtype=np.float32)
    weights[0] = 1.0 / degree
    shifts = [0]
    for k, ((dy, dx), (y0, y1, x0, x1)) in enumerate(zip(offsets, regions, strict=True)):
        if not powered[k].any():
            continue  # no pair with this offset (small or PSA-cropped grid): skip both halves
        # Pair (q, q + d_k) feeds q from q + d_k ...
        weights[len(shifts)] = powered[k] / degree
        shifts.append(dy * w + dx)
        # ... and pair (q - d_k, q) feeds q from q - d_k.
        to_y, to_x = slice(y0 + dy, y1 + dy), slice(x0 + dx, x1 + dx)
        weights[len(shifts), to_y, to_x] = powered[k, y0:y1, x0:x1] / degree[to_y, to_x]
        shifts.append(-(dy * w + dx))
    return shifts, weights[: len(shifts)].reshape(len(shifts), h * w)


def walk_threads() -> int:
    """Threads for the compiled walk: ``PSA_RW_THREADS`` if set, else the CPUs this process may
    use. Cheap (no numba import), so commands check the variable before any work."""
    env = os.environ.get("PSA_RW_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise PsaError(f"PSA_RW_THREADS: expected an integer >= 1, got {env!r}")
        return int(env)
    from psa_infer.runs import usable_cpus

    return usable_cpus()


def check_walk_env() -> None:
    """``PSA_RW_KERNEL`` and ``PSA_RW_THREADS`` are valid (a PsaError naming the variable)."""
    walk_threads()
    choice = os.environ.get("PSA_RW_KERNEL", "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise PsaError(f"PSA_RW_KERNEL: expected one of {', '.join(KERNELS)}, got {choice!r}")


def walk_kernel() -> str:
    """The walk loop in use: ``"numba"`` (compiled) or ``"numpy"``.

    ``PSA_RW_KERNEL`` chooses: ``auto`` (default: numba when it imports), ``numba`` (an error if it
    does not) or ``numpy``.
    """
    choice = os.environ.get("PSA_RW_KERNEL", "auto").strip().lower() or "auto"
    if choice not in KERNELS:
        raise PsaError(f"PSA_RW_KERNEL: expected one of {', '.join(KERNELS)}, got {choice!r}")
    if choice == "numpy":
        return "numpy"
    try:
        import psa_infer.walk_kernel  # noqa: F401
    except ImportError as e:
        if choice == "numba":
            raise PsaError(f"PSA_RW_KERNEL=numba but numba does not import: {e}") from e
        return "numpy"
    return "numba"


def _walk(v: np.ndarray, shifts: list[int], weights: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` walk steps with the kernel of ``walk_kernel()``."""
    if walk_kernel() == "numba":
        from psa_infer import walk_kernel as kernel

        return kernel.walk(v, shifts, weights, steps)
    return _walk_numpy(v, shifts, weights, steps)


def _walk_numpy(v: np.ndarray, shifts: list[int], weights: np.ndarray, steps: int) -> np.ndarray:
    """Apply ``v[c, q] ← sum_j weights[j, q] * v[c, q + shifts[j]]`` ``steps`` times.

    v: (C, N) float32. The scores live in the middle of a flat buffer with a zero margin wide
    enough for every shift, so each shifted copy is a contiguous slice (no gather) and the loop
    allocates nothing. ``shifts[0]`` must be 0 (the self loop).
    """
    c, n = v.shape
    margin = max(abs(s) for s in shifts)
    buffers = [np.zeros((c, n + 2 * margin), dtype=np.float32) for _ in range(2)]
    buffers[0][:, margin : margin + n] = v
    # Views are made once (slicing in the hot loop would cost as much as the small products);
    # views[b][0] is the centre of buffer b since shifts[0] == 0.
    views = [[buf[:, margin + s : margin + s + n] for s in shifts] for buf in buffers]
    rows = list(weights)
    terms = [list(zip(vs[1:], rows[1:], strict=True)) for vs in views]
    tmp = np.empty((c, n), dtype=np.float32)
    for step in range(steps):
        src, out = step % 2, views[1 - step % 2][0]
        np.multiply(views[src][0], rows[0], out=out)
        for view, row in terms[src]:
            np.multiply(view, row, out=tmp)
            np.add(out, tmp, out=out)
    return views[steps % 2][0].copy()


def random_walk(
    scores: np.ndarray,
    affinity: np.ndarray,
    beta: float = 8.0,
    steps: int = 256,
    radius: int = 5,
) -> np.ndarray:
    """Propagate class scores along the affinities, (C, h, w) float32.

    scores: (C, h, w) float32 at feature resolution, background channel included.
    affinity: (K, h, w) float32 from ``pair_affinity`` (same radius; any pair set — entries of
    pairs that leave the grid are ignored), values >= 0.
    beta: power applied to the affinities (> 0). steps: number of walk steps t (>= 0; the
    reference uses t = 2**logt = 256). radius: the pair radius of ``affinity``.

    Equals the reference's ``v · T^steps`` (SPEC §5) with ``A = affinity ** beta`` on both halves of
    the disk, unit self-affinity and ``T = A / colsum(A)``: every output value is a weighted mean of
    input values (a constant field stays constant, all-zero channels stay zero). Computed locally
    in O(K·N) memory and O(steps·K·C·N) work; channels that are all zero are not walked.
    """
    offsets = pair_offsets(radius)
    v = _check_map("scores", scores)
    c, h, w = v.shape
    expected = (len(offsets), h, w)
    if (
        not isinstance(affinity, np.ndarray)
        or affinity.shape != expected
        or affinity.dtype != np.float32
    ):
        raise ValueError(
            f"affinity: expected {expected} float32 for radius {radius} and scores of shape "
            f"{(c, h, w)}, got {_describe(affinity)}"
        )
    if not (np.isfinite(affinity).all() and (affinity >= 0).all()):
        raise ValueError("affinity: expected finite values >= 0, got NaN, inf or negative values")
    check_walk_params(beta, steps)

    out = np.zeros((c, h, w), dtype=np.float32)
    # The walk is linear: an all-zero channel (an absent class) stays exactly zero.
    active = np.flatnonzero(v.reshape(c, -1).any(axis=1))
    if active.size == 0 or h * w == 0:
        return out
    if steps == 0:
        out[active] = v[active]
        return out
    shifts, weights = _transition_weights(affinity, float(beta), radius)
    walked = _walk(v[active].reshape(active.size, h * w), shifts, weights, int(steps))
    out[active] = walked.reshape(active.size, h, w)
    return out

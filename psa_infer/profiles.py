"""The input shapes a bundle's models see, for images whose sides lie in [MIN, MAX] pixels.

TensorRT needs an optimisation profile (min, opt, max shape) for every dynamic input. One
function computes it from meta.json and the image sides, for both places that build engines:
``psa build-engine`` (``export/engine.py``) and ONNX Runtime's TensorRT execution provider
(``psa_infer/bundle.py``). The shapes follow what the runtime actually feeds
(``psa_infer.pipeline.Labeler``):

* cam: every scale of meta.json (PIL's rounded size), the image and its mirror in one batch of
  2 with ``flip``; an axis longer than ``psa_infer.cam.TILE`` runs in windows of one tile plus
  ``TILE_MARGIN`` on each side, one window at a time (batch 1), so the CAM passes of a large
  image see windows of at most ~1.3k pixels; classifying an untagged image feeds it whole, at
  scale 1, batch 1;
* aff: the image zero-padded to a multiple of 8, tiled the same way, batch 1;
* rw: the whole stride-8 grid, with 1 … len(classes) score channels (background + the
  present classes) and the fixed feature depth D of aff.onnx.

Torch-free, TensorRT-free: numpy and the runtime's own tiling rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from psa_infer.backends import CAM_IMAGE, RW_FEATURES, RW_SCORES
from psa_infer.cam import STRIDE, TILE, TILE_MARGIN, _scaled_size, tile_windows
from psa_infer.errors import PsaError

# Image sides MIN, OPT, MAX in pixels. VOC images are <= 500 px and OPT is the reference's crop;
# MAX 1024 keeps a 1024² image whole at scale 1 (classification) and in tiles at scale 2.
DEFAULT_SIDES = (32, 448, 1024)

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)


class ProfileError(PsaError):
    """Image sides that no profile can be made of, or an image outside an engine's sides."""


def check_sides(sides: Sequence[int]) -> tuple[int, int, int]:
    """(MIN, OPT, MAX) as ints with 1 <= MIN <= OPT <= MAX, or a ProfileError."""
    ok = len(sides) == 3 and all(isinstance(s, int) and not isinstance(s, bool) for s in sides)
    if not ok or not 1 <= sides[0] <= sides[1] <= sides[2]:
        raise ProfileError(
            f"profile: expected image sides 1 <= MIN <= OPT <= MAX pixels, got {tuple(sides)}"
        )
    return int(sides[0]), int(sides[1]), int(sides[2])


def _pad8(n: int) -> int:
    return math.ceil(n / STRIDE) * STRIDE


def window_range(lo: int, hi: int) -> tuple[int, int]:
    """Shortest and longest input along one axis for axes of ``lo`` … ``hi`` pixels.

    Axes up to ``TILE`` go whole; longer ones in the windows of ``tile_windows``, whose lengths
    depend on the axis only through a few roundings, so every length is looked at.
    """
    shortest, longest = lo, min(hi, TILE)
    for n in range(max(lo, TILE + 1), hi + 1):
        lengths = [stop - start for start, stop, _, _ in tile_windows(n, TILE, TILE_MARGIN)]
        shortest, longest = min(shortest, *lengths), max(longest, *lengths)
    return shortest, longest


def _opt(n: int) -> int:
    """The typical input along an axis of ``n`` pixels: itself, or its longest window."""
    return max(stop - start for start, stop, _, _ in tile_windows(n, TILE, TILE_MARGIN))


def engine_profiles(meta: Mapping, sides: Sequence[int] = DEFAULT_SIDES) -> dict[str, Profile]:
    """Profiles {model: {input: (min, opt, max)}} covering images of ``sides`` = (MIN, OPT, MAX)
    pixels (each of H and W anywhere in [MIN, MAX]); ``meta`` is a checked meta.json."""
    lo, opt, hi = check_sides(sides)
    batch = 2 if meta["flip"] else 1
    # Every scale's range of rounded sizes (PIL rounds each side), in tiles; and the whole
    # image, untiled, which classifies an untagged image at scale 1.
    ranges = [(_scaled_size(lo, lo, s)[0], _scaled_size(hi, hi, s)[0]) for s in meta["scales"]]
    spans = [(lo, hi)] + [window_range(a, b) for a, b in ranges]
    c_lo, c_hi = min(s[0] for s in spans), max(s[1] for s in spans)
    c_opt = min(max(_opt(opt), c_lo), c_hi)
    a_lo, a_hi = window_range(_pad8(lo), _pad8(hi))
    a_opt = _opt(_pad8(opt))
    depth = meta["models"]["aff"]["outputs"][0]["shape"][1]  # fixed: load_meta checks it
    # The walk's grid: the features' (stride 8), or twice as fine (meta's walk_stride 4).
    walk_stride = meta.get("walk_stride", STRIDE)
    g_lo, g_opt, g_hi = (_pad8(s) // walk_stride for s in (lo, opt, hi))
    n = len(meta["classes"])
    return {
        "cam": {CAM_IMAGE: ((1, 3, c_lo, c_lo), (batch, 3, c_opt, c_opt), (batch, 3, c_hi, c_hi))},
        "aff": {CAM_IMAGE: tuple((1, 3, s, s) for s in (a_lo, a_opt, a_hi))},
        "rw": {
            RW_SCORES: ((1, g_lo, g_lo), (min(2, n), g_opt, g_opt), (n, g_hi, g_hi)),
            RW_FEATURES: tuple((depth, g, g) for g in (g_lo, g_opt, g_hi)),
        },
    }


def profile_strings(profile: Mapping[str, tuple]) -> tuple[str, str, str]:
    """{input: (min, opt, max)} → ("image:1x3x16x16", …) for min, opt and max, several inputs
    joined by "," — the form of trtexec's --minShapes and ONNX Runtime's trt_profile_*_shapes."""
    return tuple(
        ",".join(f"{name}:{'x'.join(map(str, shapes[i]))}" for name, shapes in profile.items())
        for i in range(3)
    )


def check_image_size(height: int, width: int, sides: Sequence[int], where: str) -> None:
    """Refuse an image whose sides fall outside the [MIN, MAX] pixels the engines were built for.

    ``where`` names the engines (e.g. the bundle); the message says how to rebuild them.
    """
    lo, opt, hi = check_sides(sides)
    if lo <= height <= hi and lo <= width <= hi:
        return
    wider = f"{min(lo, height, width)},{opt},{max(hi, height, width)}"
    raise ProfileError(
        f"{where}: a {width}x{height}-pixel image is outside the TensorRT engines' profile, "
        f"built for image sides of {lo} to {hi} pixels (psa build-engine --profile "
        f"{lo},{opt},{hi}) — rebuild them for it: psa build-engine --profile {wider}"
    )

"""A synthetic PASCAL-VOC-style benchmark on which AffinityNet has something to gain.

The set comes in *styles* (``STYLES``) that differ in the ways real data sets differ: what
marks the class and how big it is, shared or class-specific textures, the number of classes,
object size and count, and the backgrounds. ``default`` is described first; the others are
variations of it (see ``Style`` and the table under it). Develop on one, check on the others.

In the ``default`` style every object is a smooth blob-shaped *body* with a small *head*
attached to it. Only the head says which class the object is: a disc covering about 8-15% of
the object's area, painted in a class-specific saturated colour with a class-specific pattern
(eye, rings, stripes, checks, spokes, cross, two-tone, dots; with more than eight classes the
pattern repeats with another hue and a white instead of a dark second colour). The body carries
no class information: its shape (a randomly deformed, elongated, rotated ellipse), its texture
(smooth gradient, stripes, spots or mottling) and its muted colours are drawn from one pool
shared by all classes, so a classifier's CAM fires on the head while the body stays a coherent
region whose pixels look alike and unlike the background. Backgrounds are random crops,
rescales and colour shifts of the photographs that ship inside scikit-image (astronaut, brick,
camera, chelsea, coffee, ...), sometimes blended with, or replaced by, fractal noise. An image
holds 1-3 objects of 1-3 distinct classes (two objects may share a class); later objects
occlude earlier ones, and a layout is re-sampled until every object shows at least 60% of its
head and 55% of its body, and its head is 5-25% of its visible pixels. An object's bounding
size is 40-85% of the shorter image side; image height and width are drawn independently and
uniformly from [0.85 * size, 1.15 * size], so they are rarely multiples of 8. The ground-truth
masks mark visible pixels (0 = background, 1..K = class) with a VOC-like 255 "ignore" band two
pixels wide (one pixel on each side) along every boundary between different labels.

The other styles change one or a few of these (``STYLES``): ``parts`` halves the head,
``textured`` drops it and gives each class its own texture over the whole body (larger objects),
``many`` has 12 classes, small objects, up to 6 per image and plain or blurred backgrounds;
``plain``, ``small`` and ``classes12`` each take one of ``many``'s changes alone.
Every data set written records its style and its measured ``statistics`` in psa_dataset.json.

Output is byte-identical for the same (style, seed, num_images, size, num_classes,
val_fraction): image i is drawn from `np.random.default_rng([seed, i])`. The ``default`` style
draws exactly what the generator drew before styles existed (a test pins it).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from psa_infer.errors import PsaError
from psa_infer.palette import atomic_path, save_label_png

GENERATOR = "psa.synthetic"
# Raised when the images for the same parameters change. Styles left it at 1: the `default`
# style draws what version 1 drew, and a psa_dataset.json without a style is that style.
VERSION = 1

# Class k (1-based) has head pattern (k - 1) % 8; the names only need to be memorable.
CLASS_NAMES = (
    "eyespot",
    "ringtail",
    "stripeback",
    "checkerfin",
    "starhead",
    "crossbill",
    "halfmoon",
    "dotling",
    "owlface",
    "target",
    "zebrafin",
    "harlequin",
    "sunburst",
    "plusnose",
    "twotone",
    "speckle",
    "lanternfish",
    "bullseye",
    "tigerhead",
    "chequer",
)
MAX_CLASSES = len(CLASS_NAMES)

# Photos present in the scikit-image wheel (nothing is downloaded). The chessboard, horse and
# other graphic images are left out: they would look like heads or object masks.
PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)

SIZE_JITTER = 0.15  # H, W ~ U[(1 - j) * size, (1 + j) * size]
MIN_HEAD_VISIBLE = 0.60
MIN_BODY_VISIBLE = 0.55
MAX_LAYOUT_TRIES = 100
IGNORE = 255


@dataclass(frozen=True)
class Style:
    """What a synthetic set looks like. Each field is one way real data sets differ.

    num_classes: the default class count (``make_synthetic(num_classes=None)``).
    extent: (low, high) object bounding size / shorter image side.
    class_p: probabilities of 1, 2, ... distinct classes in an image.
    max_objects: objects per image are uniform in [distinct classes, max_objects].
    head_share: (low, high) area of the class-marking head / object area, before occlusion;
        None: no head, the body's texture marks the class (``body`` must be "class").
    visible_head_share: (low, high) head pixels / visible object pixels, enforced per object.
    body: "shared" (one texture pool for every class) or "class" (a texture per class).
    background: "photo" (photo crops, fractal noise, blends) or "plain" (flat colour ramps
        and photos blurred out of focus, as in product shots or shallow depth of field).
    """

    name: str
    num_classes: int = 6
    extent: tuple[float, float] = (0.40, 0.85)  # VOC-like foreground share
    class_p: tuple[float, ...] = (0.5, 0.35, 0.15)
    max_objects: int = 3
    head_share: tuple[float, float] | None = (0.09, 0.14)
    visible_head_share: tuple[float, float] = (0.05, 0.25)
    body: str = "shared"
    background: str = "photo"

    def __post_init__(self) -> None:
        if self.body not in ("shared", "class") or self.background not in ("photo", "plain"):
            raise ValueError(f"style {self.name}: unknown body or background kind")
        if self.head_share is None and self.body == "shared":
            raise ValueError(f"style {self.name}: without a head only the body can mark a class")
        if abs(sum(self.class_p) - 1) > 1e-9 or len(self.class_p) > self.max_objects:
            raise ValueError(f"style {self.name}: class_p must sum to 1, up to max_objects")


# Measured by `statistics` on 400 images of 160 px, seed 0 (tests/psa_train/test_synthetic.py
# checks each style's ranges on fewer). Part share: visible head / visible object pixels;
# extent: an object's visible size / the image's shorter side. For the same seed `parts` draws
# mostly the same scenes as `default`, with smaller heads (a layout that one style rejects the
# other may keep).
#
#   style     classes  foreground  objects/image  classes/image  part share  object extent
#   default        6     0.297       1.72 (1-3)       1.37         0.119        0.57
#   parts          6     0.298       1.71 (1-3)       1.37         0.053        0.57
#   textured       6     0.368       1.52 (1-2)       1.30           -          0.68
#   many          12     0.114       2.93 (1-6)       1.87         0.120        0.28
#   plain          6     0.299       1.78 (1-3)       1.40         0.120        0.57
#   small          6     0.084       2.09 (1-3)       1.55         0.119        0.28
#   classes12     12     0.297       1.72 (1-3)       1.37         0.119        0.57
STYLES = {
    "default": Style(
        "default",
    ),
    # The case the issue calls failing: the class-marking part is half the default's, so the
    # CAM finds a smaller seed and the walk has more body to fill in.
    "parts": Style(
        "parts",
        head_share=(0.04, 0.06),
        visible_head_share=(0.025, 0.10),
    ),
    # Like animals' coats: the class is everywhere on the object, so the CAM can cover it and
    # the walk has less to add; the walk must not make it worse.
    "textured": Style(
        "textured",
        extent=(0.55, 0.95),
        class_p=(0.6, 0.4),
        max_objects=2,
        head_share=None,
        body="class",
    ),
    # COCO-like: more classes, small objects, several per image, on plain or blurred
    # backdrops; the head covers only a few cells of the stride-8 grid.
    "many": Style(
        "many",
        num_classes=12,
        extent=(0.18, 0.40),
        class_p=(0.3, 0.3, 0.25, 0.15),
        max_objects=6,
        background="plain",
    ),
    # `many` changes four things at once; each of these changes one of them, to tell which
    # one a recipe fails on. Product shots: the default scenes on plain or blurred backdrops.
    "plain": Style(
        "plain",
        background="plain",
    ),
    # The default scenes with objects of `many`'s size: the head spans 1-2 stride-8 cells.
    "small": Style(
        "small",
        extent=(0.18, 0.40),
    ),
    # The default scenes with `many`'s 12 classes (patterns repeat with another hue).
    "classes12": Style(
        "classes12",
        num_classes=12,
    ),
}

_ID = re.compile(r"syn_\d{5,}")


@dataclass(frozen=True)
class Rendered:
    """One synthetic image and its ground truth.

    image: (H, W, 3) uint8 RGB. label: (H, W) uint8, 0 = background, 1..K = class, 255 = the
    ignore band. instance: (H, W) uint8, 0 = background, j + 1 = visible pixels of object j.
    head: (H, W) bool, visible head pixels. classes: class id (1..K) of each object, paint order.
    """

    image: np.ndarray
    label: np.ndarray
    instance: np.ndarray
    head: np.ndarray
    classes: tuple[int, ...]


def make_synthetic(
    out: str | os.PathLike,
    num_images: int,
    seed: int = 0,
    size: int = 160,
    num_classes: int | None = None,
    val_fraction: float = 0.25,
    progress: bool = False,
    style: str = "default",
) -> dict:
    """Write a synthetic data set in the PASCAL VOC layout under `out`.

    Writes JPEGImages/<id>.jpg, SegmentationClass/<id>.png (palette PNG),
    ImageSets/Segmentation/{train,val}.txt, psa_dataset.json (class names, generator
    parameters with the style, the set's `statistics`) and image_labels.json
    ({id: [class name, ...]}). Ids are syn_00000, .... `num_classes` None: the style's.
    `out` may be missing, empty, or an earlier output of this generator (overwritten; its
    images beyond `num_images` are removed). Returns a summary: out, style, num_images,
    num_train, num_val, classes, statistics.
    """
    if style not in STYLES:
        raise PsaError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    num_classes = STYLES[style].num_classes if num_classes is None else num_classes
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 2:
        raise ValueError(f"num_images must be an integer >= 2, got {num_images!r}")
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size!r}")
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    out = Path(out)
    _check_output_dir(out)

    classes = ["background", *CLASS_NAMES[:num_classes]]
    params = {
        "name": GENERATOR,
        "version": VERSION,
        "style": style,
        "seed": seed,
        "size": size,
        "num_classes": num_classes,
        "num_images": num_images,
        "val_fraction": val_fraction,
    }
    ids = [f"syn_{i:05d}" for i in range(num_images)]
    img_dir, seg_dir, set_dir = out / "JPEGImages", out / "SegmentationClass", out / "ImageSets"
    for d in (img_dir, seg_dir, set_dir / "Segmentation"):
        d.mkdir(parents=True, exist_ok=True)
    # psa_dataset.json goes first: it marks the folder as ours, so an interrupted run can be
    # re-run into the same folder. The split and label files go last: a reader finds them only
    # once every image exists.
    meta = {"name": "synthetic", "classes": classes, "generator": params}
    _write_text(out / "psa_dataset.json", _dumps(meta))
    _remove_stale(img_dir, ".jpg", set(ids))
    _remove_stale(seg_dir, ".png", set(ids))

    items = enumerate(ids)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=num_images, desc="make-synthetic", unit="img")
    image_labels = {}
    measured = []
    for i, name in items:
        r = render_image(np.random.default_rng([seed, i]), size, num_classes, style)
        measured.append(_measure(r))
        buf = io.BytesIO()
        Image.fromarray(r.image).save(buf, format="JPEG", quality=95)
        _write_bytes(img_dir / f"{name}.jpg", buf.getvalue())
        save_label_png(seg_dir / f"{name}.png", r.label)
        image_labels[name] = [classes[c] for c in sorted(set(r.classes))]

    stats = _summarise(measured)
    _write_text(out / "psa_dataset.json", _dumps({**meta, "statistics": stats}))
    # A split that depends only on (seed, num_images, val_fraction); both halves non-empty.
    num_val = min(max(round(val_fraction * num_images), 1), num_images - 1)
    order = np.random.default_rng([seed, num_images, 7]).permutation(num_images)
    val = sorted(ids[j] for j in order[:num_val])
    train = sorted(set(ids) - set(val))
    _write_text(set_dir / "Segmentation" / "train.txt", "".join(f"{n}\n" for n in train))
    _write_text(set_dir / "Segmentation" / "val.txt", "".join(f"{n}\n" for n in val))
    _write_text(out / "image_labels.json", _dumps(image_labels))  # last: the set is complete
    return {
        "out": str(out),
        "style": style,
        "num_images": num_images,
        "num_train": len(train),
        "num_val": len(val),
        "classes": classes,
        "statistics": stats,
    }


def render_image(
    rng: np.random.Generator,
    size: int = 160,
    num_classes: int = 6,
    style: str | Style = "default",
) -> Rendered:
    """Draw one image: background, objects, ground truth (see the module docstring)."""
    st = STYLES[style] if isinstance(style, str) else style
    lo, hi = round((1 - SIZE_JITTER) * size), round((1 + SIZE_JITTER) * size)
    h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    canvas = _background(rng, h, w) if st.background == "photo" else _plain_background(rng, h, w)

    layout = None
    for _ in range(MAX_LAYOUT_TRIES):
        layout = _sample_layout(rng, h, w, num_classes, st)
        if _layout_ok(layout, h, w, st):
            break
    else:
        # Practically unreachable; one object inside the image always passes.
        layout = _sample_layout(rng, h, w, num_classes, st, num_objects=1)

    instance = np.zeros((h, w), np.uint8)
    head = np.zeros((h, w), bool)
    for j, obj in enumerate(layout):
        sl, inner = _clip(obj, h, w)
        col = _paint(rng, obj, st)
        a = np.maximum(obj.body_alpha, obj.head_alpha)[inner][..., None]
        canvas[sl] = canvas[sl] * (1 - a) + col[inner] * a
        inside = obj.body[inner] | obj.head[inner]
        instance[sl][inside] = j + 1
        head[sl][inside] = obj.head[inner][inside]

    # Sensor-like grain, so that flat regions are not perfectly flat after JPEG.
    canvas += rng.normal(0.0, 2.0, canvas.shape).astype(np.float32)
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    classes = tuple(obj.cls for obj in layout)
    lut = np.array((0, *classes), np.uint8)
    label = _ignore_band(lut[instance])
    return Rendered(image, label, instance, head, classes)


def statistics(rendered: Iterable[Rendered]) -> dict:
    """What a set of images holds, for comparing styles: means over images of the foreground
    share (object pixels / pixels), objects and distinct classes per image; over objects, of
    the part share (visible head pixels / visible object pixels; None without heads) and the
    visible extent (the larger side of its visible box / the image's shorter side)."""
    return _summarise([_measure(r) for r in rendered])


def _measure(r: Rendered) -> dict:
    side = min(r.instance.shape)
    parts, extents = [], []
    for j in range(len(r.classes)):
        mine = r.instance == j + 1
        ys, xs = np.nonzero(mine)
        extents.append((max(np.ptp(ys), np.ptp(xs)) + 1) / side)
        parts.append((r.head & mine).sum() / mine.sum())
    return {
        "foreground": float((r.instance > 0).mean()),
        "objects": len(r.classes),
        "classes": len(set(r.classes)),
        "parts": parts if r.head.any() else [],
        "extents": extents,
    }


def _summarise(measured: list[dict]) -> dict:
    parts = [p for m in measured for p in m["parts"]]
    objects = [m["objects"] for m in measured]

    def mean(values) -> float:
        return round(float(np.mean(values)), 4)

    return {
        "images": len(measured),
        "foreground_share": mean([m["foreground"] for m in measured]),
        "objects_per_image": mean(objects),
        "objects_per_image_range": [min(objects), max(objects)],
        "classes_per_image": mean([m["classes"] for m in measured]),
        "part_share": mean(parts) if parts else None,
        "part_share_range": [round(float(min(parts)), 4), round(float(max(parts)), 4)]
        if parts
        else None,
        "object_extent": mean([e for m in measured for e in m["extents"]]),
    }


# --------------------------------------------------------------------------- backgrounds


@lru_cache(maxsize=1)
def _photos() -> tuple[Image.Image, ...]:
    """The scikit-image photos, loaded once per process (RGB or L)."""
    folder = resources.files("skimage.data")
    photos = []
    for name in PHOTOS:
        path = folder / name
        if not path.is_file():
            raise PsaError(f"scikit-image photo {name} not found in {folder}")
        with Image.open(path) as im:
            photos.append(im.convert("L" if im.mode in ("L", "I", "1") else "RGB"))
    return tuple(photos)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 in [0, 255]: a colour-shifted photo crop, fractal noise, or a blend."""
    kind = rng.random()
    if kind < 0.25:
        return _noise_background(rng, h, w)
    bg = _photo_background(rng, h, w)
    if kind < 0.45:
        m = rng.uniform(0.2, 0.5)
        bg = (1 - m) * bg + m * _noise_background(rng, h, w)
    return bg


def _photo_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    photos = _photos()
    photo = photos[rng.integers(len(photos))]
    pw, ph = photo.size
    # A crop with the output's aspect ratio, 30-100% of what fits, then resampled to (h, w).
    fit = min(pw / w, ph / h)
    cw, ch = w * fit * rng.uniform(0.3, 1.0), h * fit * rng.uniform(0.3, 1.0)
    ch = cw * h / w if rng.random() < 0.7 else ch  # mostly keep the aspect, sometimes squash
    cw, ch = min(cw, pw), min(ch, ph)
    x0, y0 = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
    crop = photo.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a = np.asarray(crop, np.float32)
    if a.ndim == 2:
        # Grey photo: map grey levels onto a random dark-to-light colour ramp.
        dark, light = _rand_rgb(rng, 0.0, 0.6, 0.05, 0.35), _rand_rgb(rng, 0.0, 0.5, 0.6, 1.0)
        return dark + (a[..., None] / 255.0) * (light - dark)
    if rng.random() < 0.3:
        a = a[..., rng.permutation(3)]
    gain = rng.uniform(0.7, 1.2, 3).astype(np.float32)
    shift = rng.uniform(-30, 30, 3).astype(np.float32)
    return np.clip(a * gain + shift, 0, 255)


def _noise_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Fractal value noise through a random three-colour ramp: busy, photo-like clutter."""
    n = np.zeros((h, w), np.float32)
    for k, cell in enumerate((32, 16, 8, 4, 2)):
        n += 0.6**k * _value_noise(rng, h, w, cell)
    n = (n - n.min()) / max(float(n.max() - n.min()), 1e-6)
    c0, c1, c2 = (_rand_rgb(rng, 0.0, 0.7, 0.1, 0.95) for _ in range(3))
    t = n[..., None]
    return np.where(t < 0.5, c0 + 2 * t * (c1 - c0), c1 + (2 * t - 1) * (c2 - c1))


def _plain_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32: a two-colour ramp (a studio backdrop), or a photo crop blurred as
    if far out of focus."""
    if rng.random() < 0.5:
        c0 = _rand_rgb(rng, 0.0, 0.4, 0.3, 0.95)
        c1 = _rand_rgb(rng, 0.0, 0.4, 0.3, 0.95)
        ang = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        s = x * np.cos(ang) + y * np.sin(ang)
        t = ((s - s.min()) / max(float(np.ptp(s)), 1e-6))[..., None]
        return c0 + t * (c1 - c0)
    photo = np.clip(_photo_background(rng, h, w) + 0.5, 0, 255).astype(np.uint8)
    blur = ImageFilter.GaussianBlur(rng.uniform(0.03, 0.08) * min(h, w))
    return np.asarray(Image.fromarray(photo).filter(blur), np.float32)


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """(h, w) float32 in [0, 1]: a random grid every `cell` pixels, smoothly interpolated."""
    grid = rng.random((int(h / cell) + 3, int(w / cell) + 3), dtype=np.float32)

    def axis(n: int) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.arange(n) + rng.uniform(0, cell)) / cell
        i = pos.astype(np.int64)
        t = (pos - i).astype(np.float32)
        return i, t * t * (3 - 2 * t)  # smoothstep: no visible grid lines

    iy, ty = axis(h)
    ix, tx = axis(w)
    rows = grid[iy] * (1 - ty[:, None]) + grid[iy + 1] * ty[:, None]
    return rows[:, ix] * (1 - tx) + rows[:, ix + 1] * tx


# --------------------------------------------------------------------------- objects


@dataclass
class _Object:
    """One object rasterised on its own unclipped box (y0, x0) + (bh, bw)."""

    cls: int
    y0: int
    x0: int
    body_alpha: np.ndarray  # (bh, bw) float32, soft coverage of the body
    head_alpha: np.ndarray  # (bh, bw) float32, soft coverage of the head disc
    body: np.ndarray  # (bh, bw) bool, body pixels not covered by the head
    head: np.ndarray  # (bh, bw) bool
    u: np.ndarray  # (bh, bw) float32, pixel offsets along the body's long axis
    v: np.ndarray  # (bh, bw) float32, across it
    rho: np.ndarray  # (bh, bw) float32, radius relative to the body outline (1 = edge)
    hu: np.ndarray  # (bh, bw) float32, head-frame coordinates in head radii
    hv: np.ndarray


def _sample_layout(
    rng: np.random.Generator,
    h: int,
    w: int,
    num_classes: int,
    style: Style,
    num_objects: int | None = None,
) -> list[_Object]:
    """Objects of 1..len(style.class_p) distinct classes, each class used at least once, at
    most style.max_objects of them, in paint order."""
    k = int(rng.choice(np.arange(1, len(style.class_p) + 1), p=style.class_p))
    k = min(k, num_classes)
    n = int(rng.integers(k, style.max_objects + 1)) if num_objects is None else num_objects
    k = min(k, n)
    chosen = rng.choice(num_classes, size=k, replace=False) + 1
    cls = np.concatenate([chosen, rng.choice(chosen, size=n - k)])
    rng.shuffle(cls)
    side = min(h, w)
    objects: list[_Object] = []
    centres: list[tuple[float, float, float]] = []
    for c in cls:
        extent = rng.uniform(*style.extent) * side
        if centres and rng.random() < 0.5:
            # Next to an earlier object, so that occlusion actually happens.
            py, px, pe = centres[rng.integers(len(centres))]
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.35, 0.8) * (pe + extent) / 2
            cy, cx = py + dist * np.sin(ang), px + dist * np.cos(ang)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        # Keep the object centre far enough inside that at most ~10% of its box spills out.
        m = 0.4 * extent
        cy, cx = float(np.clip(cy, m, h - m)), float(np.clip(cx, m, w - m))
        centres.append((cy, cx, extent))
        objects.append(_make_object(rng, int(c), cy, cx, extent, style.head_share))
    return objects


def _make_object(
    rng: np.random.Generator,
    cls: int,
    cy: float,
    cx: float,
    extent: float,
    head_share: tuple[float, float] | None,
) -> _Object:
    """Body outline r(theta) = 1 + sum_k a_k cos(k theta + phi_k) on an elongated, rotated
    ellipse, and a head disc centred just inside the outline near one end of the long axis
    (none when ``head_share`` is None)."""
    ks = np.arange(2, 6)
    amp = rng.uniform(0, 0.22, ks.size) / ks * 2
    phase = rng.uniform(0, 2 * np.pi, ks.size)
    elong = rng.uniform(1.0, 1.8)
    rot = rng.uniform(0, 2 * np.pi)
    head_theta = rng.uniform(-0.6, 0.6) + np.pi * rng.integers(2)

    def outline(theta: np.ndarray) -> np.ndarray:
        return 1 + (amp * np.cos(np.multiply.outer(theta, ks) + phase)).sum(-1)

    # Head radius for the wanted head share: body area = pi R^2 e (1 + sum a^2 / 2), and about
    # 40% of the disc sticks out of the body.
    share = rng.uniform(*head_share) if head_share else 0.0
    body_area = np.pi * elong * (1 + 0.5 * float((amp**2).sum()))
    head_r = np.sqrt(share * body_area / (1 - 0.4 * share) / np.pi)  # in units of R
    hr = 0.85 * float(outline(np.array(head_theta)))
    head_u, head_v = hr * np.cos(head_theta) * elong, hr * np.sin(head_theta)

    # Scale R so that the larger side of the object's bounding box equals `extent`.
    t = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    r = outline(t)
    pu = np.concatenate([r * np.cos(t) * elong, head_u + head_r * np.cos(t)])
    pv = np.concatenate([r * np.sin(t), head_v + head_r * np.sin(t)])
    cos, sin = np.cos(rot), np.sin(rot)
    px, py = pu * cos - pv * sin, pu * sin + pv * cos
    radius = extent / max(np.ptp(px), np.ptp(py))

    y0 = int(np.floor(cy + radius * py.min())) - 2
    x0 = int(np.floor(cx + radius * px.min())) - 2
    bh = int(np.ceil(cy + radius * py.max())) + 3 - y0
    bw = int(np.ceil(cx + radius * px.max())) + 3 - x0
    dy = (np.arange(y0, y0 + bh, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x0 + bw, dtype=np.float32) + 0.5 - cx)[None, :]
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    ue = u / elong
    rho_abs = np.hypot(ue, v) / radius
    edge = outline(np.arctan2(v, ue)).astype(np.float32)
    rho = rho_abs / edge
    # (edge - rho_abs) * R is about the distance to the outline in pixels (exact along the
    # short axis); a one-pixel ramp anti-aliases the edge.
    body_alpha = np.clip((edge - rho_abs) * radius + 0.5, 0, 1)
    if head_share:
        hu, hv = (u / radius - head_u) / head_r, (v / radius - head_v) / head_r
        head_alpha = np.clip((1 - np.hypot(hu, hv)) * head_r * radius + 0.5, 0, 1)
        # The pattern on the head turns with the head's direction, plus a little jitter.
        ang = head_theta + rng.uniform(-0.3, 0.3)
        hu, hv = hu * np.cos(ang) + hv * np.sin(ang), -hu * np.sin(ang) + hv * np.cos(ang)
    else:  # a zero-radius head: the outline alone sets the extent
        hu = hv = head_alpha = np.zeros_like(u)
    head = head_alpha > 0.5
    return _Object(
        cls=cls,
        y0=y0,
        x0=x0,
        body_alpha=body_alpha.astype(np.float32),
        head_alpha=head_alpha.astype(np.float32),
        body=(body_alpha > 0.5) & ~head,
        head=head,
        u=u,
        v=v,
        rho=rho.astype(np.float32),
        hu=hu.astype(np.float32),
        hv=hv.astype(np.float32),
    )


def _clip(obj: _Object, h: int, w: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """The image slices covered by the object's box, and the matching slices of the box."""
    bh, bw = obj.head.shape
    ys, xs = max(obj.y0, 0), max(obj.x0, 0)
    ye, xe = min(obj.y0 + bh, h), min(obj.x0 + bw, w)
    image = (slice(ys, ye), slice(xs, xe))
    box = (slice(ys - obj.y0, ye - obj.y0), slice(xs - obj.x0, xe - obj.x0))
    return image, box


def _layout_ok(layout: list[_Object], h: int, w: int, style: Style) -> bool:
    """Every object shows enough head and body, and its head is a small share of what shows."""
    owner = np.zeros((h, w), np.int16)
    for j, obj in enumerate(layout):
        sl, inner = _clip(obj, h, w)
        owner[sl][obj.body[inner] | obj.head[inner]] = j + 1
    for j, obj in enumerate(layout):
        sl, inner = _clip(obj, h, w)
        mine = owner[sl] == j + 1
        # Denominators count the whole box, so parts outside the image count as hidden.
        head_vis = int((mine & obj.head[inner]).sum())
        body_vis = int((mine & obj.body[inner]).sum())
        if body_vis < MIN_BODY_VISIBLE * obj.body.sum():
            return False
        if style.head_share is None:
            continue
        if head_vis < MIN_HEAD_VISIBLE * obj.head.sum():
            return False
        share = head_vis / max(head_vis + body_vis, 1)
        lo, hi = style.visible_head_share
        if not lo <= share <= hi:
            return False
    return True


# --------------------------------------------------------------------------- appearance


def _paint(rng: np.random.Generator, obj: _Object, style: Style) -> np.ndarray:
    """(bh, bw, 3) float32 colours of the object box: body texture, head drawn over it."""
    body = _body_texture(rng, obj) if style.body == "shared" else _class_texture(rng, obj)
    # Soft shading (a lit, rounded body) and a darker rim, so that the body reads as one
    # surface with an edge, as real objects do.
    light = rng.uniform(0, 2 * np.pi)
    lu, lv = np.cos(light), np.sin(light)
    norm = np.maximum(np.hypot(obj.u, obj.v), 1e-6)
    facing = (obj.u * lu + obj.v * lv) / norm * np.minimum(obj.rho, 1)
    shade = 1.0 + 0.15 * facing - 0.2 * np.minimum(obj.rho, 1) ** 4
    body = body * shade[..., None]
    if style.head_share is None:
        return body
    head = _head_pattern(rng, obj)
    a = obj.head_alpha[..., None]
    return body * (1 - a) + head * a


def _body_texture(rng: np.random.Generator, obj: _Object) -> np.ndarray:
    """A class-independent texture in two muted colours from the shared body palette."""
    c1 = _rand_rgb(rng, 0.1, 0.5, 0.35, 0.85)
    c2 = _rand_rgb(rng, 0.1, 0.5, 0.25, 0.8)
    bh, bw = obj.u.shape
    style = rng.integers(4)
    if style == 0:  # smooth gradient across the body
        ang = rng.uniform(0, 2 * np.pi)
        s = obj.u * np.cos(ang) + obj.v * np.sin(ang)
        t = (s - s.min()) / max(float(np.ptp(s)), 1e-6)
    elif style == 1:  # stripes across the body, 6-14 px period
        ang = rng.uniform(0, np.pi)
        s = (obj.u * np.cos(ang) + obj.v * np.sin(ang)) / rng.uniform(6, 14)
        t = np.clip(0.5 + 1.5 * np.sin(2 * np.pi * s), 0, 1)
    elif style == 2:  # spots
        t = np.clip((_value_noise(rng, bh, bw, rng.uniform(4, 8)) - 0.55) * 6 + 0.5, 0, 1)
    else:  # mottled
        t = _value_noise(rng, bh, bw, rng.uniform(7, 14))
    return c1 + t[..., None].astype(np.float32) * (c2 - c1)


# Class textures in body coordinates (a, b) in units of the texture's period; > 0 means the
# second colour. Class k has texture (k - 1) % 6 in the class's hue.
_TEXTURES = (
    lambda a, b, n: np.sin(2 * np.pi * a),  # stripes
    lambda a, b, n: np.sin(2 * np.pi * a) * np.sin(2 * np.pi * b),  # checks
    lambda a, b, n: np.sin(2 * np.pi * np.hypot(a, b)),  # rings around a point of the body
    lambda a, b, n: np.sin(2 * np.pi * (a + 0.5 * np.abs(b % 2 - 1))),  # zigzag
    lambda a, b, n: n - 0.6,  # spots
    lambda a, b, n: 0.4 - np.minimum(np.abs(a % 1 - 0.5), np.abs(b % 1 - 0.5)) * 4,  # grid
)


def _class_texture(rng: np.random.Generator, obj: _Object) -> np.ndarray:
    """A class-specific texture in two colours of the class's hue, with per-instance jitter
    of hue, period, orientation and phase."""
    k = obj.cls - 1
    hue = (0.03 + 0.381966 * k) % 1.0 + rng.uniform(-0.03, 0.03)
    light = _hsv_rgb(hue, rng.uniform(0.3, 0.6), rng.uniform(0.7, 0.9))
    dark = _hsv_rgb(hue + rng.uniform(-0.05, 0.05), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.4))
    period = rng.uniform(6, 11)
    ang = rng.uniform(0, 2 * np.pi)
    u, v = obj.u - rng.uniform(-20, 20), obj.v - rng.uniform(-20, 20)
    a = (u * np.cos(ang) + v * np.sin(ang)) / period
    b = (-u * np.sin(ang) + v * np.cos(ang)) / period
    bh, bw = obj.u.shape
    noise = _value_noise(rng, bh, bw, period / 2)
    s = _TEXTURES[k % len(_TEXTURES)](a, b, noise)
    t = np.clip(0.5 + 1.5 * s, 0, 1)[..., None].astype(np.float32)
    return light + t * (dark - light)


# Head patterns in head-frame coordinates (hu, hv), in head radii; > 0 means second colour.
_PATTERNS = (
    lambda u, v, r, a: 0.45 - r,  # eye
    lambda u, v, r, a: np.sin(3.2 * np.pi * r),  # rings
    lambda u, v, r, a: np.sin(3.5 * np.pi * u),  # stripes
    lambda u, v, r, a: np.sin(2.6 * np.pi * u) * np.sin(2.6 * np.pi * v),  # checks
    lambda u, v, r, a: np.sin(5 * a),  # spokes
    lambda u, v, r, a: 0.3 - np.minimum(abs(u), abs(v)),  # cross
    lambda u, v, r, a: u,  # two-tone
    lambda u, v, r, a: 0.3 - np.hypot((u * 1.8 + 0.5) % 1 - 0.5, (v * 1.8 + 0.5) % 1 - 0.5),  # dots
)


def _head_pattern(rng: np.random.Generator, obj: _Object) -> np.ndarray:
    """The class's saturated colour and pattern, with small per-instance colour jitter."""
    k = obj.cls - 1
    hue = (0.03 + 0.381966 * k) % 1.0  # golden-ratio hues: well spread for any class count
    hue += rng.uniform(-0.015, 0.015)
    main = _hsv_rgb(hue, rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0))
    dark_second = (k // len(_PATTERNS)) % 2 == 0
    second = _hsv_rgb(hue, 0.3, 0.12) if dark_second else _hsv_rgb(hue, 0.08, 0.98)
    u, v = obj.hu, obj.hv
    s = _PATTERNS[k % len(_PATTERNS)](u, v, np.hypot(u, v), np.arctan2(v, u))
    t = np.clip(0.5 + 3.0 * s, 0, 1)[..., None].astype(np.float32)  # soft edges
    return main + t * (second - main)


def _rand_rgb(rng: np.random.Generator, s_lo: float, s_hi: float, v_lo: float, v_hi: float):
    """A random colour, (3,) float32 in [0, 255], hue uniform, saturation/value in range."""
    return _hsv_rgb(rng.random(), rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi))


def _hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    """(3,) float32 RGB in [0, 255] from HSV in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + (h % 1.0) * 6) % 6
    rgb = v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)
    return (255 * rgb).astype(np.float32)


def _ignore_band(label: np.ndarray) -> np.ndarray:
    """Mark both pixels of every 4-neighbour pair with different labels as 255 (VOC-like)."""
    band = np.zeros(label.shape, bool)
    dh = label[:, 1:] != label[:, :-1]
    dv = label[1:] != label[:-1]
    band[:, 1:] |= dh
    band[:, :-1] |= dh
    band[1:] |= dv
    band[:-1] |= dv
    out = label.copy()
    out[band] = IGNORE
    return out


# --------------------------------------------------------------------------- files


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PsaError(f"{out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        meta = json.loads((out / "psa_dataset.json").read_text())
        ours = meta["generator"]["name"] == GENERATOR
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise PsaError(
            f"{out}: directory is not empty and was not made by the synthetic generator "
            "(no psa_dataset.json from it); choose an empty or new folder"
        )


def _remove_stale(folder: Path, suffix: str, keep: set[str]) -> None:
    """Delete images of an earlier, larger run (only files named like ours)."""
    for p in folder.iterdir():
        if p.suffix == suffix and _ID.fullmatch(p.stem) and p.stem not in keep:
            p.unlink()


def _dumps(obj: object) -> str:
    return json.dumps(obj, indent=2) + "\n"


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode())


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = atomic_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)

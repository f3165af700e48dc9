"""Pictures a person can read (torch-free: numpy + Pillow): overlays, legends, grids.

* ``overlay`` / ``render_overlay``: the image with each foreground class tinted in its VOC
  colour, class outlines, and a legend strip below it naming the classes present (with their
  colour and pixel share). Background keeps the photo; 255 (ignore) is tinted VOC's cream.
* ``grid``: rows of equally tall panels under column titles (``psa show``, the demo).
* ``cam_heatmap``: the max over an image's class CAMs as a heat map over the grey image.

``psa_infer.show`` finds the files that ``psa show`` draws with these.

Text uses Pillow's bundled font (``ImageFont.load_default(size=...)``), so no system font is
needed. ``render_overlay`` returns the legend's layout (each name's text box) so callers and
tests can find the text in the picture.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from psa_infer.errors import PsaError
from psa_infer.palette import IGNORE, atomic_path, colorize, voc_colormap

ALPHA = 0.6  # weight of the class colour in a tinted pixel
TEXT = (20, 20, 20)
PAPER = (255, 255, 255)
EMPTY = (235, 235, 235)  # a grid cell with nothing to show
BORDER = (150, 150, 150)  # swatch borders (a black swatch on white stays visible)
OUTLINE = (255, 255, 255)  # region outlines
GAP = 2  # pixels between grid panels
_CMAP = voc_colormap()

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 and y1 exclusive


@functools.lru_cache(maxsize=16)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (its fixed bitmap font where FreeType is absent)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no sized default font
        return ImageFont.load_default()


def font_size_for(width: int, height: int) -> int:
    """Legend text size for an image: about 1/32 of its longer side, 12 to 22 px."""
    return int(np.clip(round(max(width, height) / 32), 12, 22))


# --- label maps on images --------------------------------------------------------------------


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError(f"label: expected (H, W) uint8, got {label.shape} {label.dtype}")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label: expected the image's size {image.shape[:2]}, got {label.shape}")


def boundaries(label: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another id (both sides of every boundary)."""
    b = np.zeros(label.shape, bool)
    dy = label[1:, :] != label[:-1, :]
    dx = label[:, 1:] != label[:, :-1]
    b[1:, :] |= dy
    b[:-1, :] |= dy
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    return b


def outline_width(width: int, height: int) -> int:
    """Outline thickness: 1 px for a longer side under 600 px, 2 under 1000, 3 under 1400…"""
    return 1 + max(0, max(width, height) - 200) // 400


def paint(image: np.ndarray, label: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """The image with the label drawn on it: (H, W, 3) uint8.

    A pixel of class c > 0 (or 255) becomes ``(1 - alpha) * image + alpha * colour(c)``;
    background pixels keep the image. Every class region is outlined in white on its own
    side of each boundary (``outline_width`` px): VOC's colours are dark for many classes
    (cat is (64, 0, 0)), and a white line shows where a region ends on any photo.
    """
    image, label = np.asarray(image), np.asarray(label)
    _check_pair(image, label)
    colour = colorize(label)
    out = image.astype(np.float32)
    tint = label != 0
    out[tint] = (1 - alpha) * out[tint] + alpha * colour[tint]
    out = np.rint(out).astype(np.uint8)
    edge = boundaries(label)
    for _ in range(outline_width(label.shape[1], label.shape[0]) - 1):
        edge = _grow(edge)
    out[edge & tint & (label != IGNORE)] = OUTLINE
    return out


def _grow(mask: np.ndarray) -> np.ndarray:
    """One step of 4-neighbour dilation."""
    g = mask.copy()
    g[1:] |= mask[:-1]
    g[:-1] |= mask[1:]
    g[:, 1:] |= mask[:, :-1]
    g[:, :-1] |= mask[:, 1:]
    return g


def cam_heatmap(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Max over the class CAMs (K, H, W) in [0, 1] as a heat map over the grey image."""
    h, w = image.shape[:2]
    if cam.ndim != 3 or cam.shape[1:] != (h, w):
        raise ValueError(f"cam: expected (K, {h}, {w}), got {cam.shape}")
    m = cam.max(axis=0) if len(cam) else np.zeros((h, w), np.float32)
    grey = image.astype(np.float32).mean(axis=2, keepdims=True)
    heat = _heat_colours(np.clip(m, 0.0, 1.0))
    return np.rint(0.35 * grey + 0.65 * heat).astype(np.uint8)


# A dark-to-bright ramp (black, purple, red, orange, pale yellow): high CAM reads as bright.
_RAMP_AT = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32
)


def _heat_colours(v: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(v, _RAMP_AT, _RAMP[:, c]) for c in range(3)], axis=-1)


# --- legends ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegendEntry:
    """One legend line as drawn: class id, name, the text written, and where."""

    class_id: int
    name: str
    text: str
    colour: tuple[int, int, int]
    swatch: Box
    origin: tuple[int, int]  # where the text was drawn (``ImageDraw.text`` anchor "la")
    text_box: Box  # the text's ink box (``ImageDraw.textbbox`` at ``origin``)


def class_name(class_id: int, class_names: Sequence[str] | None) -> str:
    """The name of an id: ``class_names[id]``; without names 'background' for 0 and
    'class <id>'; 'ignore' for 255."""
    if class_id == IGNORE:
        return "ignore"
    if class_names is not None and 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    return "background" if class_id == 0 else f"class {class_id}"


def legend_items(label: np.ndarray, class_names: Sequence[str] | None) -> list[tuple]:
    """(id, name, text) for each id present, in id order (ignore last); text has the share."""
    ids, counts = np.unique(label, return_counts=True)
    items = []
    for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
        share = 100.0 * c / label.size
        pct = f"{share:.0f}%" if share >= 0.5 else "<1%"
        name = class_name(i, class_names)
        items.append((i, name, f"{name} {pct}"))
    return items


def _layout_legend(
    items: Sequence[tuple], size: int, *, width: int | None = None, height: int | None = None
) -> tuple[list[LegendEntry], int, int]:
    """Place legend items in rows wrapping at ``width``, or (``height`` given) in columns
    wrapping at ``height``. Returns the entries and the (width, height) they fill, padding
    included."""
    f = font(size)
    pad, gap, sw = max(4, size // 3), max(6, size // 2), size
    line = size + max(4, size // 3)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries: list[LegendEntry] = []
    x, y, col_w, right, bottom = pad, pad, 0, pad, pad
    for cid, name, text in items:
        w = sw + gap // 2 + int(np.ceil(measure.textlength(text, font=f)))
        if height is None and x > pad and x + w + pad > (width or 0):  # next row
            x, y = pad, y + line
        if height is not None and y > pad and y + line + pad > height:  # next column
            x, y, col_w = x + col_w + gap, pad, 0
        sy = y + (line - sw) // 2
        origin = (x + sw + gap // 2, y + (line - size) // 2)
        box = tuple(int(v) for v in measure.textbbox(origin, text, font=f))
        colour = tuple(int(v) for v in _CMAP[cid])
        entries.append(LegendEntry(cid, name, text, colour, (x, sy, x + sw, sy + sw), origin, box))
        right, bottom = max(right, x + w), max(bottom, y + line)
        if height is None:
            x += w + gap
        else:
            col_w, y = max(col_w, w), y + line
    return entries, right + pad, bottom + pad


def _draw_legend(draw: ImageDraw.ImageDraw, entries: Sequence[LegendEntry], size: int) -> None:
    f = font(size)
    for e in entries:
        x0, y0, x1, y1 = e.swatch
        # Background is not tinted in the picture, so its swatch is empty, not black.
        fill = PAPER if e.class_id == 0 else e.colour
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill, outline=BORDER)
        draw.text(e.origin, e.text, font=f, fill=TEXT, anchor="la")


def legend_panel(
    items: Sequence[tuple], height: int, size: int = 12, heading: str | None = None
) -> tuple[np.ndarray, list[LegendEntry]]:
    """A legend ``height`` px tall (entries in columns), e.g. the last panel of a grid row;
    ``heading`` (e.g. the image id) is written above the entries, in grey."""
    pad, line = max(4, size // 3), size + max(4, size // 3)
    top = line if heading else 0
    entries, w, _ = _layout_legend(items, size, height=height - top)
    entries = [_shift(e, 0, top) for e in entries]
    im = Image.new("RGB", (w, height), PAPER)
    draw = ImageDraw.Draw(im)
    if heading:
        hw = int(np.ceil(draw.textlength(heading, font=font(size))))
        if hw + 2 * pad > w:
            im = Image.new("RGB", (hw + 2 * pad, height), PAPER)
            draw = ImageDraw.Draw(im)
        draw.text((pad, pad + (line - size) // 2), heading, font=font(size), fill=BORDER)
    _draw_legend(draw, entries, size)
    return np.asarray(im).copy(), entries


# --- overlays --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlay:
    """An overlay picture and where its parts are: the painted image at ``image_box``, the
    legend below it (``legend``: one entry per id present, with its text box)."""

    picture: np.ndarray  # (H', W', 3) uint8
    image_box: Box
    legend: tuple[LegendEntry, ...]
    font_size: int


def render_overlay(
    image: np.ndarray, label: np.ndarray, class_names: Sequence[str] | None
) -> Overlay:
    """``paint`` the label on the image and add a legend strip below (see ``overlay``).

    The legend stays below the image rather than over it, so it is readable on small images;
    the picture is widened (white) when the legend's widest entry does not fit the image.
    """
    painted = paint(image, label)
    h, w = label.shape
    size = font_size_for(w, h)
    items = legend_items(label, class_names)
    entries, need_w, strip_h = _layout_legend(items, size, width=w)
    width = max(w, need_w)
    # Entries were placed relative to the strip's top; move them below the image.
    entries = [_shift(e, 0, h) for e in entries]
    im = Image.new("RGB", (width, h + strip_h), PAPER)
    im.paste(Image.fromarray(painted), (0, 0))
    _draw_legend(ImageDraw.Draw(im), entries, size)
    return Overlay(np.asarray(im).copy(), (0, 0, w, h), tuple(entries), size)


def _shift(e: LegendEntry, dx: int, dy: int) -> LegendEntry:
    def mv(b):
        return tuple(v + (dx if i % 2 == 0 else dy) for i, v in enumerate(b))

    return LegendEntry(
        e.class_id, e.name, e.text, e.colour, mv(e.swatch), mv(e.origin), mv(e.text_box)
    )


def overlay(image: np.ndarray, label: np.ndarray, class_names: Sequence[str] | None) -> np.ndarray:
    """(H, W, 3) uint8 image + (H, W) uint8 label → (H', W', 3) uint8 picture.

    The image with each class tinted in its VOC colour (background untouched, 255 in cream),
    class outlines, and below it a legend of the ids present: colour swatch, name
    (``class_names[id]``, background first) and pixel share. H' > H; W' >= W.
    """
    return render_overlay(image, label, class_names).picture


def save_picture(path: str | os.PathLike, picture: np.ndarray) -> None:
    """Write an RGB picture atomically; the suffix picks the format (.png, .jpg/.jpeg).

    JPEG is written at quality 90 without chroma subsampling, so outlines and legend text
    keep their colour.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.ascontiguousarray(picture, np.uint8))
    tmp = atomic_path(path)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(tmp, format="JPEG", quality=90, subsampling=0)
    elif path.suffix.lower() == ".png":
        im.save(tmp, format="PNG", optimize=True)
    else:
        raise PsaError(f"{path}: expected a .png or .jpg file name for the picture")
    os.replace(tmp, path)


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    label: np.ndarray,
    class_names: Sequence[str] | None,
) -> None:
    """``overlay(image, label, class_names)`` written to ``path`` atomically (.jpg or .png)."""
    save_picture(path, overlay(image, label, class_names))


# --- grids -----------------------------------------------------------------------------------

TITLE_HEIGHT = 21  # the column-title strip of a grid


def fit_height(panel: np.ndarray, height: int, nearest: bool = False) -> np.ndarray:
    """Scale an (H, W[, C]) uint8 array to ``height`` rows, keeping its aspect ratio.

    ``nearest`` keeps values (label maps); else reductions average (BOX) and enlargements
    keep pixels sharp (NEAREST: a 64 px image shown at 160 px still shows its pixels).
    """
    if panel.shape[0] == height:
        return panel
    w = max(1, round(panel.shape[1] * height / panel.shape[0]))
    up = height > panel.shape[0]
    method = Image.Resampling.NEAREST if nearest or up else Image.Resampling.BOX
    im = Image.fromarray(np.ascontiguousarray(panel))
    return np.asarray(im.resize((w, height), method))


def paint_panel(image: np.ndarray, label: np.ndarray, height: int) -> np.ndarray:
    """``paint`` at panel size: image and label scaled first, so outlines stay 1 px."""
    return paint(fit_height(image, height), fit_height(label, height, nearest=True))


def cam_panel(image: np.ndarray, cam: np.ndarray, height: int) -> np.ndarray:
    """``cam_heatmap`` of (K, H, W) CAMs at panel size."""
    return fit_height(cam_heatmap(image, cam), height)


def classes_panel(
    labels: Sequence[np.ndarray],
    class_names: Sequence[str] | None,
    height: int,
    heading: str | None = None,
) -> np.ndarray:
    """The names (and colours) of the ids present in any of ``labels``, ``height`` px tall."""
    present = np.unique(np.concatenate([np.unique(x) for x in labels])).tolist()
    items = [(i, class_name(i, class_names), class_name(i, class_names)) for i in present]
    return legend_panel(items, height, heading=heading)[0]


def grid(
    rows: Sequence[Sequence[np.ndarray | None]], titles: Sequence[str], height: int = 160
) -> np.ndarray:
    """Panels (H, W, 3) uint8 in rows under column ``titles`` → one (H', W', 3) uint8 picture.

    Every panel is scaled to ``height`` px (``fit_height``; panels made at that height are
    kept as they are); a column is as wide as its widest panel, each panel centred in it,
    with ``GAP`` px between panels. ``None`` is an empty grey cell (nothing to show there).
    H' = TITLE_HEIGHT + rows * (height + GAP) + GAP.
    """
    ncol = len(titles)
    if any(len(r) != ncol for r in rows):
        raise ValueError(f"grid: expected {ncol} panels per row, got {[len(r) for r in rows]}")
    cells = [[None if p is None else fit_height(p, height) for p in r] for r in rows]
    col_w = [
        max([c[j].shape[1] for c in cells if c[j] is not None] + [height // 2]) for j in range(ncol)
    ]
    width = sum(col_w) + GAP * (ncol + 1)
    canvas = Image.new("RGB", (width, TITLE_HEIGHT + len(rows) * (height + GAP) + GAP), PAPER)
    draw = ImageDraw.Draw(canvas)
    f = font(13)
    x = GAP
    for j, t in enumerate(titles):
        draw.text((x + col_w[j] / 2, TITLE_HEIGHT / 2), t, font=f, fill=TEXT, anchor="mm")
        x += col_w[j] + GAP
    for i, line in enumerate(cells):
        y, x = TITLE_HEIGHT + i * (height + GAP), GAP
        for j, p in enumerate(line):
            if p is None:
                draw.rectangle((x, y, x + col_w[j] - 1, y + height - 1), fill=EMPTY)
                mid = (x + col_w[j] / 2, y + height / 2)
                draw.text(mid, "none", font=f, fill=BORDER, anchor="mm")
            else:
                canvas.paste(Image.fromarray(p), (x + (col_w[j] - p.shape[1]) // 2, y))
            x += col_w[j] + GAP
    return np.asarray(canvas).copy()

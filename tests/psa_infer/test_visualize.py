"""psa_infer.visualize on real photos (scikit-image's) with made-up label maps: the colours are
where the label says, outlines sit on boundaries, the legend writes exactly the classes present
(checked by rendering the same text), and grids have the layout they promise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from psa_infer.datasets import VOC_CLASSES, load_image
from psa_infer.errors import PsaError
from psa_infer.palette import voc_colormap
from psa_infer.visualize import (
    ALPHA,
    EMPTY,
    GAP,
    OUTLINE,
    PAPER,
    TEXT,
    TITLE_HEIGHT,
    boundaries,
    cam_heatmap,
    classes_panel,
    font,
    grid,
    legend_panel,
    outline_width,
    overlay,
    paint,
    paint_panel,
    render_overlay,
    save_overlay,
)

skimage = pytest.importorskip("skimage")
PHOTOS = Path(skimage.__file__).parent / "data"
CMAP = voc_colormap()
CAT, DOG, PERSON, MOTORBIKE, BOTTLE = 8, 12, 15, 14, 5


def made_up_label(shape, classes=(CAT, DOG), ignore=True) -> np.ndarray:
    """Background, a rectangle of the first class, an ellipse of the second overlapping it,
    and (``ignore``) a 255 band along the top."""
    h, w = shape
    label = np.zeros((h, w), np.uint8)
    label[h // 5 : 4 * h // 5, w // 8 : w // 2] = classes[0]
    yy, xx = np.mgrid[:h, :w]
    label[((yy - h / 2) / (h / 4)) ** 2 + ((xx - 0.6 * w) / (w / 5)) ** 2 < 1] = classes[1]
    if ignore:
        label[: max(2, h // 40)] = 255
    return label


# photo, its classes (the labels are made up: the point is the drawing, not the truth)
CASES = [
    ("chelsea.png", (CAT, DOG)),
    ("astronaut.png", (PERSON, BOTTLE)),
    ("motorcycle_left.png", (MOTORBIKE, PERSON)),
    ("camera.png", (PERSON, CAT)),  # greyscale
    ("logo.png", (BOTTLE, DOG)),  # RGBA, composed over white by load_image
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def photo(request):
    name, classes = request.param
    image = load_image(PHOTOS / name)
    return image, made_up_label(image.shape[:2], classes)


def near_boundary(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` 4-steps of a pixel of another id (where outlines may be)."""
    near = boundaries(label)
    for _ in range(width - 1):
        grown = near.copy()
        grown[1:] |= near[:-1]
        grown[:-1] |= near[1:]
        grown[:, 1:] |= near[:, :-1]
        grown[:, :-1] |= near[:, 1:]
        near = grown
    return near


def render_text(size, origin, text, font_size) -> np.ndarray:
    """The text as the legend should show it, drawn independently on white paper."""
    im = Image.new("RGB", size, PAPER)
    ImageDraw.Draw(im).text(origin, text, font=font(font_size), fill=TEXT, anchor="la")
    return np.asarray(im)


def test_paint_blends_each_class_colour_over_the_image(photo):
    image, label = photo
    out = paint(image, label)
    inner = ~near_boundary(label, outline_width(*label.shape[::-1]))
    for c in np.unique(label):
        m = (label == c) & inner
        img, got = image[m].astype(float), out[m].astype(float)
        if c == 0:  # background keeps the photo
            assert np.array_equal(got, img)
            continue
        col = CMAP[c].astype(float)
        lo, hi = np.minimum(img, col), np.maximum(img, col)
        assert np.all((got >= lo - 0.5) & (got <= hi + 0.5)), c  # between image and colour
        # exactly the blend, to rounding
        assert np.abs(got - ((1 - ALPHA) * img + ALPHA * col)).max() <= 0.5 + 1e-6
        # the tint moved the pixels towards the class colour
        assert np.abs(got - col).mean() < np.abs(img - col).mean()


def test_outlines_sit_on_the_class_side_of_every_boundary(photo):
    image, label = photo
    out = paint(image, label)
    edge = boundaries(label)
    cls = (label != 0) & (label != 255)
    white = np.all(out == OUTLINE, axis=2)
    assert edge.sum() > 0 and np.all(white[edge & cls])  # outlined
    assert np.array_equal(out[edge & (label == 0)], image[edge & (label == 0)])  # bg untouched
    # nowhere else: interior tints never reach white (VOC colours are at most 224)
    near = near_boundary(label, outline_width(*label.shape[::-1]))
    assert not np.any(white & ~near & cls)


def test_outlines_grow_with_the_image():
    label = made_up_label((500, 741), ignore=False)
    out = paint(np.zeros((500, 741, 3), np.uint8), label)
    white = np.all(out == OUTLINE, axis=2)
    row = white[250, : 741 // 2]  # crossing the rectangle's left edge (x = 741 // 8)
    x = 741 // 8
    assert row[x] and row[x + 1] and not row[x + 2] and not row[x - 1]  # 2 px, inside


def test_overlay_legend_names_exactly_the_classes_present(photo):
    image, label = photo
    o = render_overlay(image, label, VOC_CLASSES)
    pic = o.picture
    h, w = label.shape
    assert pic.dtype == np.uint8 and pic.shape[0] > h and pic.shape[1] >= w
    assert o.image_box == (0, 0, w, h)
    assert np.array_equal(pic[:h, :w], paint(image, label))
    want = ["background", *(VOC_CLASSES[c] for c in sorted(set(np.unique(label)) - {0, 255}))]
    assert [e.name for e in o.legend] == want + ["ignore"]
    assert o.font_size >= 12
    for e in o.legend:
        x0, y0, x1, y1 = e.text_box
        assert y0 >= h and x1 <= pic.shape[1] and y1 <= pic.shape[0]  # below the image
        share = 100 * np.mean(label == e.class_id)
        assert e.text.startswith(e.name + " ") and e.text.endswith("%")
        assert e.text == f"{e.name} {share:.0f}%" or (share < 0.5 and e.text.endswith("<1%"))
        crop = pic[y0:y1, x0:x1]
        expect = render_text(pic.shape[1::-1], e.origin, e.text, o.font_size)[y0:y1, x0:x1]
        assert np.array_equal(crop, expect), e.text  # the text is there, pixel for pixel
        assert (crop.min(axis=2) < 100).mean() > 0.05  # and it is ink, not paper
        other = render_text(pic.shape[1::-1], e.origin, "tvmonitor 99%", o.font_size)
        assert not np.array_equal(crop, other[y0:y1, x0:x1])  # the comparison can fail
        sx0, sy0, sx1, sy1 = e.swatch
        inside = pic[sy0 + 1 : sy1 - 1, sx0 + 1 : sx1 - 1].reshape(-1, 3)
        fill = PAPER if e.class_id == 0 else tuple(CMAP[e.class_id])
        assert np.all(inside == fill), e.name
    boxes = [e.text_box for e in o.legend] + [e.swatch for e in o.legend]
    for i, a in enumerate(boxes):  # no two legend parts overlap
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_legend_stays_readable_below_small_images():
    image = load_image(PHOTOS / "chelsea.png")[::2, ::2][:160, :160].copy()
    for w in (160, 40):
        img = np.ascontiguousarray(image[:, :w])
        label = made_up_label(img.shape[:2], (CAT, DOG))
        o = render_overlay(img, label, VOC_CLASSES)
        assert o.font_size >= 12
        # a wide entry widens the picture rather than being cut
        assert all(e.text_box[2] <= o.picture.shape[1] for e in o.legend)
        assert o.picture.shape[1] >= w
        assert len({e.text_box[1] for e in o.legend}) > 1  # wrapped onto several lines
        # the image itself is not covered by the legend
        h = img.shape[0]
        assert o.picture.shape[0] > h and o.image_box == (0, 0, w, h)
        assert np.array_equal(o.picture[:h, :w], paint(img, label))


def test_overlay_without_names_and_with_unknown_ids():
    img = np.full((40, 60, 3), 100, np.uint8)
    label = np.zeros((40, 60), np.uint8)
    label[10:30, 10:30] = 3
    names = [e.name for e in render_overlay(img, label, None).legend]
    assert names == ["background", "class 3"]
    label[0, 0] = 40  # beyond the names given
    names = [e.name for e in render_overlay(img, label, ("background", "a", "b", "c")).legend]
    assert names == ["background", "c", "class 40"]


def test_save_overlay_writes_png_and_jpeg_atomically(tmp_path):
    image = load_image(PHOTOS / "chelsea.png")
    label = made_up_label(image.shape[:2])
    want = overlay(image, label, VOC_CLASSES)
    save_overlay(tmp_path / "o" / "a.png", image, label, VOC_CLASSES)
    save_overlay(tmp_path / "o" / "a.jpg", image, label, VOC_CLASSES)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.jpg", "a.png"]  # no tmp
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / "a.png")), want)
    jpg = np.asarray(Image.open(tmp_path / "o" / "a.jpg").convert("RGB")).astype(int)
    assert jpg.shape == want.shape and np.abs(jpg - want).mean() < 3  # JPEG q90, 4:4:4
    with pytest.raises(PsaError, match=r"a\.gif: expected a \.png or \.jpg"):
        save_overlay(tmp_path / "a.gif", image, label, VOC_CLASSES)


def test_paint_names_the_array_that_does_not_fit():
    img = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match=r"label: expected the image's size \(10, 12\)"):
        paint(img, np.zeros((12, 10), np.uint8))
    with pytest.raises(ValueError, match=r"label: expected \(H, W\) uint8, got \(10, 12\) int64"):
        paint(img, np.zeros((10, 12), np.int64))
    with pytest.raises(ValueError, match=r"image: expected \(H, W, 3\) uint8"):
        paint(img[..., 0], np.zeros((10, 12), np.uint8))


def test_cam_heatmap_is_brighter_where_a_class_fires():
    image = load_image(PHOTOS / "astronaut.png")[::4, ::4].copy()
    h, w = image.shape[:2]
    cam = np.zeros((2, h, w), np.float32)
    cam[0, : h // 2, : w // 2] = 1.0  # class A top left
    cam[1, h // 2 :, w // 2 :] = 0.6  # class B bottom right, weaker
    heat = cam_heatmap(image, cam).astype(float).sum(axis=2)
    tl, br = heat[: h // 2, : w // 2].mean(), heat[h // 2 :, w // 2 :].mean()
    cold = heat[h // 2 :, : w // 2].mean()
    assert tl > br > cold  # the max over classes, bright where high
    assert cam_heatmap(image, cam[:0]).shape == image.shape  # no class: all cold
    with pytest.raises(ValueError, match=r"cam: expected \(K, 128, 128\)"):
        cam_heatmap(image, cam[:, :10])


def test_grid_layout_titles_and_empty_cells():
    a = np.full((50, 100, 3), 10, np.uint8)  # scaled to 80 x 160
    b = np.full((80, 40, 3), 200, np.uint8)  # already 80 tall
    pic = grid([[a, b], [b, None]], ["left", "right"], height=80)
    assert pic.shape == (TITLE_HEIGHT + 2 * (80 + GAP) + GAP, GAP + 160 + GAP + 40 + GAP, 3)
    y0 = TITLE_HEIGHT
    assert np.all(pic[y0 : y0 + 80, GAP : GAP + 160] == 10)  # a, scaled, left column
    x = GAP + (160 - 40) // 2  # b centred in the left column of row 2
    assert np.all(pic[y0 + 82 : y0 + 162, x : x + 40] == 200)
    right = pic[y0 + 82 : y0 + 162, GAP + 160 + GAP : GAP + 160 + GAP + 40]
    assert (np.all(right == EMPTY, axis=2)).mean() > 0.8  # the empty cell
    for x0, x1 in ((GAP, GAP + 160), (GAP + 160 + GAP, pic.shape[1])):
        assert (pic[:TITLE_HEIGHT, x0:x1].min(axis=2) < 100).any()  # a title over each column
    with pytest.raises(ValueError, match="expected 2 panels per row"):
        grid([[a]], ["left", "right"])


def test_panels_keep_outlines_thin_and_legends_name_the_union():
    image = load_image(PHOTOS / "chelsea.png")
    label = made_up_label(image.shape[:2], ignore=False)
    p = paint_panel(image, label, 100)
    assert p.shape[0] == 100 and abs(p.shape[1] - 150) <= 1
    white = np.all(p == OUTLINE, axis=2)
    assert 0 < white.mean() < 0.1  # outlines drawn at panel size, 1 px
    truth = np.zeros_like(label)
    truth[:10, :10] = PERSON
    leg, entries = legend_panel([(0, "background", "background")], 100, heading="img_1")
    assert leg.shape[0] == 100 and entries[0].text_box[1] > 12  # below the heading
    panel = classes_panel([label, truth], VOC_CLASSES, 100)
    assert panel.shape[0] == 100
    # every colour of the union (cat, dog, person) has its swatch in the panel
    for c in (CAT, DOG, PERSON):
        assert np.all(panel == CMAP[c], axis=2).sum() >= 9 * 9, VOC_CLASSES[c]
    assert not np.all(panel == CMAP[BOTTLE], axis=2).any()

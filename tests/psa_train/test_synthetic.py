"""The synthetic benchmark: layout, determinism, ground truth, and the properties the method
needs (a small class-specific head, class-agnostic bodies)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psa_infer.errors import PsaError
from psa_infer.palette import load_label_png
from psa_train.config import DemoConfig
from psa_train.synthetic import CLASS_NAMES, STYLES, make_synthetic, render_image, statistics

NUM_CLASSES = 4


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("syn") / "data"
    summary = make_synthetic(out, num_images=12, seed=3, size=96, num_classes=NUM_CLASSES)
    return out, summary


@pytest.fixture(scope="module")
def rendered() -> list:
    """Enough objects for the class statistics: ~150 objects from 80 in-memory images."""
    return [render_image(np.random.default_rng([11, i]), 96, NUM_CLASSES) for i in range(80)]


def test_layout_and_summary(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    ids = [f"syn_{i:05d}" for i in range(12)]
    for i in ids:
        assert (out / "JPEGImages" / f"{i}.jpg").is_file()
        assert (out / "SegmentationClass" / f"{i}.png").is_file()
    train = (out / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (out / "ImageSets/Segmentation/val.txt").read_text().split()
    assert sorted(train + val) == ids and not set(train) & set(val)
    assert len(val) == 3  # round(0.25 * 12)
    meta = json.loads((out / "psa_dataset.json").read_text())
    assert meta["name"] == "synthetic"
    assert meta["classes"] == ["background", *CLASS_NAMES[:NUM_CLASSES]]
    assert meta["generator"]["seed"] == 3 and meta["generator"]["size"] == 96
    assert summary["num_train"] == 9 and summary["num_val"] == 3
    assert summary["classes"] == meta["classes"]
    assert set(json.loads((out / "image_labels.json").read_text())) == set(ids)
    assert not list(out.rglob(".*")), "temporary files left behind"


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_synthetic(a, num_images=3, seed=5, size=64, num_classes=3)
    make_synthetic(b, num_images=3, seed=5, size=64, num_classes=3)
    make_synthetic(c, num_images=3, seed=6, size=64, num_classes=3)
    fa, fc = _files(a), _files(c)
    assert fa == _files(b)
    assert fa["JPEGImages/syn_00000.jpg"] != fc["JPEGImages/syn_00000.jpg"]
    assert fa["SegmentationClass/syn_00000.png"] != fc["SegmentationClass/syn_00000.png"]


def test_masks_are_palette_pngs_matching_images_and_labels(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    names = json.loads((out / "psa_dataset.json").read_text())["classes"]
    image_labels = json.loads((out / "image_labels.json").read_text())
    for name, labelled in image_labels.items():
        png = Image.open(out / "SegmentationClass" / f"{name}.png")
        assert png.mode == "P"
        mask = load_label_png(out / "SegmentationClass" / f"{name}.png")
        jpg = Image.open(out / "JPEGImages" / f"{name}.jpg")
        assert jpg.mode == "RGB" and jpg.size == (mask.shape[1], mask.shape[0])
        values = set(np.unique(mask).tolist())
        assert values <= set(range(NUM_CLASSES + 1)) | {255}
        assert 255 in values and 0 in values  # the ignore band and some background
        present = sorted(names[v] for v in values - {0, 255})
        assert sorted(labelled) == present


def test_labels_match_objects_and_every_head_shows(rendered: list) -> None:
    for r in rendered:
        present = set(np.unique(r.label).tolist()) - {0, 255}
        assert present == set(r.classes)
        for j in range(len(r.classes)):
            assert (r.head & (r.instance == j + 1)).sum() > 0
        # Labels are the instance map through the object classes, except on the ignore band.
        lut = np.array((0, *r.classes), np.uint8)
        keep = r.label != 255
        assert np.array_equal(r.label[keep], lut[r.instance][keep])
        assert 0 < (r.label == 255).mean() < 0.2


def test_image_sizes_vary_and_are_not_all_multiples_of_8(rendered: list) -> None:
    shapes = {r.image.shape[:2] for r in rendered}
    assert len(shapes) > 20
    hs, ws = zip(*shapes, strict=True)
    assert min(hs + ws) >= round(0.85 * 96) and max(hs + ws) <= round(1.15 * 96)
    assert any(h % 8 or w % 8 for h, w in shapes)


def _objects_touch(instance: np.ndarray) -> bool:
    a, b = instance[:, 1:], instance[:, :-1]
    c, d = instance[1:], instance[:-1]
    return bool(((a != b) & (a > 0) & (b > 0)).any() or ((c != d) & (c > 0) & (d > 0)).any())


def test_object_counts_classes_and_scales_vary(rendered: list) -> None:
    counts = [len(r.classes) for r in rendered]
    assert set(counts) == {1, 2, 3}
    assert any(len(set(r.classes)) < len(r.classes) for r in rendered)  # repeated class
    assert any(len(set(r.classes)) == 3 for r in rendered)
    assert {c for r in rendered for c in r.classes} == set(range(1, NUM_CLASSES + 1))
    # Objects overlap or touch in a fair share of images (4-neighbour contact of two ids).
    touching = sum(_objects_touch(r.instance) for r in rendered)
    assert touching > 5
    extents = []
    for r in rendered:
        for j in range(len(r.classes)):
            ys, xs = np.nonzero(r.instance == j + 1)
            extents.append((max(np.ptp(ys), np.ptp(xs)) + 1) / min(r.image.shape[:2]))
    assert 0.2 < min(extents) < 0.5 and 0.75 < max(extents) <= 0.9  # visible extent


def test_head_is_a_small_share_of_each_object(rendered: list) -> None:
    shares = [
        (r.head & (r.instance == j + 1)).sum() / (r.instance == j + 1).sum()
        for r in rendered
        for j in range(len(r.classes))
    ]
    assert 0.05 <= min(shares) and max(shares) <= 0.25
    assert 0.08 <= float(np.mean(shares)) <= 0.15


def _mean_colours(rendered: list, part: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) mean RGB of each object's visible head or body, and (n,) its class."""
    colours, classes = [], []
    for r in rendered:
        for j, c in enumerate(r.classes):
            vis = r.instance == j + 1
            m = vis & r.head if part == "head" else vis & ~r.head
            colours.append(r.image[m].mean(0))
            classes.append(c)
    return np.array(colours), np.array(classes)


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-half-out: centroids from even samples, accuracy on odd ones."""
    fit, test = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    labels = np.unique(y)
    centroids = np.stack([x[fit & (y == c)].mean(0) for c in labels])
    d = ((x[test][:, None] - centroids[None]) ** 2).sum(-1)
    return float((labels[d.argmin(1)] == y[test]).mean())


def test_head_colour_tells_the_class_and_body_colour_does_not(rendered: list) -> None:
    head_acc = _nearest_centroid_accuracy(*_mean_colours(rendered, "head"))
    body_acc = _nearest_centroid_accuracy(*_mean_colours(rendered, "body"))
    chance = 1 / NUM_CLASSES
    assert head_acc > 0.8, head_acc
    # Bodies come from one class-independent pool: near chance (binomial noise on ~75 samples).
    assert body_acc < chance + 0.2, body_acc
    # And the spread of body colours within a class dwarfs the distance between class means.
    body, cls = _mean_colours(rendered, "body")
    means = np.stack([body[cls == c].mean(0) for c in range(1, NUM_CLASSES + 1)])
    within = np.mean([body[cls == c].std(0).mean() for c in range(1, NUM_CLASSES + 1)])
    assert np.ptp(means, axis=0).max() < within


def test_regenerating_into_own_output_replaces_it(tmp_path: Path) -> None:
    out = tmp_path / "d"
    make_synthetic(out, num_images=4, seed=0, size=64, num_classes=2)
    make_synthetic(out, num_images=2, seed=0, size=64, num_classes=2)
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == [
        "syn_00000.jpg",
        "syn_00001.jpg",
    ]
    assert len(json.loads((out / "image_labels.json").read_text())) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_images": 1}, r"num_images must be an integer >= 2, got 1"),
        ({"num_images": 4, "size": 63}, r"size must be >= 64 pixels, got 63"),
        ({"num_images": 4, "num_classes": 0}, r"num_classes must be in 1\.\.20, got 0"),
        ({"num_images": 4, "num_classes": 21}, r"num_classes must be in 1\.\.20, got 21"),
        ({"num_images": 4, "val_fraction": 1.0}, r"val_fraction must be in \(0, 1\), got 1\.0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_synthetic(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_foreign_output_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"directory is not empty and was not made by the synth"):
        make_synthetic(tmp_path / "d", num_images=2)
    (tmp_path / "f").write_text("a file")
    with pytest.raises(ValueError, match=r"exists and is not a directory"):
        make_synthetic(tmp_path / "f", num_images=2)
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------- styles

# sha256 over (image, label, instance, head, classes) of render_image(default_rng([5, i])) for
# i = 0, 1, 2 at 64 px with 3 classes and i = 3, 4, 5 at 160 px with 6, recorded with the
# generator as it was before styles (commit 4bc0d75; numpy 2.4, x86-64). Arrays, not files:
# JPEG and PNG bytes also depend on the Pillow and zlib builds.
DEFAULT_DIGEST = "eb8a80105639aa64ef816c7a736106e7d40ca778b2b99decf07257fcbcd08bc0"


def test_default_style_draws_what_the_generator_drew_before_styles() -> None:
    import hashlib

    h = hashlib.sha256()
    for i in range(6):
        size, k = (64, 3) if i < 3 else (160, 6)
        r = render_image(np.random.default_rng([5, i]), size, k, "default")
        for a in (r.image, r.label, r.instance, r.head):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(bytes(r.classes))
    assert h.hexdigest() == DEFAULT_DIGEST


def test_style_names_match_the_config() -> None:
    assert tuple(STYLES) == DemoConfig.styles
    assert all(name == s.name for name, s in STYLES.items())


@pytest.fixture(scope="module")
def styled() -> dict[str, list]:
    """40 images of 128 px per style (seed 0), each style with its own class count."""
    return {
        name: [
            render_image(np.random.default_rng([0, i]), 128, st.num_classes, name)
            for i in range(40)
        ]
        for name, st in STYLES.items()
    }


# (foreground share, mean objects per image, mean part share or None, mean object extent):
# ranges around what 400 images of 160 px give (the table in psa_train/synthetic.py), wide
# enough for 40 images of 128 px.
STYLE_RANGES = {
    "default": ((0.22, 0.38), (1.4, 2.1), (0.10, 0.14), (0.50, 0.66)),
    "parts": ((0.22, 0.38), (1.4, 2.1), (0.045, 0.065), (0.50, 0.66)),
    "textured": ((0.30, 0.45), (1.3, 1.8), None, (0.62, 0.75)),
    "many": ((0.08, 0.16), (2.4, 3.6), (0.10, 0.14), (0.23, 0.33)),
    "plain": ((0.22, 0.38), (1.4, 2.1), (0.10, 0.14), (0.50, 0.66)),
    "small": ((0.05, 0.12), (1.4, 2.6), (0.10, 0.14), (0.23, 0.33)),
    "classes12": ((0.22, 0.38), (1.4, 2.1), (0.10, 0.14), (0.50, 0.66)),
}


@pytest.mark.parametrize("name", list(STYLES))
def test_each_style_has_its_statistics(styled: dict, name: str) -> None:
    st = STYLES[name]
    rendered = styled[name]
    stats = statistics(rendered)
    fg, objects, part, extent = STYLE_RANGES[name]
    assert fg[0] <= stats["foreground_share"] <= fg[1], stats
    assert objects[0] <= stats["objects_per_image"] <= objects[1], stats
    assert 1 <= stats["objects_per_image_range"][0]
    assert stats["objects_per_image_range"][1] <= st.max_objects
    assert extent[0] <= stats["object_extent"] <= extent[1], stats
    if part is None:
        assert stats["part_share"] is None and not any(r.head.any() for r in rendered)
    else:
        assert part[0] <= stats["part_share"] <= part[1], stats
        lo, hi = stats["part_share_range"]
        assert st.visible_head_share[0] <= lo and hi <= st.visible_head_share[1]
    # every class of the style's count turns up in 40 images
    assert {c for r in rendered for c in r.classes} == set(range(1, st.num_classes + 1))


def test_textured_bodies_tell_the_class(styled: dict) -> None:
    colours, classes = [], []
    for r in styled["textured"]:
        for j, c in enumerate(r.classes):
            colours.append(r.image[r.instance == j + 1].mean(0))
            classes.append(c)
    # The shared bodies of the default style are near chance here (test above); these carry
    # their class's hue over the whole object.
    assert _nearest_centroid_accuracy(np.array(colours), np.array(classes)) > 0.8


def _background_detail(rendered: list) -> float:
    """Mean absolute difference of horizontally adjacent background pixels (grey levels)."""
    diffs = []
    for r in rendered:
        g = r.image.astype(np.float32).mean(-1)
        bg = (r.label[:, 1:] == 0) & (r.label[:, :-1] == 0)
        diffs.append(np.abs(np.diff(g, axis=1))[bg].mean())
    return float(np.mean(diffs))


@pytest.mark.parametrize("name", ["many", "plain"])
def test_plain_backgrounds(styled: dict, name: str) -> None:
    # Plain ramps and blurred photos carry less detail than photo crops and fractal noise;
    # the grain (sigma 2) keeps both above zero.
    assert _background_detail(styled[name]) < 0.5 * _background_detail(styled["default"])


def test_style_and_statistics_are_recorded(tmp_path: Path) -> None:
    info = make_synthetic(tmp_path / "d", num_images=4, seed=1, size=64, style="many")
    meta = json.loads((tmp_path / "d" / "psa_dataset.json").read_text())
    assert meta["generator"]["style"] == "many" and info["style"] == "many"
    assert meta["generator"]["num_classes"] == 12 and len(meta["classes"]) == 13
    assert meta["statistics"] == info["statistics"]
    assert meta["statistics"]["images"] == 4
    with pytest.raises(PsaError, match=r"style must be one of default, parts, .*, classes12"):
        make_synthetic(tmp_path / "e", num_images=4, style="cartoon")

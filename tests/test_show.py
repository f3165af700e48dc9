"""`psa show` and `psa label --overlay` through the CLI, on scikit-image's photos and on the
synthetic set: what the grid holds, where its images come from, and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from psa_infer.datasets import load_image, open_dataset
from psa_infer.palette import load_label_png, save_label_png, voc_colormap
from psa_infer.show import show_grid, show_rows
from psa_infer.visualize import EMPTY, GAP, TITLE_HEIGHT, fit_height, paint, render_overlay
from tests.psa_infer.test_visualize import made_up_label

skimage = pytest.importorskip("skimage")
PHOTOS = Path(skimage.__file__).parent / "data"
CMAP = voc_colormap()


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args) -> str:
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return r.output


def one_line_error(r, code: int = 1) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    return errors[0]


@pytest.fixture
def photos(tmp_path):
    """Four photos (RGB, greyscale, RGBA) in a folder and made-up label maps for them."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    for name in ("astronaut.png", "camera.png", "chelsea.png", "logo.png"):
        shutil.copy(PHOTOS / name, images / name)
        img = load_image(images / name)
        save_label_png(labels / name, made_up_label(img.shape[:2], (15, 8)))
    return images, labels


def test_show_photos_folder_through_cli_is_the_api_grid(photos, tmp_path):
    images, labels = photos
    out = tmp_path / "grid.png"
    assert "wrote" in ok("show", labels, "--images", images, "-o", out, "--height", 120)
    pic = np.asarray(Image.open(out))
    shown = show_rows(labels, images)
    assert [r.id for r in shown.rows] == ["astronaut", "camera", "chelsea", "logo"]
    assert np.array_equal(pic, show_grid(shown, 120))  # the command draws what the API draws
    assert pic.shape[0] == TITLE_HEIGHT + 4 * (120 + GAP) + GAP
    # row 3 (chelsea): the image column is the photo, the labels column the painted labels
    r = shown.rows[2]
    y = TITLE_HEIGHT + 2 * (120 + GAP)
    img = fit_height(r.image, 120)
    col_w = max(fit_height(q.image, 120).shape[1] for q in shown.rows)
    x = GAP + (col_w - img.shape[1]) // 2
    assert np.array_equal(pic[y : y + 120, x : x + img.shape[1]], img)
    x2 = GAP + col_w + GAP + (col_w - img.shape[1]) // 2
    lab = fit_height(r.label, 120, nearest=True)
    cell = pic[y : y + 120, x2 : x2 + img.shape[1]].astype(float)
    # cat pixels away from outlines lie between the photo and cat's colour
    inner = lab == 8
    inner[1:-1, 1:-1] &= (lab[:-2, 1:-1] == 8) & (lab[2:, 1:-1] == 8)
    inner[1:-1, 1:-1] &= (lab[1:-1, :-2] == 8) & (lab[1:-1, 2:] == 8)
    lo = np.minimum(img[inner], CMAP[8]) - 0.5
    hi = np.maximum(img[inner], CMAP[8]) + 0.5
    assert inner.sum() > 100 and np.all((cell[inner] >= lo) & (cell[inner] <= hi))
    assert not np.array_equal(cell[inner], img[inner].astype(float))  # and were tinted


def test_show_cam_column_with_empty_cells(photos, tmp_path):
    from psa_infer.artifacts import save_cam

    images, labels = photos
    img = load_image(images / "chelsea.png")
    cam = np.zeros((2,) + img.shape[:2], np.float32)
    cam[0, 50:150, 100:300] = 1.0
    save_cam(tmp_path / "cams" / "chelsea.npz", cam, np.array([8, 15]))
    out = tmp_path / "grid.png"
    ok("show", labels, "-i", images, "--cams", tmp_path / "cams", "-o", out, "--height", 100)
    shown = show_rows(labels, images, cam_dir=tmp_path / "cams")
    assert [r.cam is not None for r in shown.rows] == [False, False, True, False]
    pic = np.asarray(Image.open(out))
    assert np.array_equal(pic, show_grid(shown, 100))
    # astronaut's CAM cell (column 3, row 1) is empty grey; chelsea's is not
    col_w = max(fit_height(q.image, 100).shape[1] for q in shown.rows)
    x = GAP + 2 * (col_w + GAP)
    first = pic[TITLE_HEIGHT : TITLE_HEIGHT + 100, x : x + col_w]
    third = pic[TITLE_HEIGHT + 2 * 102 : TITLE_HEIGHT + 2 * 102 + 100, x : x + col_w]
    assert np.all(first == EMPTY, axis=2).mean() > 0.8
    assert np.all(third == EMPTY, axis=2).mean() < 0.1


def test_show_one_image_of_a_labels_folder(photos, tmp_path):
    images, labels = photos
    said = ok("show", labels, "-i", images / "camera.png", "-o", tmp_path / "g.png")
    assert "(1 image; 3 label maps of images not in --images left out)" in said
    shown = show_rows(labels, images / "camera.png")
    assert [r.id for r in shown.rows] == ["camera"] and shown.not_in_source == 3
    assert np.array_equal(shown.rows[0].image, load_image(PHOTOS / "camera.png"))


def test_show_synthetic_set_with_truth_and_names(tmp_path):
    data = tmp_path / "data"
    ok("make-synthetic", data, "-n", 6, "--size", 64)
    ds = open_dataset(data)
    # labels made from the masks: background where the truth says ignore
    labels = tmp_path / "labels"
    for s in ds.split("train"):
        m = load_label_png(s.mask)
        m[m == 255] = 0
        save_label_png(labels / f"{s.id}.png", m)
    out = tmp_path / "grid.png"
    said = ok("show", labels, "--images", data, "--split", "train", "-o", out, "-n", 3)
    assert "wrote" in said and "(3 images)" in said  # of the 4 of split train
    shown = show_rows(labels, data, split="train", limit=3)
    assert shown.class_names == ds.classes and shown.has_truth
    assert all(r.truth is not None for r in shown.rows)
    assert np.array_equal(np.asarray(Image.open(out)), show_grid(shown, 200))
    # the val split holds none of these: one line says so
    e = one_line_error(invoke("show", labels, "--images", data, "-o", out))
    assert "none of its 4 label maps is for an image of" in e and "split 'val'" in e


def test_show_finds_images_and_names_in_labels_jsonl(tmp_path):
    img = load_image(PHOTOS / "motorcycle_left.png")
    labels = tmp_path / "labels"
    save_label_png(labels / "moto.png", made_up_label(img.shape[:2], (14, 15)))
    rec = {
        "id": "moto",
        "source": str(PHOTOS / "motorcycle_left.png"),
        "classes": [{"name": "motorbike", "id": 14}, {"name": "person", "id": 15}],
    }
    (labels / "labels.jsonl").write_text(json.dumps(rec) + "\n" + '{"id": "torn', "utf-8")
    ok("show", labels, "-o", tmp_path / "g.jpg")
    shown = show_rows(labels)
    assert shown.rows[0].image.shape == img.shape
    assert shown.class_names[14] == "motorbike" and shown.class_names[15] == "person"
    assert Image.open(tmp_path / "g.jpg").format == "JPEG"


def test_show_model_names(tiny_bundle, tmp_path):
    labels = tmp_path / "labels"
    ds = open_dataset(tiny_bundle.data)
    for s in ds.split("val"):
        save_label_png(labels / f"{s.id}.png", load_label_png(s.mask))
    images = tiny_bundle.data / "JPEGImages"
    ok("show", labels, "-i", images, "--model", tiny_bundle.bundle, "-o", tmp_path / "g.png")
    shown = show_rows(labels, images, classes=tiny_bundle.classes)
    assert shown.class_names == tiny_bundle.classes and not shown.has_truth


def test_label_overlay_on_a_real_photo(tiny_bundle, tmp_path):
    """`psa label --overlay` beside the label map: the photo painted, and a legend below."""
    out = tmp_path / "out"
    ok(
        "label",
        PHOTOS / "chelsea.png",
        "--classes",
        "cat,dog",
        "--backend",
        "onnxruntime",
        "--model",
        tiny_bundle.bundle,
        "-o",
        out,
        "--overlay",
        "-q",
    )
    label = load_label_png(out / "chelsea.png")
    image = load_image(PHOTOS / "chelsea.png")
    pic = np.asarray(Image.open(out / "overlays" / "chelsea.jpg").convert("RGB")).astype(int)
    want = render_overlay(image, label, tiny_bundle.classes)
    assert pic.shape == want.picture.shape and pic.shape[0] > image.shape[0]
    assert np.abs(pic - want.picture).mean() < 3  # JPEG of the same picture
    assert np.abs(pic[:300] - paint(image, label)).mean() < 3
    present = {tiny_bundle.classes[c] for c in np.unique(label)}
    assert {e.name for e in want.legend} == present
    for e in want.legend:  # the legend's text is in the written file
        x0, y0, x1, y1 = e.text_box
        assert (pic[y0:y1, x0:x1].min(axis=2) < 100).mean() > 0.05, e.name
    # `psa show` then finds the image and names through labels.jsonl
    ok("show", out, "-o", tmp_path / "g.png")
    shown = show_rows(out)
    assert [r.id for r in shown.rows] == ["chelsea"] and shown.class_names == tiny_bundle.classes


@pytest.mark.parametrize(
    "case, pattern, code",
    [
        ("no_labels_dir", r"'.*missing' does not exist", 2),
        ("empty_labels_dir", r"empty: no label maps \(<id>\.png\)", 1),
        ("image_missing", r"logo\.png: no image 'logo' in .*images", 1),
        ("no_source", r"chelsea\.png: where is its image\? pass --images", 1),
        ("sizes_differ", r"chelsea\.png: label map is 200x100 but its image .* is 451x300", 1),
        ("truth_size", r"truth/chelsea\.png: label map is 10x10 but its image", 1),
        ("cam_size", r"chelsea\.npz: expected 'cam' of spatial size \(300, 451\)", 1),
        ("unknown_id", r"no label map for id 'nope' \(nope\.png\)", 1),
        ("bad_suffix", r"expected a \.png or \.jpg file", 2),
        ("bad_label_png", r"chelsea\.png: not a readable label PNG", 1),
    ],
)
def test_show_bad_inputs_give_one_line(tmp_path, case, pattern, code):
    from psa_infer.artifacts import save_cam

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    shutil.copy(PHOTOS / "chelsea.png", images)
    save_label_png(labels / "chelsea.png", np.zeros((300, 451), np.uint8))
    args = ["show", labels, "-i", images, "-o", tmp_path / "g.png"]
    if case == "no_labels_dir":
        args[1] = tmp_path / "missing"
    elif case == "empty_labels_dir":
        (tmp_path / "empty").mkdir()
        args[1] = tmp_path / "empty"
    elif case == "image_missing":
        save_label_png(labels / "logo.png", np.zeros((5, 5), np.uint8))
    elif case == "no_source":
        args = ["show", labels, "-o", tmp_path / "g.png"]
    elif case == "sizes_differ":
        save_label_png(labels / "chelsea.png", np.zeros((100, 200), np.uint8))
    elif case == "truth_size":
        save_label_png(tmp_path / "truth" / "chelsea.png", np.zeros((10, 10), np.uint8))
        args += ["--truth", tmp_path / "truth"]
    elif case == "cam_size":
        save_cam(tmp_path / "cams" / "chelsea.npz", np.zeros((1, 10, 10), np.float32), [8])
        args += ["--cams", tmp_path / "cams"]
    elif case == "unknown_id":
        args += ["--ids", "chelsea,nope"]
    elif case == "bad_suffix":
        args[-1] = tmp_path / "g.gif"
    elif case == "bad_label_png":
        (labels / "chelsea.png").write_bytes(b"not a png")
    line = one_line_error(invoke(*args), code)
    assert re.search(pattern, " ".join(line.split())), line
    assert not (tmp_path / "g.png").exists()

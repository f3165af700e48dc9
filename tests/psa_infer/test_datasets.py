import json

import numpy as np
import pytest
from PIL import Image

from psa_infer.datasets import DataError, load_image, open_dataset
from psa_infer.errors import PsaError
from tests.conftest import write_voc


def test_voc_reader_splits_labels_and_classes(voc_root):
    ds = open_dataset(voc_root)
    assert ds.kind == "voc"
    assert ds.classes == ("background", "cat", "dog")
    train = ds.split("train")
    assert [s.id for s in train] == ["img_000", "img_001", "img_002"]
    # labels derived from the masks: image i has class (i % 2) + 1
    assert [s.labels for s in train] == [(1,), (2,), (1,)]
    assert all(s.mask is not None and s.mask.exists() for s in train)


def test_voc_reader_accepts_vocdevkit_parent(tmp_path):
    write_voc(tmp_path / "VOCdevkit" / "VOC2012")
    assert open_dataset(tmp_path).root.name == "VOC2012"


def test_voc_labels_file_takes_precedence(voc_root):
    labels = {f"img_{i:03d}": ["dog"] for i in range(6)}
    (voc_root / "image_labels.json").write_text(json.dumps(labels))
    assert {s.labels for s in open_dataset(voc_root).split("val")} == {(2,)}


def test_voc_labels_from_annotation_xml_and_default_class_names(tmp_path):
    root = tmp_path / "VOC2012"
    write_voc(root, n=2)
    (root / "psa_dataset.json").unlink()
    for p in (root / "SegmentationClass").iterdir():
        p.unlink()
    (root / "Annotations").mkdir()
    for i in range(2):
        xml = "<annotation><object><name>cat</name></object><object><name>sofa</name></object>"
        (root / "Annotations" / f"img_{i:03d}.xml").write_text(xml + "</annotation>")
    ds = open_dataset(root)
    assert ds.num_classes == 20
    assert ds.split("train")[0].labels == (8, 18)  # VOC ids of cat and sofa


def test_unknown_class_in_labels_file_is_named(voc_root):
    (voc_root / "image_labels.json").write_text(json.dumps({"img_000": ["unicorn"]}))
    with pytest.raises(DataError, match="unknown class 'unicorn'"):
        open_dataset(voc_root)


def test_empty_split_and_missing_split(voc_root):
    (voc_root / "ImageSets/Segmentation/val.txt").write_text("")
    ds = open_dataset(voc_root)
    with pytest.raises(DataError, match="split 'val' is empty"):
        ds.split("val")
    with pytest.raises(DataError, match="no split list 'nope'"):
        ds.split("nope")


def test_wrong_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a VOC layout"):
        open_dataset(tmp_path / "empty")


def test_list_naming_missing_image(voc_root):
    (voc_root / "ImageSets/Segmentation/train.txt").write_text("ghost\n")
    with pytest.raises(DataError, match="image 'ghost' not found"):
        open_dataset(voc_root).split("train")


def test_mask_with_out_of_range_class(voc_root):
    from psa_infer.palette import save_label_png

    save_label_png(voc_root / "SegmentationClass/img_000.png", np.full((37, 45), 7, np.uint8))
    with pytest.raises(DataError, match="class id 7 outside 0..2"):
        open_dataset(voc_root).split("train")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_folder_reader(tmp_path, fmt):
    for name in ("a.jpg", "b.png"):
        Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / name)
    if fmt == "csv":
        (tmp_path / "labels.csv").write_text("image,labels\na.jpg,cat;dog\nb.png,dog\n")
    else:
        (tmp_path / "labels.json").write_text(json.dumps({"a": ["cat", "dog"], "b": ["dog"]}))
    ds = open_dataset(tmp_path)
    assert ds.kind == "folder"
    assert ds.classes == ("background", "cat", "dog")
    assert {s.id: s.labels for s in ds.split("all")} == {"a": (1, 2), "b": (2,)}


def test_folder_reader_with_class_list_and_missing_image(tmp_path):
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "a.jpg")
    labels = {"classes": ["cat", "dog", "cow"], "labels": {"a": ["cow"], "zz": ["cat"]}}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(DataError, match="image 'zz' not found"):
        open_dataset(tmp_path)


def test_corrupt_image_is_a_clear_error(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg: not a readable image"):
        load_image(p)
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")


# ---------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "bad", ["../../../escape/pwn", "/abs/pwn", "a\\b", ".hidden", "c:pwn", "a\x00b", "x/y"]
)
def test_ids_that_could_leave_the_output_folder_are_refused(voc_root, bad):
    (voc_root / "ImageSets/Segmentation/train.txt").write_text(f"img_000\n{bad}\n")
    with pytest.raises(DataError, match=r"train.txt:2: id .* is not a plain file name"):
        open_dataset(voc_root).split("train")


def test_split_list_with_a_repeated_id_names_both_lines(voc_root):
    (voc_root / "ImageSets/Segmentation/train.txt").write_text("img_000\nimg_001\nimg_000\n")
    with pytest.raises(DataError, match=r"train.txt:3: id 'img_000' is listed twice .*line 1"):
        open_dataset(voc_root).split("train")


def test_split_list_in_the_deeplab_form(voc_root):
    lines = [f"/JPEGImages/img_00{i}.jpg /SegmentationClassAug/img_00{i}.png" for i in (0, 1)]
    (voc_root / "ImageSets/Segmentation/train.txt").write_text("\n".join(lines) + "\n")
    assert [s.id for s in open_dataset(voc_root).split("train")] == ["img_000", "img_001"]


def test_output_path_refuses_an_escaping_id(tmp_path):
    from psa_infer.datasets import output_path

    assert output_path(tmp_path, "a", ".png") == tmp_path / "a.png"
    with pytest.raises(DataError, match="not a plain file name"):
        output_path(tmp_path, "../a", ".png")


# ---------------------------------------------------------------------------- labels files


def _images(folder, *names):
    for n in names:
        Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(folder / n)


def test_two_images_of_one_stem_are_an_error(tmp_path):
    _images(tmp_path, "a.jpg", "a.png")
    (tmp_path / "labels.csv").write_text("a.jpg,cat\n")
    with pytest.raises(DataError, match=r"'a.jpg' and 'a.png' would both be labeled as 'a.png'"):
        open_dataset(tmp_path)


def test_a_repeated_csv_row_is_an_error_naming_both_lines(tmp_path):
    _images(tmp_path, "a.jpg", "b.jpg")
    (tmp_path / "labels.csv").write_text("image,labels\na.jpg,cat\nb.jpg,dog\na,dog\n")
    with pytest.raises(DataError, match=r"labels.csv:4: image 'a' is labeled twice .*csv:2"):
        open_dataset(tmp_path)


def test_a_repeated_json_key_is_an_error(tmp_path):
    _images(tmp_path, "a.jpg")
    (tmp_path / "labels.json").write_text('{"a.jpg": ["cat"], "a.jpg": ["dog"]}')
    with pytest.raises(DataError, match="key 'a.jpg' appears twice"):
        open_dataset(tmp_path)


def test_a_labels_key_with_a_path_is_refused(tmp_path):
    _images(tmp_path, "a.jpg")
    (tmp_path / "labels.csv").write_text("../a.jpg,cat\n")
    with pytest.raises(DataError, match=r"labels.csv:1: image '../a.jpg': expected a file name"):
        open_dataset(tmp_path)


def test_folder_labels_are_read_against_the_model_classes(tmp_path):
    _images(tmp_path, "a.jpg", "b.jpg")
    (tmp_path / "labels.csv").write_text("a.jpg,dog\nb.jpg,cow\n")
    model = ("background", "cat", "cow", "dog")
    ds = open_dataset(tmp_path, classes=model)
    assert ds.classes == model
    assert {s.id: s.labels for s in ds.split("all")} == {"a": (3,), "b": (2,)}
    with pytest.raises(DataError, match=r"labels.csv:2 \('b'\): unknown class 'cow'"):
        open_dataset(tmp_path, classes=("background", "cat", "dog"))


# ---------------------------------------------------------------------------- images


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    a = np.linspace(3341, 62194, 40 * 30).reshape(30, 40).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")  # Pillow reads it as 16-bit
    img = load_image(p)
    assert img.shape == (30, 40, 3) and img.dtype == np.uint8
    assert img[..., 0].min() == round(3341 / 257) and img[..., 0].max() == round(62194 / 257)
    assert np.array_equal(img[..., 0], img[..., 2])


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 50, 3), np.uint8)
    a[:, :10] = 255  # a white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    p = tmp_path / "phone.jpg"
    Image.fromarray(a).save(p, exif=exif, quality=95)
    img = load_image(p)
    assert img.shape == (50, 20, 3)  # as a viewer shows it
    assert img[:10].mean() > 200 and img[-10:].mean() < 50  # the band is now on top


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "RGBA", "LA", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    rgb = np.full((6, 7, 3), 200, np.uint8)
    im = Image.fromarray(rgb).convert(mode) if mode not in ("I", "F") else None
    if mode == "I":
        im = Image.fromarray(np.full((6, 7), 51400, np.int32))  # 16-bit data in mode I
    if mode == "F":
        im = Image.fromarray(np.full((6, 7), 0.5, np.float32))
    p = tmp_path / ("x.tif" if mode in ("I", "F", "CMYK", "YCbCr") else "x.png")
    if mode == "YCbCr":
        p = tmp_path / "x.jpg"
    im.save(p)
    img = load_image(p)
    assert img.shape == (6, 7, 3) and img.dtype == np.uint8
    assert 100 < img.mean() <= 255


def test_transparency_is_composed_over_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)  # black, fully transparent
    p = tmp_path / "t.png"
    Image.fromarray(a, "RGBA").save(p)
    assert load_image(p).min() == 255


def test_pixel_limit_and_multipage_files_are_clear_errors(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(p)
    with pytest.raises(DataError, match=r"big.png: 50x40 pixels is over the limit of 1000"):
        load_image(p, limit=1000)
    monkeypatch.setenv("PSA_MAX_PIXELS", "1999")
    with pytest.raises(DataError, match="PSA_MAX_PIXELS to raise it"):
        load_image(p)
    monkeypatch.setenv("PSA_MAX_PIXELS", "lots")
    with pytest.raises(PsaError, match="PSA_MAX_PIXELS: expected a whole number"):
        load_image(p)
    monkeypatch.delenv("PSA_MAX_PIXELS")
    t = tmp_path / "pages.tif"
    pages = [Image.fromarray(np.full((5, 5, 3), v, np.uint8)) for v in (0, 99)]
    pages[0].save(t, save_all=True, append_images=pages[1:])
    with pytest.raises(DataError, match="pages.tif: holds 2 pages or frames"):
        load_image(t)


def test_a_decompression_bomb_is_a_clear_error(tmp_path):
    # A PNG header claiming 20000 x 20000 pixels: refused from the header, nothing decoded.
    p = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(p)
    with pytest.raises(DataError, match=r"bomb.png: 20000x20000 pixels is over the limit"):
        load_image(p)


def test_truncated_and_empty_files(tmp_path):
    p = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(p)
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DataError, match="cut.png: not a readable image"):
        load_image(p)
    e = tmp_path / "empty.jpg"
    e.write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg: not a readable image"):
        load_image(e)

import json

import numpy as np
import pytest
from PIL import Image

from psa_infer.datasets import DataError, load_image, open_dataset
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

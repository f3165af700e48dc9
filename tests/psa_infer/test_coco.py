"""COCO-format data sets: a small ``instances_*.json`` written here (category ids with gaps,
polygons, compressed and uncompressed RLE, a crowd region, overlaps, a box-only object), read
back as classes, labels and ground truth, then through ``psa eval``, ``psa label``, ``psa show``."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from psa_infer.datasets import DataError, open_dataset

mask_api = pytest.importorskip("pycocotools.mask")

H, W = 40, 50
CLASSES = ("background", "person", "train", "toothbrush")  # COCO ids 1, 7, 90


def box(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def compressed(m: np.ndarray) -> dict:
    rle = mask_api.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def uncompressed(m: np.ndarray) -> dict:
    """Run lengths over the column-major pixels, starting with a run of 0s (COCO's order)."""
    flat = m.reshape(-1, order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


def square(y0, x0, side) -> list:
    """A polygon whose pixels are exactly [y0:y0+side, x0:x0+side] (pycocotools' rasteriser)."""
    y1, x1 = y0 + side, x0 + side
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def ann(i, image, category, segmentation, crowd=0, **extra) -> dict:
    return {"id": i, "image_id": image, "category_id": category, "iscrowd": crowd,
            "segmentation": segmentation, **extra}  # fmt: skip


def coco_json() -> dict:
    anns = [
        # a: a person polygon square
        ann(1, 11, 1, square(10, 10, 20)),
        # b: a small toothbrush (uncompressed RLE) listed before the large train (compressed
        # RLE) that it lies on: larger first, so the toothbrush stays visible
        ann(2, 12, 90, uncompressed(box(15, 20, 20, 30))),
        ann(3, 12, 7, compressed(box(5, 35, 5, 45))),
        # c: a crowd of toothbrushes, partly covered by a person: the crowd counts as a label
        ann(4, 13, 90, uncompressed(box(0, 20, 0, 20)), crowd=1),
        ann(5, 13, 1, square(10, 10, 20)),
        # d: nothing; e: a train with a box only (a detection export)
        ann(6, 15, 7, [], bbox=[2.5, 3.0, 10.0, 6.0]),
    ]
    images = [
        {"id": i, "file_name": f"{n}.jpg", "height": H, "width": W}
        for i, n in zip((11, 12, 13, 14, 15), "abcde", strict=True)
    ]
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}]
    cats.append({"id": 7, "name": "train"})
    return {"images": images, "annotations": anns, "categories": cats}


def write_images(folder, data) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for im in data["images"]:
        pixels = rng.integers(0, 255, (im["height"], im["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / im["file_name"])


def write_root(root, data=None, split="val2014"):
    data = coco_json() if data is None else data
    write_images(root / split, data)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def coco_root(tmp_path):
    return write_root(tmp_path / "coco")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------- classes and labels


def test_categories_become_contiguous_named_classes_and_image_labels(coco_root):
    ds = open_dataset(coco_root)
    assert ds.kind == "coco" and ds.classes == CLASSES  # ids 1, 7, 90 → 1, 2, 3
    val = ds.split("val")  # the alias of the one split whose name starts with "val"
    assert val == ds.split("val2014")
    assert [s.id for s in val] == list("abcde")
    assert [s.image for s in val] == [coco_root / "val2014" / f"{c}.jpg" for c in "abcde"]
    # crowd (c) and box-only (e) annotations count; d has none: no classes
    assert [s.labels for s in val] == [(1,), (2, 3), (1, 3), (), (2,)]
    assert all(s.mask is None and ds.has_ground_truth(s) for s in val)


def test_ground_truth_pixel_by_pixel(coco_root):
    ds = open_dataset(coco_root)
    gt = {s.id: ds.ground_truth(s) for s in ds.split("val")}
    assert all(g.shape == (H, W) and g.dtype == np.uint8 for g in gt.values())
    # a: the polygon square, 20 x 20 pixels, and nothing else
    assert (gt["a"] == 1).sum() == 400 and (gt["a"][10:30, 10:30] == 1).all()
    assert set(np.unique(gt["a"])) == {0, 1}
    # b: the compressed-RLE train with the uncompressed-RLE toothbrush on top of it
    want = np.zeros((H, W), np.uint8)
    want[5:35, 5:45] = 2
    want[15:20, 20:30] = 3
    np.testing.assert_array_equal(gt["b"], want)
    # c: the crowd is ignore (255) where the person does not cover it
    want = np.zeros((H, W), np.uint8)
    want[0:20, 0:20] = 255
    want[10:30, 10:30] = 1
    np.testing.assert_array_equal(gt["c"], want)
    # d: no annotation, all background; e: the box [x 2.5..12.5, y 3..9] is ignore
    assert not gt["d"].any()
    want = np.zeros((H, W), np.uint8)
    want[3:9, 2:13] = 255
    np.testing.assert_array_equal(gt["e"], want)


def test_compressed_rle_length_is_checked_as_pycocotools_encodes(tmp_path):
    from psa_infer.coco import _rle_total

    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = rng.integers(1, 60, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = mask_api.encode(np.asfortranarray(m))["counts"].decode()
        assert _rle_total(counts) == h * w
    good = compressed(box(5, 35, 5, 45))["counts"]
    assert _rle_total(good[:-1]) != H * W  # a truncated string no longer spans the image
    assert _rle_total("") == 0 and _rle_total("\x7f") is None


def test_overlaps_are_painted_larger_first_whatever_the_file_order(tmp_path):
    data = coco_json()
    data["annotations"][1:3] = data["annotations"][2:0:-1]  # the large train first this time
    root = write_root(tmp_path / "coco", data)
    ds = open_dataset(root)
    b = ds.ground_truth(ds.split("val")[1])
    assert (b == 3).sum() == 50 and (b == 2).sum() == 30 * 40 - 50


# ------------------------------------------------------------------------- layouts


def test_an_export_json_with_labels_option_or_as_the_data_path(tmp_path):
    data = coco_json()
    for c in data["categories"]:  # an annotation tool's ids 1..3
        c["id"] = {1: 1, 7: 2, 90: 3}[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = {1: 1, 7: 2, 90: 3}[a["category_id"]]
    folder = tmp_path / "export"
    write_images(folder / "images", data)
    (folder / "result.json").write_text(json.dumps(data))
    for ds in (
        open_dataset(folder, labels_file=folder / "result.json"),
        open_dataset(folder / "result.json"),
    ):
        assert ds.kind == "coco" and ds.classes == CLASSES
        samples = ds.split("train")
        assert samples == ds.split("all") == ds.split("result")
        assert [s.labels for s in samples] == [(1,), (2, 3), (1, 3), (), (2,)]
        assert samples[0].image == folder / "images" / "a.jpg"
        assert (ds.ground_truth(samples[0]) == 1).sum() == 400
    from psa_infer.palette import save_label_png

    for s in samples:  # psa eval takes the json as DATA (it has no --labels option)
        save_label_png(tmp_path / "gt" / f"{s.id}.png", ds.ground_truth(s))
    r = invoke("eval", folder / "result.json", "--labels-dir", tmp_path / "gt")
    assert r.exit_code == 0 and re.search(r"mIoU +100.00", r.output), r.output


def test_cvat_layout_and_split_names(tmp_path):
    root = tmp_path / "cvat"  # CVAT's "COCO 1.0": annotations/instances_default.json, images/
    write_images(root / "images", coco_json())
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_default.json").write_text(json.dumps(coco_json()))
    ds = open_dataset(root)
    assert ds.split("train") == ds.split("val") == ds.split("default")  # one file: one split
    assert ds.split("train")[0].image == root / "images" / "a.jpg"

    two = write_root(tmp_path / "coco", split="train2014")
    write_root(two, split="train2017")
    write_root(two, split="val2014")
    ds = open_dataset(two)
    assert [s.id for s in ds.split("val")] == list("abcde")
    with pytest.raises(DataError, match="split 'train' could be any of train2014, train2017"):
        ds.split("train")
    with pytest.raises(DataError, match=r"no split 'test' \(annotation files for: train2014"):
        ds.split("test")


def test_split_list_of_ids(coco_root, tmp_path):
    (tmp_path / "keep.txt").write_text("c\na\n")
    ds = open_dataset(coco_root)
    assert [s.id for s in ds.split(str(tmp_path / "keep.txt"))] == ["c", "a"]
    (tmp_path / "ghost.txt").write_text("a\nghost\n")
    with pytest.raises(DataError, match=r"ghost.txt:2: image 'ghost' is in none of .*val2014"):
        ds.split(str(tmp_path / "ghost.txt"))


# ------------------------------------------------------------------------ commands


def test_eval_of_the_ground_truth_itself_is_100_miou(coco_root, tmp_path):
    from psa_infer.palette import save_label_png

    ds = open_dataset(coco_root)
    for s in ds.split("val"):
        save_label_png(tmp_path / "gt" / f"{s.id}.png", ds.ground_truth(s))
    report = tmp_path / "r.json"
    r = invoke("eval", coco_root, "--labels-dir", tmp_path / "gt", "--json", report)
    assert r.exit_code == 0, r.output
    got = json.loads(report.read_text())
    assert got["miou"] == pytest.approx(100.0)
    assert set(got["per_class_iou"]) == set(CLASSES)
    # the ignore pixels (crowd, box) are left out of the count
    assert got["pixels"] == 5 * H * W - (400 - 100) - 6 * 11
    # and a wrong label map lowers it: b's toothbrush painted as train
    b = ds.ground_truth(ds.split("val")[1])
    save_label_png(tmp_path / "gt" / "b.png", np.where(b == 3, 2, b).astype(np.uint8))
    r = invoke("eval", coco_root, "--labels-dir", tmp_path / "gt", "--json", report)
    assert r.exit_code == 0, r.output
    got = json.loads(report.read_text())
    assert got["per_class_iou"]["toothbrush"] == 0.0  # c's crowd is ignore, not toothbrush
    assert got["per_class_iou"]["train"] == pytest.approx(100 * 1150 / 1200, abs=0.01)


def test_label_on_a_coco_set_with_a_tiny_model_then_eval_and_show(coco_root, tmp_path):
    pytest.importorskip("torch")
    import torch

    from psa_infer.palette import load_label_png
    from psa_infer.show import show_rows
    from psa_train.checkpoint import save_checkpoint
    from psa_train.train_aff import build_aff_model
    from psa_train.train_cam import build_cam_model

    torch.manual_seed(0)
    meta = {
        "backbone": "tiny",
        "classes": list(CLASSES),
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    cam = save_checkpoint(
        tmp_path / "cam", build_cam_model("tiny", None, 3).state_dict(), {**meta, "kind": "cam"}
    )
    aff = save_checkpoint(
        tmp_path / "aff", build_aff_model("tiny", None).state_dict(), {**meta, "kind": "aff"}
    )
    out = tmp_path / "labels"
    args = ["--cam", cam, "--aff", aff, "-o", out, "--split", "val2014", "-q"]
    r = invoke("label", coco_root, *args, "--set", "make_cam.scales=[1.0]")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["labeled"] == 5
    records = {
        (row := json.loads(line))["id"]: row
        for line in (out / "labels.jsonl").read_text().splitlines()
    }
    assert [c["name"] for c in records["b"]["classes"]] == ["train", "toothbrush"]
    for i, classes in zip("abcde", [{0, 1}, {0, 2, 3}, {0, 1, 3}, {0}, {0, 2}], strict=True):
        label = load_label_png(out / f"{i}.png")
        assert label.shape == (H, W) and set(np.unique(label)) <= classes
    r = invoke("eval", coco_root, "--labels-dir", out)
    assert r.exit_code == 0 and "mIoU" in r.output, r.output

    shown = show_rows(out, coco_root, split="val")
    assert shown.has_truth and shown.class_names == CLASSES
    ds = open_dataset(coco_root)
    for row, s in zip(shown.rows, ds.split("val"), strict=True):
        np.testing.assert_array_equal(row.truth, ds.ground_truth(s))


def test_export_verify_on_a_coco_set_scores_miou_against_its_annotations(coco_root, tmp_path):
    """The ladder's mIoU rungs read the annotations rendered, as eval does (not mask PNGs)."""
    pytest.importorskip("torch")
    import torch

    from psa_train.checkpoint import save_checkpoint
    from psa_train.train_aff import build_aff_model
    from psa_train.train_cam import build_cam_model

    torch.manual_seed(0)
    meta = {"backbone": "tiny", "classes": list(CLASSES), "mean": [0.5] * 3, "std": [0.25] * 3}
    cam = save_checkpoint(
        tmp_path / "cam", build_cam_model("tiny", None, 3).state_dict(), {**meta, "kind": "cam"}
    )
    aff = save_checkpoint(
        tmp_path / "aff", build_aff_model("tiny", None).state_dict(), {**meta, "kind": "aff"}
    )
    out = tmp_path / "bundle"
    args = ["--cam", cam, "--aff", aff, "-o", out, "--verify", coco_root]
    r = invoke("export", *args, "--set", "eval.split=val2014", "--set", "make_cam.scales=[1.0]")
    assert r.exit_code == 0, r.output
    report = json.loads((out / "verify.json").read_text())
    assert report["images"] == 5
    assert report["miou"] is not None and report["miou"]["images"] == 5


def test_the_walk_runs_only_the_present_classes_of_an_80_class_model():
    """COCO's 80 classes: an image with 2 of them walks 1 + 2 channels, not 81."""
    from psa_infer.pipeline import Labeler

    walked = []

    def cam_forward(x):  # every class of the network: (B, 80, h/8, w/8)
        b, _, h, w = x.shape
        return np.random.default_rng(0).random((b, 80, -(-h // 8), -(-w // 8)), np.float32)

    def aff_forward(x):
        return np.ones((1, 4, x.shape[2] // 8, x.shape[3] // 8), np.float32)

    def walk(v, features):
        walked.append(v.shape)
        return v

    labeler = Labeler(cam_forward, aff_forward, (0.5,) * 3, (0.25,) * 3, scales=(1.0,), walk=walk)
    img = np.zeros((48, 64, 3), np.uint8)
    label = labeler.label(img, [17, 62])
    assert walked == [(3, 6, 8)]  # background + the 2 present classes
    assert set(np.unique(label)) <= {0, 17, 62}
    labeler.label(img, range(1, 81))
    assert walked[-1] == (81, 6, 8)  # what walking every class would cost


# ---------------------------------------------------------------------- bad inputs


def _mutate(data, change):
    data = copy.deepcopy(data)
    change(data)
    return data


BAD = {
    "no annotations list": (
        lambda d: d.pop("annotations"),
        r"instances_val2014.json: not a COCO-format file: no 'annotations' list",
    ),
    "unknown image": (
        lambda d: d["annotations"][0].update(image_id=999),
        r"instances_val2014.json: annotations\[0\] \(id 1\): image_id 999 is not in 'images'",
    ),
    "unknown category": (
        lambda d: d["annotations"][2].update(category_id=3),
        r"annotations\[2\] \(id 3\): category_id 3 is not in 'categories'",
    ),
    "duplicate file name": (
        lambda d: d["images"][3].update(file_name="sub/a.png"),
        r"images\[3\] \('sub/a.png'\): images\[0\] \('a.jpg'\) has the same name 'a'",
    ),
    "duplicate category id": (
        lambda d: d["categories"].append({"id": 7, "name": "bus"}),
        r"categories\[3\]: 7 is also categories\[2\]",
    ),
    "category named background": (
        lambda d: d["categories"].append({"id": 0, "name": "background"}),
        r"categories\[3\]: 'background' is class 0",
    ),
    "missing image file": (
        lambda d: d["images"].append({"id": 99, "file_name": "z.jpg", "height": H, "width": W}),
        r"images\[5\] \('z.jpg'\): no image file .*val2014/z.jpg",
    ),
    "bad id for a file name": (
        lambda d: d["images"][1].update(file_name=".b.jpg"),
        r"images\[1\] \('.b.jpg'\): id '.b' is not a plain file name",
    ),
}

BAD_TRUTH = {
    "rle of another size": (
        lambda d: d["annotations"][2]["segmentation"].update(size=[W, H]),
        r"annotations\[2\] \(id 3\): RLE 'size' \[50, 40\] is not the image's \[40, 50\]",
    ),
    "truncated compressed rle": (
        lambda d: d["annotations"][2]["segmentation"].update(
            counts=d["annotations"][2]["segmentation"]["counts"][:-2]
        ),
        r"annotations\[2\] \(id 3\): RLE 'counts' is not a compressed RLE of 40x50 pixels",
    ),
    "short uncompressed rle": (
        lambda d: d["annotations"][1]["segmentation"].update(counts=[3, 2]),
        r"annotations\[1\] \(id 2\): RLE 'counts' must be run lengths summing to 2000",
    ),
    "odd polygon": (
        lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]),
        r"annotations\[0\] \(id 1\): segmentation\[0\]: expected a polygon",
    ),
    "size not the file's": (
        lambda d: d["images"][0].update(height=41),
        r"images\[0\] \('a.jpg'\): 'width' x 'height' 50x41 differ from the file's 50x40",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_coco_files_are_one_line_errors_naming_the_entry(tmp_path, case):
    change, message = BAD[case]
    root = tmp_path / "coco"
    write_root(root)  # the images of the good file; then the bad json
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps(_mutate(coco_json(), change))
    )
    with pytest.raises(DataError, match=message):
        open_dataset(root).split("val")
    r = invoke("eval", root, "--labels-dir", tmp_path)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output


@pytest.mark.parametrize("case", list(BAD_TRUTH), ids=list(BAD_TRUTH))
def test_bad_masks_are_one_line_errors_when_rendered(tmp_path, case):
    change, message = BAD_TRUTH[case]
    root = write_root(tmp_path / "coco")
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps(_mutate(coco_json(), change))
    )
    ds = open_dataset(root)
    with pytest.raises(DataError, match=message):
        for s in ds.split("val"):
            ds.ground_truth(s)


def test_without_pycocotools_labels_read_and_eval_names_the_extra(coco_root, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    assert [s.labels for s in open_dataset(coco_root).split("val")][0] == (1,)
    r = invoke("eval", coco_root, "--labels-dir", coco_root)
    assert r.exit_code == 1 and "pip install 'psa-affinity[coco]'" in r.output, r.output


def test_a_json_that_is_not_coco_is_named(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"images": [{"id": 1}], "info": {}}))
    with pytest.raises(DataError, match=r"x.json: not a COCO-format file: no 'annotations'"):
        open_dataset(tmp_path / "x.json")
    with pytest.raises(DataError, match=r"x.json: not a COCO-format file: no 'annotations'"):
        open_dataset(tmp_path, labels_file=tmp_path / "x.json")
    (tmp_path / "y.json").write_text("[1, 2")
    with pytest.raises(DataError, match=r"y.json: not readable JSON"):
        open_dataset(tmp_path / "y.json")

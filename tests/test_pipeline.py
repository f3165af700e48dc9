"""The whole chain through the CLI on tiny synthetic data with the `tiny` backbone (CPU, ~1 min).

Built once per module; each test then checks one property of what the chain wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main

TINY = [
    "--set",
    "train_cam.backbone=tiny",
    "--set",
    "train_cam.weights=null",
    "--set",
    "train_cam.crop=64",
    "--set",
    "train_cam.resize_long=[56,80]",
    "--set",
    "train_cam.batch_size=4",
    "--set",
    "train_cam.epochs=1",
]
TINY_AFF = [
    "--set",
    "train_aff.backbone=tiny",
    "--set",
    "train_aff.weights=null",
    "--set",
    "train_aff.crop=80",
    "--set",
    "train_aff.batch_size=4",
    "--set",
    "train_aff.epochs=1",
]
SCALES = ["--set", "make_cam.scales=[1.0,0.5]"]


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    data = d / "data"
    run("make-synthetic", data, "--num-images", 12, "--size", 64, "--num-classes", 3)
    run("train-cam", data, "-o", d / "cam", *TINY)
    for split in ("train", "val"):
        run(
            "make-cam",
            data,
            "-c",
            d / "cam" / "cam.safetensors",
            "-o",
            d / "cams",
            "--split",
            split,
            *SCALES,
        )
    run("make-aff-labels", data, "--cams", d / "cams", "-o", d / "affl")
    run("train-aff", data, "--aff-labels", d / "affl", "-o", d / "aff", *TINY_AFF)
    run(
        "label",
        data,
        "--cam",
        d / "cam" / "cam.safetensors",
        "--aff",
        d / "aff" / "aff.safetensors",
        "-o",
        d / "labels",
        "--split",
        "val",
        *SCALES,
    )
    return d


def ckpts(d):
    return ["--cam", d / "cam" / "cam.safetensors", "--aff", d / "aff" / "aff.safetensors"]


def test_training_writes_checkpoints_config_and_metrics(chain):
    for stage in ("cam", "aff"):
        meta = json.loads((chain / stage / f"{stage}.json").read_text())
        assert meta["kind"] == stage and meta["backbone"] == "tiny"
        assert meta["classes"][0] == "background" and len(meta["classes"]) == 4
        assert (chain / stage / "config.yaml").exists()
        rows = [json.loads(x) for x in (chain / stage / "metrics.jsonl").read_text().splitlines()]
        assert rows and np.isfinite(rows[-1]["train_loss"])


def test_cams_are_normalised_present_classes(chain):
    labels = json.loads((chain / "data" / "image_labels.json").read_text())
    classes = json.loads((chain / "data" / "psa_dataset.json").read_text())["classes"]
    for p in sorted((chain / "cams").glob("*.npz")):
        with np.load(p) as f:
            cam, keys = f["cam"], f["keys"]
        assert cam.dtype == np.float32 and keys.dtype == np.int64
        assert keys.tolist() == sorted(classes.index(n) for n in set(labels[p.stem]))
        assert cam.min() >= 0 and cam.max() <= 1
        img = Image.open(chain / "data" / "JPEGImages" / f"{p.stem}.jpg")
        assert cam.shape[1:] == (img.height, img.width)


def test_aff_labels_hold_la_ha_maps_and_previews(chain):
    files = sorted((chain / "affl").glob("*.npz"))
    assert files
    with np.load(files[0]) as f:
        la, ha, keys = f["la"], f["ha"], f["keys"]
    assert la.shape == ha.shape and la.shape[0] == len(keys) + 1
    prev = np.array(Image.open(chain / "affl" / "preview" / f"{files[0].stem}.png"))
    assert set(np.unique(prev).tolist()) <= {0, 255, *keys.tolist()}


def test_labels_are_palette_pngs_of_image_size_with_present_classes(chain):
    labels = json.loads((chain / "data" / "image_labels.json").read_text())
    classes = json.loads((chain / "data" / "psa_dataset.json").read_text())["classes"]
    val = (chain / "data" / "ImageSets/Segmentation/val.txt").read_text().split()
    for i in val:
        im = Image.open(chain / "labels" / f"{i}.png")
        assert im.mode == "P"
        lab = np.array(im)
        img = Image.open(chain / "data" / "JPEGImages" / f"{i}.jpg")
        assert lab.shape == (img.height, img.width)
        allowed = {0} | {classes.index(n) for n in labels[i]}
        assert set(np.unique(lab).tolist()) <= allowed


def test_eval_reports_both_kinds(chain, tmp_path):
    out = run(
        "eval",
        chain / "data",
        "--cams",
        chain / "cams",
        "--bg-sweep",
        "--json",
        tmp_path / "c.json",
    )
    assert "mIoU" in out
    rep = json.loads((tmp_path / "c.json").read_text())
    assert len(rep["sweep"]) == 12 and 0 <= rep["best"]["miou"] <= 100
    out = run("eval", chain / "data", "--labels-dir", chain / "labels")
    assert "mIoU" in out


def test_label_rerun_skips_finished_images(chain):
    out = run("label", chain / "data", *ckpts(chain), "-o", chain / "labels", "--split", "val")
    assert json.loads(out.strip().splitlines()[-1])["skipped"] == 3


def test_label_single_image_classes_predicted_and_none(chain, tmp_path):
    img = chain / "data" / "JPEGImages" / "syn_00000.jpg"
    classes = json.loads((chain / "data" / "psa_dataset.json").read_text())["classes"]
    run("label", img, *ckpts(chain), "-o", tmp_path / "a", "--classes", classes[1], *SCALES)
    lab = np.array(Image.open(tmp_path / "a" / "syn_00000.png"))
    assert set(np.unique(lab).tolist()) <= {0, 1}
    run(
        "label",
        img,
        *ckpts(chain),
        "-o",
        tmp_path / "b",
        "--predict-classes",
        "--set",
        "label.class_threshold=1.0",
    )
    # nothing clears a threshold of 1.0: no foreground class → all background, not a crash
    assert not np.array(Image.open(tmp_path / "b" / "syn_00000.png")).any()


def test_image_smaller_than_one_stride_cell(chain, tmp_path):
    Image.fromarray(np.full((5, 6, 3), 200, np.uint8)).save(tmp_path / "dot.png")
    classes = json.loads((chain / "data" / "psa_dataset.json").read_text())["classes"]
    run("label", tmp_path / "dot.png", *ckpts(chain), "-o", tmp_path / "o", "--classes", classes[2])
    lab = np.array(Image.open(tmp_path / "o" / "dot.png"))
    assert lab.shape == (5, 6) and set(np.unique(lab).tolist()) <= {0, 2}


def test_bad_inputs_are_one_line_errors(chain, tmp_path):
    r = CliRunner().invoke(
        main,
        [
            "label",
            str(chain / "data"),
            "--cam",
            str(chain / "aff" / "aff.safetensors"),
            "--aff",
            str(chain / "aff" / "aff.safetensors"),
            "-o",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 1 and "expected a cam checkpoint, got kind 'aff'" in r.output
    # a checkpoint whose metadata names another backbone than its weights
    from safetensors.torch import load_file, save_file

    meta = json.loads((chain / "cam" / "cam.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    tensors = load_file(chain / "cam" / "cam.safetensors")
    header = {"psa": json.dumps({**meta, "backbone": "mobilenet_v2"})}
    save_file(tensors, bad / "cam.safetensors", header)
    r = CliRunner().invoke(
        main,
        [
            "make-cam",
            str(chain / "data"),
            "-c",
            str(bad / "cam.safetensors"),
            "-o",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 1 and "weights do not fit this network" in r.output
    assert "Traceback" not in r.output
    # a CAM file of the wrong shape
    cams = tmp_path / "cams"
    cams.mkdir()
    for p in (chain / "cams").glob("*.npz"):
        np.savez(cams / p.name, cam=np.zeros((21, 353), np.float64), keys=np.array([1]))
    r = CliRunner().invoke(
        main,
        ["make-aff-labels", str(chain / "data"), "--cams", str(cams), "-o", str(tmp_path / "al")],
    )
    assert r.exit_code == 3  # every image failed; each is listed, none stops the others
    failures = (tmp_path / "al" / "failures.jsonl").read_text()
    assert "expected 'cam' of shape (K, H, W) float32, got (21, 353) float64" in failures
    assert "images failed make-aff-labels" in r.stderr


def test_resume_of_a_finished_run_repeats_nothing_and_another_config_is_refused(chain, tmp_path):
    import shutil

    shutil.copytree(chain / "cam", tmp_path / "cam")
    args = ["train-cam", chain / "data", "-o", tmp_path / "cam", "--resume", *TINY]
    run(*args)
    rows = (tmp_path / "cam" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]  # epoch 1 not repeated
    # more epochs change the poly schedule of every step: that is another run, not a resume
    r = CliRunner().invoke(main, [str(a) for a in args] + ["--set", "train_cam.epochs=2"])
    assert r.exit_code == 1
    assert "saved with train_cam.epochs=1, this run has 2" in r.stderr


def test_demo_prints_result_line_and_overview(tmp_path):
    out = tmp_path / "demo"
    sets = ["--set", "demo.size=64", "--set", "demo.num_classes=3", "--set", "demo.bg_sweep=false"]
    stdout = run("demo", "--out", out, "--num-images", 12, *sets, *TINY, *TINY_AFF, *SCALES)
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    result = json.loads(last[len("RESULT ") :])
    for key in ("cam_miou", "rw_miou", "rw_crf_miou", "ort_miou", "ort_agreement", "seconds"):
        assert key in result
    assert 0 <= result["cam_miou"] <= 100 and result["seconds"] > 0
    # the torch-free onnxruntime runtime labels like the torch backend
    assert result["ort_agreement"] >= 99.0
    assert abs(result["ort_miou"] - result["rw_miou"]) <= 1.0
    # overview.png: a grid row per val image (up to 6) under the column titles, six columns
    # (image, truth, CAM, RW, RW + CRF, classes) of images at least 0.85 / 1.15 as wide as tall
    from psa_infer.datasets import open_dataset
    from psa_infer.visualize import GAP, TITLE_HEIGHT
    from psa_train.demo import OVERVIEW_HEIGHT

    im = Image.open(out / "overview.png")
    rows = min(6, len(open_dataset(out / "data").split("val")))
    assert im.height == TITLE_HEIGHT + rows * (OVERVIEW_HEIGHT + GAP) + GAP
    assert im.width > 5 * 0.85 / 1.15 * OVERVIEW_HEIGHT
    assert (out / "bundle" / "meta.json").exists()

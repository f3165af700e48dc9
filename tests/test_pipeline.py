"""The whole chain through the CLI on tiny synthetic data with the `tiny` backbone (CPU, ~1 min):
stage by stage, as `psa demo`, and as `psa pipeline` on a VOC-layout set and on a folder.

Built once per module; each test then checks one property of what the chain wrote.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from cli import main
from psa_infer.errors import PsaError

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
    # One epoch of a tiny AffinityNet leaves its affinities near uniform: at the recipe's beta
    # (10) the 512-step walk mixes these 64-px images flat, peak-normalised flat channels tie
    # at 1 and rounding picks the label, so the two backends agreed on only 61-65 % of pixels.
    # Beta 24 (the recipe's before it trained on the 4-px pairs) keeps these walks apart; the
    # demo's trained networks agree on 100.0 % at beta 10 (README).
    "--set",
    "label.beta=24",
]
SCALES = ["--set", "make_cam.scales=[1.0,0.5]"]
TINY_SEG = [
    "--set",
    "train_seg.backbone=tiny",
    "--set",
    "train_seg.weights=null",
    "--set",
    "train_seg.crop=64",
    "--set",
    "train_seg.batch_size=4",
    "--set",
    "train_seg.epochs=1",
    "--set",
    "train_seg.head_width=8",
    "--set",
    "train_seg.head_rates=[1,2]",
]


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.stdout


def result_of(stdout: str) -> dict:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    return json.loads(last[len("RESULT ") :])


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


def test_make_cam_on_onnxruntime_gives_the_torch_cams(chain, tmp_path):
    # --backend onnxruntime: the checkpoint exported to cam.onnx and run on ONNX Runtime; the
    # same files, CAMs equal to float32 rounding
    cam = ["make-cam", chain / "data", "-c", chain / "cam" / "cam.safetensors", *SCALES]
    run(*cam, "-o", tmp_path / "ort", "--split", "val", "--backend", "onnxruntime")
    torch_files = sorted(p.name for p in (chain / "cams").glob("*.npz"))
    ort_files = sorted(p.name for p in (tmp_path / "ort").glob("*.npz"))
    assert ort_files and set(ort_files) <= set(torch_files)
    for name in ort_files:
        with np.load(chain / "cams" / name) as a, np.load(tmp_path / "ort" / name) as b:
            assert np.array_equal(a["keys"], b["keys"])
            assert a["cam"].shape == b["cam"].shape and a["cam"].dtype == b["cam"].dtype
            np.testing.assert_allclose(b["cam"], a["cam"], atol=1e-4)
    r = CliRunner().invoke(
        main,
        [
            str(a)
            for a in (*cam, "-o", tmp_path / "x", "--backend", "onnxruntime", "--device", "cuda")
        ],
    )
    assert r.exit_code == 2 and "--backend onnxruntime runs on the CPU" in r.output


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
    stdout = run(
        "demo",
        "--out",
        out,
        "--num-images",
        12,
        *sets,
        *TINY,
        *TINY_AFF,
        *TINY_SEG,
        *SCALES,
        "--set",
        "train_seg.weights=cam",  # the demo recipe's: start from train-cam's backbone
        "--set",
        "train_aff.weights=cam",
    )
    result = result_of(stdout)
    for key in ("cam_miou", "rw_miou", "rw_crf_miou", "ort_miou", "ort_agreement", "seconds"):
        assert key in result
    # the last step: segmentation networks trained on the walk + CRF labels of the training
    # split and on its ground truth, scored on val
    for key in ("seg_miou", "seg_full_miou", "seg_crf_miou", "seg_full_crf_miou"):
        assert 0 <= result[key] <= 100
    crf = [
        json.loads(x) for x in (out / "labels_seg_crf" / "labels.jsonl").read_text().splitlines()
    ]
    assert len(crf) == 3 and all(r["crf"] for r in crf)  # 12 images: 3 val
    assert result["seg_seconds_per_image"] > 0
    assert len(list((out / "labels_train_crf").glob("*.png"))) == 9  # 12 images: 9 train
    assert (out / "seg_bundle" / "seg.onnx").exists() and (out / "seg_full" / "seg.json").exists()
    for run_dir in ("aff", "seg", "seg_full"):
        stage_cfg = yaml.safe_load((out / run_dir / "config.yaml").read_text())
        assert stage_cfg["weights"] == str(out / "cam" / "cam.safetensors")
    assert 0 <= result["cam_miou"] <= 100 and result["seconds"] > 0
    # the torch-free onnxruntime runtime labels like the torch backend
    assert result["ort_agreement"] >= 99.0
    assert abs(result["ort_miou"] - result["rw_miou"]) <= 1.0
    # overview.png: a grid row per val image (up to 6) under the column titles, six columns
    # (image, truth, CAM, RW, RW + CRF, classes) of images at least 0.85 / 1.15 as wide as tall
    from psa_infer.datasets import open_dataset
    from psa_infer.visualize import GAP, TITLE_HEIGHT
    from psa_pipeline import OVERVIEW_HEIGHT

    im = Image.open(out / "overview.png")
    rows = min(6, len(open_dataset(out / "data").split("val")))
    assert im.height == TITLE_HEIGHT + rows * (OVERVIEW_HEIGHT + GAP) + GAP
    assert im.width > 5 * 0.85 / 1.15 * OVERVIEW_HEIGHT
    assert (out / "bundle" / "meta.json").exists()


@pytest.mark.parametrize("section", ["train_aff", "train_seg"])
def test_weights_cam_needs_the_classifiers_backbone(chain, tmp_path, section):
    from psa_pipeline import _from_classifier, load_recipe

    cfg = load_recipe(None, [f"{section}.weights=cam"])  # train_seg's in the demo recipe
    ckpt = tmp_path / "cam.safetensors"
    assert _from_classifier(cfg, section, ckpt).weights == str(ckpt)
    kept = load_recipe(None, [f"{section}.weights=default"])
    assert _from_classifier(kept, section, ckpt) == getattr(kept, section)
    for sibling in ("mobilenet_v2", "mobilenet_v2_os16"):  # the classifier's network, restrided
        same = load_recipe(None, [f"{section}.weights=cam", f"{section}.backbone={sibling}"])
        assert _from_classifier(same, section, ckpt).weights == str(ckpt)
    other = load_recipe(None, [f"{section}.weights=cam", f"{section}.backbone=tiny"])
    with pytest.raises(PsaError, match=f"{section}.weights: 'cam' starts from the classifier's"):
        _from_classifier(other, section, ckpt)
    # the stage's own command needs the file
    if section == "train_seg":
        args = ["train-seg", chain / "data", "--labels-dir", chain / "labels"]
    else:
        args = ["train-aff", chain / "data", "--aff-labels", chain / "affl"]
    args += ["-o", tmp_path / "o", "--weights", "cam"]
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "here give the file: --weights RUN/cam/cam.safetensors" in r.stderr
    assert not (tmp_path / "o").exists()  # refused before the stage starts


# --------------------------------------------------------------------------- psa pipeline

PIPELINE = [*TINY, *TINY_AFF, *TINY_SEG, *SCALES, "--set", "demo.bg_sweep=false"]
MIOU_KEYS = ("cam_miou", "rw_miou", "rw_crf_miou", "ort_miou", "cam_miou_best")


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipeline_voc")
    run("make-synthetic", d / "data", "-n", 12, "--size", 64, "--num-classes", 3)
    r = CliRunner().invoke(
        main, [str(a) for a in ("pipeline", d / "data", "-o", d / "out")] + PIPELINE
    )
    assert r.exit_code == 0, r.output
    return d, result_of(r.stdout), r.stderr


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A folder of images with labels.csv (no masks, no splits), from a tiny synthetic set."""
    import shutil

    d = tmp_path_factory.mktemp("pipeline_folder")
    run("make-synthetic", d / "syn", "-n", 12, "--size", 64, "--num-classes", 3)
    folder = d / "photos"
    folder.mkdir()
    labels = json.loads((d / "syn" / "image_labels.json").read_text())
    rows = ["image,labels"]
    for i, names in labels.items():
        shutil.copy(d / "syn" / "JPEGImages" / f"{i}.jpg", folder / f"{i}.jpg")
        rows.append(f"{i}.jpg,{';'.join(names)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    # The raw walk: on these 12 images of 64 px the tiny networks learn next to nothing, the
    # walk mixes some images flat, and peak-normalised flat channels tie at 1, so their argmax
    # is decided by rounding and the two backends agree on only 89-96 % of pixels. The VOC
    # run above checks the two backends' agreement on the recipe's normalised walk.
    raw = ["--set", "label.normalize=false"]
    args = [str(a) for a in ("pipeline", folder, "-o", d / "out")] + PIPELINE + raw
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return d, result_of(r.stdout), r.stderr


def test_walk_headroom_on_the_run_reproduces_its_onnxruntime_walk(voc_run, tmp_path):
    """benchmarks/walk_headroom.py on a finished run: its AffinityNet row is the run's walk
    through the bundle (ort_miou), every row is scored on the run's val masks, and the
    picture has a row per image (up to ``rows``) and a panel per map."""
    from benchmarks.walk_headroom import PANEL_HEIGHT, VARIANTS, headroom

    d, result, _ = voc_run
    picture = tmp_path / "headroom.png"
    report = headroom(d / "out", "val", progress=False, picture=picture, rows=2)
    shown = np.asarray(Image.open(picture))
    assert shown.shape[0] > 2 * PANEL_HEIGHT and shown.shape[1] > (4 + len(VARIANTS)) * 40
    assert report["images"] > 0 and list(report["rows"]) == ["CAM", *VARIANTS]
    rows = report["rows"]
    assert rows["AffinityNet"]["miou"] == result["ort_miou"]  # the same walk, to the pixel
    assert rows["CAM"]["miou"] == pytest.approx(result["cam_miou"], abs=0.01)
    for r in rows.values():
        assert 0 <= r["miou"] <= 100 and 0 <= r["fg_to_bg"] <= 100


def test_pipeline_on_a_voc_set_prints_the_demo_result(voc_run):
    d, result, _ = voc_run
    for key in (*MIOU_KEYS, "ort_agreement", "ort_seconds_per_image", "predict_f1_val"):
        assert key in result, key
    assert result["evaluated"] is True and result["split"] == "val"
    assert result["num_images"] == 12 and result["num_labeled"] == 3
    assert result["ort_agreement"] >= 99.0
    assert result["classifier"]["heldout_images"] == 1  # 10% of 9 training images
    # AffinityNet held out the same image; too few to judge either way
    assert result["affinity"]["heldout_images"] == 1
    assert result["affinity"]["verdict"] == "unknown"
    held = (d / "out" / "cam" / "heldout.txt").read_text()
    assert (d / "out" / "aff" / "heldout.txt").read_text() == held
    meta = json.loads((d / "out" / "bundle" / "meta.json").read_text())
    assert meta["class_thresholds"] == result["class_thresholds"]
    assert sorted(result["class_thresholds"]) == sorted(meta["classes"][1:])
    val = (d / "data" / "ImageSets/Segmentation/val.txt").read_text().split()
    for sub in ("labels", "labels_crf", "labels_ort"):
        assert sorted(p.stem for p in (d / "out" / sub).glob("*.png")) == sorted(val)


def test_pipeline_rerun_resumes_and_another_recipe_or_data_is_refused(voc_run, tmp_path):
    d, first, _ = voc_run
    stamp = {p: p.stat().st_mtime_ns for p in (d / "out").rglob("*.safetensors")}
    stamp.update({p: p.stat().st_mtime_ns for p in (d / "out" / "labels").glob("*.png")})
    again = result_of(run("pipeline", d / "data", "-o", d / "out", *PIPELINE))
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing trained or relabeled
    assert all(again[k] == first[k] for k in MIOU_KEYS)
    args = ["pipeline", str(d / "data"), "-o", str(d / "out"), *PIPELINE]
    r = CliRunner().invoke(main, args + ["--set", "train_cam.epochs=2"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "has train_cam.epochs=1, this one 2; resume with the same recipe" in r.stderr
    run("make-synthetic", tmp_path / "other", "-n", 4, "--size", 64, "--num-classes", 3)
    r = CliRunner().invoke(main, ["pipeline", str(tmp_path / "other"), *args[2:]])
    assert r.exit_code == 1 and "holds a run on" in r.stderr
    # not a data set at all: one line
    r = CliRunner().invoke(main, ["pipeline", str(tmp_path), "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "neither a VOC layout" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_pipeline_on_a_folder_labels_every_image_without_miou(folder_run):
    d, result, stderr = folder_run
    assert result["evaluated"] is False and result["split"] == "train"
    assert not any(k in result for k in (*MIOU_KEYS, "predict_f1_val"))
    assert result["num_images"] == 12 and result["num_labeled"] == 12
    assert "no mIoU: 12 of the 12 images of split 'train' have no ground truth" in stderr
    assert result["ort_agreement"] >= 99.0
    # the classifier's verdict: on 1 held-out image there is too little to judge
    assert result["classifier"]["verdict"] == "unknown"
    assert (d / "out" / "cam" / "heldout.json").exists()
    meta = json.loads((d / "out" / "bundle" / "meta.json").read_text())
    assert meta["class_thresholds"] == result["class_thresholds"]
    assert meta["class_thresholds_from"]["images"] == 12  # < 8 held out: every training image
    ids = sorted(p.stem for p in (d / "photos").glob("*.jpg"))
    for sub in ("labels", "labels_crf", "labels_ort"):
        assert sorted(p.stem for p in (d / "out" / sub).glob("*.png")) == ids
    classes = meta["classes"]
    labels = json.loads((d / "syn" / "image_labels.json").read_text())
    for i in ids:
        lab = np.array(Image.open(d / "out" / "labels" / f"{i}.png"))
        assert set(np.unique(lab).tolist()) <= {0} | {classes.index(n) for n in labels[i]}
    # overview.png without a ground-truth column: image, CAM, RW, RW + CRF, classes
    from psa_infer.visualize import GAP, TITLE_HEIGHT
    from psa_pipeline import OVERVIEW_HEIGHT

    im = Image.open(d / "out" / "overview.png")
    assert im.height == TITLE_HEIGHT + 6 * (OVERVIEW_HEIGHT + GAP) + GAP


def test_demo_of_another_style_and_a_rerun_with_another_seed(tmp_path):
    out = tmp_path / "demo"
    sets = ["--set", "demo.size=64", "--set", "demo.num_classes=3", *PIPELINE]
    args = ["demo", "--out", out, "--num-images", 12, "--style", "textured", *sets]
    result = result_of(run(*args))
    assert result["evaluated"] is True and 0 <= result["rw_miou"] <= 100
    meta = json.loads((out / "data" / "psa_dataset.json").read_text())
    assert meta["generator"]["style"] == "textured" and meta["statistics"]["part_share"] is None
    r = CliRunner().invoke(main, [str(a) for a in args] + ["--seed", "1"])
    assert r.exit_code == 1 and "has demo.seed=0, this one 1" in r.stderr

"""The bad-input corpus: every input a user can bring, through the CLI as a user runs it.

Each case builds its inputs in a fresh workspace (copies of the tiny data set, checkpoints and
bundle of ``tiny_bundle``), runs one command there and asserts:

* the exit status (0 done, 1 a user error, 2 a usage error, 3 some images failed);
* exactly one ``Error:`` line, matching the case's pattern (which names the file, line, key or
  variable at fault), and no traceback;
* nothing written outside ``out/`` (every file of the workspace is compared before and after)
  and no partial file anywhere (no temporary name left behind).

The cases whose error lives in one module (config ranges, checkpoints, bundles) have unit tests
beside that module; here each is driven once through the command a user would type.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from tests.conftest import ROOT

SKIMAGE_DATA = None
try:  # real photographs nobody here made (scikit-image is in the train extra)
    import skimage

    SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
except ImportError:  # pragma: no cover - the dev install has it
    pass


# ---------------------------------------------------------------------------- workspace


@pytest.fixture
def ws(tiny_bundle, tmp_path, monkeypatch):
    """A workspace: data/ (VOC, 6 images, cat/dog), cam/aff checkpoints, bundle/, cams/ (CAM
    files made from the masks), photos/ (3 images + labels.csv); the current directory."""
    from psa_infer.artifacts import save_cam
    from psa_infer.palette import load_label_png

    shutil.copytree(tiny_bundle.data, tmp_path / "data")
    shutil.copytree(tiny_bundle.bundle, tmp_path / "bundle")
    for p in (tiny_bundle.cam, tiny_bundle.aff):
        for q in (p, p.with_suffix(".json")):
            shutil.copy(q, tmp_path / q.name)
    for m in sorted((tmp_path / "data" / "SegmentationClass").glob("*.png")):
        gt = load_label_png(m)
        c = int(gt[gt < 255].max())
        save_cam(tmp_path / "cams" / f"{m.stem}.npz", (gt == c)[None].astype(np.float32), [c])
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 255, (24 + 8 * i, 40, 3)).astype(np.uint8)
        Image.fromarray(img).save(photos / f"p{i}.jpg")
    (photos / "labels.csv").write_text("image,labels\np0.jpg,cat\np1.jpg,dog\np2.jpg,cat;dog\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    error: str  # the one "Error:" line, "" if none
    changed: list[str] = field(default_factory=list)


def run(ws: Path, args: list[str], env: dict | None = None, out: str = "out") -> Run:
    before = _snapshot(ws)
    r = CliRunner().invoke(main, args, env=env)
    after = _snapshot(ws)
    changed = sorted(k for k, v in after.items() if before.get(k) != v)
    text = r.stdout + r.stderr
    assert "Traceback" not in text, text[-3000:]
    errors = [ln for ln in re.split(r"[\r\n]", r.stderr) if ln.startswith(("Error:", "psa: "))]
    assert len(errors) <= 1, errors
    outside = [c for c in changed if not c.startswith(out + os.sep)]
    assert not outside, f"written outside {out}/: {outside}"
    partial = [k for k in after if ".tmp" in Path(k).name]
    assert not partial, f"partial files left: {partial}"
    return Run(r.exit_code, r.stdout, r.stderr, errors[0] if errors else "", changed)


def expect(ws, args, code, pattern=None, env=None) -> Run:
    r = run(ws, args, env)
    assert r.code == code, (r.code, r.stdout[-500:], r.stderr[-1500:])
    if code != 0:
        assert r.error, r.stderr[-1500:]
        assert re.search(pattern, r.error), r.error
    return r


LABEL_TORCH = ["label", "data", "--cam", "cam.safetensors", "--aff", "aff.safetensors"]
LABEL_TORCH += ["-o", "out", "--split", "train"]
LABEL_ORT = ["--backend", "onnxruntime", "--model", "bundle", "-o", "out"]
MAKE_CAM = ["make-cam", "data", "-c", "cam.safetensors", "-o", "out", "--split", "train"]
AFF_LABELS = ["make-aff-labels", "data", "--cams", "cams", "-o", "out", "--no-crf"]
EVAL_CAMS = ["eval", "data", "--cams", "cams", "--split", "val"]
EXPORT = ["export", "--cam", "cam.safetensors", "--aff", "aff.safetensors", "-o", "out"]
TRAIN_CAM = ["train-cam", "data", "-o", "out", "--backbone", "tiny", "--weights", "none"]
TRAIN_CAM += ["--set", "train_cam.crop=32", "--set", "train_cam.batch_size=2"]
TRAIN_CAM += ["--set", "train_cam.resize_long=[32,48]", "--set", "train_cam.epochs=1"]


def label_ort(source: str, *extra: str) -> list[str]:
    return ["label", source, *LABEL_ORT, *extra]


# ---------------------------------------------------------------------------- ids and lists

SPLIT = Path("data/ImageSets/Segmentation/train.txt")


@pytest.mark.parametrize("command", [MAKE_CAM, LABEL_TORCH, AFF_LABELS])
@pytest.mark.parametrize("bad", ["../../../escape/pwn", "ABSOLUTE", "..\\..\\pwn", ".hidden"])
def test_ids_from_a_split_list_cannot_leave_the_output_folder(ws, command, bad):
    bad = str(ws / "abs" / "pwn") if bad == "ABSOLUTE" else bad
    SPLIT.write_text(f"img_000\n{bad}\n")
    r = expect(ws, command, 1, r"train.txt:2: id .* is not a plain file name")
    assert not (ws / "escape").exists() and not (ws / "abs").exists() and not r.changed[1:]


def test_an_escaping_id_in_a_labels_file(ws):
    (ws / "data" / "image_labels.json").write_text(json.dumps({"../../x": ["cat"]}))
    expect(ws, MAKE_CAM, 1, r"image_labels.json \(key '../../x'\).*expected a file name")


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("img_000\nimg_001\nimg_000\n", r"train.txt:3: id 'img_000' is listed twice"),
        ("", r"split 'train' is empty"),
        ("img_000\nghost\n", r"train.txt:2: image 'ghost' not found"),
        (b"\xff\xfe\x00bin", r"train.txt: not a text file of image ids"),
    ],
)
def test_bad_split_lists(ws, text, pattern):
    SPLIT.write_bytes(text if isinstance(text, bytes) else text.encode())
    expect(ws, MAKE_CAM, 1, pattern)


def test_split_list_in_the_deeplab_form_is_read(ws):
    SPLIT.write_text("/JPEGImages/img_000.jpg /SegmentationClassAug/img_000.png\n")
    r = expect(ws, MAKE_CAM, 0)
    assert json.loads(r.stdout.splitlines()[-1])["done"] == 1


# ---------------------------------------------------------------------------- labels files


@pytest.mark.parametrize(
    "name, text, pattern",
    [
        (
            "labels.csv",
            "p0.jpg,cat\np1.jpg,dog\np0,dog\n",
            r"labels.csv:3: image 'p0' is labeled twice",
        ),
        ("labels.csv", "../p0.jpg,cat\n", r"labels.csv:1: image '../p0.jpg': expected a file name"),
        ("labels.csv", "p0.jpg,cow\n", r"labels.csv:1 \('p0'\): unknown class 'cow'"),
        ("labels.csv", "ghost.jpg,cat\n", r"labels.csv:1: image 'ghost' not found"),
        ("labels.json", '{"p0.jpg": ["cat"], "p0.jpg": ["dog"]}', r"key 'p0.jpg' appears twice"),
        ("labels.json", '["p0.jpg"]', r'labels.json: expected \{"image"'),
        ("labels.json", "{not json", r"labels.json: not readable JSON"),
        (
            "labels.json",
            '{"classes": ["cow"], "labels": {"p0": ["cow"]}}',
            r"differ from the model",
        ),
    ],
)
def test_bad_labels_files(ws, name, text, pattern):
    (ws / "photos" / "labels.csv").unlink()
    (ws / "photos" / name).write_text(text)
    expect(ws, label_ort("photos"), 1, pattern)


def test_a_labels_csv_works_with_a_bundle_by_class_names(ws):
    r = expect(ws, label_ort("photos"), 0)
    assert json.loads(r.stdout.splitlines()[-1])["labeled"] == 3
    assert sorted(p.name for p in (ws / "out").glob("*.png")) == ["p0.png", "p1.png", "p2.png"]


def test_two_images_of_one_name_are_refused(ws):
    Image.open(ws / "photos" / "p0.jpg").save(ws / "photos" / "p0.png")
    expect(ws, label_ort("photos", "--predict-classes"), 1, r"'p0.jpg' and 'p0.png' would both")


# ---------------------------------------------------------------------------- images


def test_a_broken_image_does_not_stop_the_folder(ws):
    (ws / "photos" / "labels.csv").unlink()
    (ws / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = expect(ws, label_ort("photos", "--predict-classes"), 3, r"1 of 4 images failed")
    assert sorted(p.name for p in (ws / "out").glob("*.png")) == ["p0.png", "p1.png", "p2.png"]
    rows = [json.loads(x) for x in (ws / "out" / "failures.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows] == ["broken"]
    assert "broken.png: not a readable image" in rows[0]["error"]
    assert json.loads(r.stdout.splitlines()[-1])["failed"] == 1
    # re-run unfixed: the message says what the run did, not what the first one did
    expect(
        ws,
        label_ort("photos", "--predict-classes"),
        3,
        r"1 of 1 images failed .*; nothing new was written \(3 done before were skipped\)",
    )
    # overlays drawn for images an earlier run labeled count as written work
    expect(
        ws, label_ort("photos", "--predict-classes", "--overlay"), 3, r"1 of 4 .*the others were"
    )
    (ws / "out" / "overlays" / "p1.jpg").unlink()
    pattern = r"1 of 2 .*; the other was written \(2 done before were skipped\)"
    expect(ws, label_ort("photos", "--predict-classes", "--overlay"), 3, pattern)
    # fixed and re-run: the failure is retried, the done images skipped, the list removed
    Image.open(ws / "photos" / "p0.jpg").save(ws / "photos" / "broken.png")
    r = expect(ws, label_ort("photos", "--predict-classes"), 0)
    assert not (ws / "out" / "failures.jsonl").exists()
    stats = json.loads(r.stdout.splitlines()[-1])
    assert (stats["labeled"], stats["skipped"], stats["failed"]) == (1, 3, 0)


def test_fail_fast_stops_at_the_first_bad_image(ws):
    (ws / "photos" / "labels.csv").unlink()
    (ws / "photos" / "a_broken.png").write_bytes(b"")
    expect(ws, label_ort("photos", "--predict-classes", "--fail-fast"), 1, r"a_broken.png: not a")
    assert not list((ws / "out").glob("*.png"))


@pytest.mark.parametrize(
    "make, pattern",
    [
        ("multipage", r"holds 2 pages or frames"),
        ("huge", r"over the limit of 100000000"),
        ("truncated", r"not a readable image"),
    ],
)
def test_unreadable_images_are_listed(ws, make, pattern):
    (ws / "photos" / "labels.csv").unlink()
    p = ws / "photos" / "bad.tif"
    if make == "multipage":
        pages = [Image.new("RGB", (9, 9), c) for c in ("red", "blue")]
        pages[0].save(p, save_all=True, append_images=pages[1:])
    elif make == "huge":
        p = ws / "photos" / "bad.png"
        Image.new("1", (15000, 15000)).save(p)  # 225 MP, claimed by a small file
    else:
        Image.new("RGB", (64, 64), "red").save(p)
        p.write_bytes(p.read_bytes()[:100])
    expect(ws, label_ort("photos", "--predict-classes"), 3, r"1 of 4 images failed")
    err = json.loads((ws / "out" / "failures.jsonl").read_text())["error"]
    assert re.search(pattern, err) and p.name in err


def test_the_pixel_limit_is_configurable_and_checked(ws):
    r = expect(ws, label_ort("photos"), 3, r"3 of 3 images failed", env={"PSA_MAX_PIXELS": "500"})
    assert "over the limit of 500" in (ws / "out" / "failures.jsonl").read_text()
    expect(ws, label_ort("photos"), 1, r"PSA_MAX_PIXELS: expected", env={"PSA_MAX_PIXELS": "x"})
    assert r.code == 3


def test_sixteen_bit_and_rotated_photos_are_read_as_displayed(ws):
    deep = np.linspace(3341, 62194, 48 * 40).reshape(40, 48).astype(np.uint16)
    Image.fromarray(deep).save(ws / "deep.png")
    expect(ws, label_ort("deep.png", "--classes", "cat"), 0)
    lab = np.asarray(Image.open(ws / "out" / "deep.png"))
    assert lab.shape == (40, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone's portrait photo stored landscape
    Image.new("RGB", (50, 20), "white").save(ws / "phone.jpg", exif=exif)
    expect(ws, label_ort("phone.jpg", "--classes", "dog"), 0)
    assert np.asarray(Image.open(ws / "out" / "phone.png")).shape == (50, 20)


@pytest.mark.skipif(SKIMAGE_DATA is None, reason="scikit-image not installed")
def test_real_photos_in_every_mode(ws):
    for name in ("chelsea.png", "camera.png", "logo.png", "coffee.png"):  # RGB, L, RGBA, RGB
        shutil.copy(SKIMAGE_DATA / name, ws / "photos" / name)
    shutil.copy(SKIMAGE_DATA / "multipage.tif", ws / "photos" / "pages.tif")
    shutil.copy(SKIMAGE_DATA / "no_time_for_that_tiny.gif", ws / "photos" / "anim.gif")
    (ws / "photos" / "labels.csv").unlink()
    expect(ws, label_ort("photos", "--predict-classes"), 3, r"2 of 9 images failed")
    failed = [json.loads(x) for x in (ws / "out" / "failures.jsonl").read_text().splitlines()]
    assert {f["id"]: f["error"].split(": ", 1)[1] for f in failed} == {
        "anim": "holds 24 pages or frames; save the one to label as an image of its own",
        "pages": "holds 2 pages or frames; save the one to label as an image of its own",
    }
    for name in ("chelsea", "camera", "logo", "coffee"):
        shown = Image.open(SKIMAGE_DATA / f"{name}.png").size
        assert Image.open(ws / "out" / f"{name}.png").size == shown


@pytest.mark.parametrize(
    "args, code, pattern",
    [
        (["p.jpg"], 1, r"p.jpg: a single image needs its classes"),
        (["p.jpg", "--classes", "unicorn"], 1, r"--classes: unknown class 'unicorn'"),
        (["p.jpg", "--classes", "cat", "--predict-classes"], 2, r"--classes or --predict"),
    ],
)
def test_single_image_options(ws, args, code, pattern):
    Image.new("RGB", (30, 20)).save(ws / "p.jpg")
    expect(ws, label_ort(*args), code, pattern)


# ---------------------------------------------------------------------------- npz artifacts


def _npy_under_npz(path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.zeros((1, 37, 45), np.float32))


def _corrupt_cam(ws: Path, how: str, image_id: str) -> Path:
    p = ws / "cams" / f"{image_id}.npz"
    if how == "npy":
        _npy_under_npz(p)
    elif how == "keys":
        with np.load(p) as f:
            cam, keys = f["cam"], f["keys"]
        np.savez(p, cam=cam, keys=3 - keys)  # the other class of the two
    elif how == "no_cam":
        np.savez(p, keys=np.array([1]))
    elif how == "float64":
        np.savez(p, cam=np.zeros((1, 37, 45)), keys=np.array([1]))
    elif how == "object":
        np.savez(p, cam=np.array([{"a": 1}], dtype=object), keys=np.array([1]))
    elif how == "size":
        np.savez(p, cam=np.zeros((1, 30, 30), np.float32), keys=np.array([1]))
    elif how == "truncated":
        p.write_bytes(p.read_bytes()[:50])
    return p


@pytest.mark.parametrize(
    "how, pattern",
    [
        ("npy", r"img_003.npz: expected an .npz archive of named arrays, got a .npy"),
        ("keys", r"img_003.npz: CAMs of class ids \[\d\], but the image is labeled"),
        ("no_cam", r"img_003.npz: expected an array 'cam'"),
        ("float64", r"img_003.npz: expected 'cam' of shape \(K, H, W\) float32, got"),
        ("object", r"img_003.npz: not a readable .npz"),
        ("size", r"img_003.npz: expected 'cam' of spatial size \(37, 45\)"),
        ("truncated", r"img_003.npz: not a readable .npz"),
    ],
)
def test_bad_cam_files_in_eval(ws, how, pattern):
    _corrupt_cam(ws, how, "img_003")
    expect(ws, EVAL_CAMS, 1, pattern)


@pytest.mark.parametrize("how", ["npy", "keys", "truncated"])
def test_bad_cam_files_in_make_aff_labels_are_listed(ws, how):
    _corrupt_cam(ws, how, "img_001")
    expect(ws, AFF_LABELS, 3, r"1 of 3 images failed make-aff-labels")
    assert "img_001.npz" in (ws / "out" / "failures.jsonl").read_text()
    assert sorted(p.stem for p in (ws / "out").glob("*.npz")) == ["img_000", "img_002"]


def test_a_bad_cam_file_in_label_cams_is_listed(ws):
    _corrupt_cam(ws, "npy", "img_000")
    expect(ws, [*LABEL_TORCH, "--cams", "cams"], 3, r"1 of 3 images failed to label")


def test_make_aff_labels_redoes_an_image_whose_preview_is_missing(ws):
    expect(ws, AFF_LABELS, 0)
    (ws / "out" / "preview" / "img_001.png").unlink()
    r = expect(ws, AFF_LABELS, 0)
    stats = json.loads(r.stdout.splitlines()[-1])
    assert (stats["done"], stats["skipped"]) == (1, 2)
    assert (ws / "out" / "preview" / "img_001.png").exists()


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("command", [MAKE_CAM, LABEL_TORCH, EXPORT])
@pytest.mark.parametrize(
    "how, pattern",
    [
        ("list", r"cam.(json|safetensors)"),
        ("no_classes", r"cam.(json|safetensors).*'classes'"),
        ("truncated", r"cam.safetensors"),
        ("other_kind", r"expected a cam checkpoint"),
    ],
)
def test_bad_checkpoints(ws, command, how, pattern):
    st, js = ws / "cam.safetensors", ws / "cam.json"
    if how == "truncated":
        st.write_bytes(st.read_bytes()[:100])
    elif how == "other_kind":
        shutil.copy(ws / "aff.safetensors", st)
        shutil.copy(ws / "aff.json", js)
    else:
        from safetensors.torch import load_file, save_file

        meta = json.loads(js.read_text())
        if how == "no_classes":
            meta.pop("classes")
        # the same change in the header, for checkpoints that carry their metadata there
        save_file(load_file(st), st, metadata={"psa": json.dumps(meta)} if how != "list" else None)
        js.write_text(json.dumps([meta]) if how == "list" else json.dumps(meta))
        if how == "list":
            save_file(load_file(st), st, metadata={"psa": json.dumps([meta])})
    expect(ws, command, 1, pattern)


def test_resume_from_an_edited_epoch_is_refused(ws):
    expect(ws, TRAIN_CAM, 0)
    last = ws / "out" / "last.json"
    meta = json.loads(last.read_text())
    meta["epoch"] = 99
    last.write_text(json.dumps(meta))
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    st = ws / "out" / "last.safetensors"
    with safe_open(str(st), "pt") as f:
        header = f.metadata() or {}
    if "psa" in header:  # the checkpoint carries its metadata in its header
        inner = json.loads(header["psa"])
        inner["epoch"] = 99
        save_file(load_file(st), st, metadata={**header, "psa": json.dumps(inner)})
    expect(ws, [*TRAIN_CAM, "--resume"], 1, r"last.*epoch 99")


# ---------------------------------------------------------------------------- bundles


def _update_sha(ws: Path, name: str) -> None:
    from psa_infer.artifacts import file_sha256

    meta = json.loads((ws / "bundle" / "meta.json").read_text())
    meta["models"][name]["sha256"] = file_sha256(ws / "bundle" / f"{name}.onnx")
    (ws / "bundle" / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["rw", "cam"])
@pytest.mark.parametrize("command", ["label", "build-engine"])
def test_a_corrupt_onnx_file_with_its_sha_updated(ws, name, command):
    p = ws / "bundle" / f"{name}.onnx"
    p.write_bytes(p.read_bytes()[:200] + b"\x00garbage" * 10)
    _update_sha(ws, name)
    args = label_ort("photos") if command == "label" else ["build-engine", "bundle"]
    expect(ws, args, 1, rf"{name}.onnx")


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda m: m.update(classes=[*m["classes"], "cow", "emu"]), r"meta.json.*class"),
        (lambda m: m.pop("mean"), r"meta.json: missing 'mean'"),
        (lambda m: m.update(scales=[]), r"meta.json: 'scales': expected a non-empty list"),
    ],
)
def test_bad_meta_json(ws, edit, pattern):
    path = ws / "bundle" / "meta.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    expect(ws, label_ort("photos"), 1, pattern)


def test_meta_json_that_is_not_json_and_a_missing_graph(ws):
    (ws / "bundle" / "meta.json").write_text("{")
    expect(ws, label_ort("photos"), 1, r"meta.json: not readable JSON")
    (ws / "bundle" / "meta.json").unlink()
    expect(ws, label_ort("photos"), 1, r"meta.json: missing — is bundle a bundle")


# ---------------------------------------------------------------------------- --set and ranges


@pytest.mark.parametrize(
    "command, setting, key",
    [
        (MAKE_CAM, "make_cam.scales=[]", "make_cam.scales"),
        (MAKE_CAM, "make_cam.scales=[0]", "make_cam.scales"),
        (MAKE_CAM, "make_cam.scales=[-1]", "make_cam.scales"),
        (TRAIN_CAM, "train_cam.lr=.nan", "train_cam.lr"),
        (TRAIN_CAM, "train_cam.epochs=0", "train_cam.epochs"),
        (LABEL_TORCH, "label.logt=40", "label.logt"),
        (LABEL_TORCH, "label.alpha=-1", "label.alpha"),
        (LABEL_TORCH, "label.class_threshold=2", "label.class_threshold"),
        (LABEL_TORCH, "label.pairs=most", "label.pairs"),
        (LABEL_TORCH, "label.betta=3", "label.betta: unknown key"),
        (LABEL_TORCH, "label.beta=[1]", "label.beta: expected a number"),
        (AFF_LABELS, "aff_labels.low_alpha=40", "aff_labels.low_alpha"),
        (LABEL_TORCH, "label.device=gpu", "label.device"),
    ],
)
def test_config_values_out_of_range(ws, command, setting, key):
    r = expect(ws, [*command, "--set", setting], 1, re.escape(key))
    assert not (ws / "out").exists() or not list((ws / "out").glob("*.png")), r.changed


def test_a_recipe_file_with_a_bad_value_is_named(ws):
    (ws / "r.yaml").write_text("label:\n  logt: 40\n")
    expect(ws, [*LABEL_TORCH, "--config", "r.yaml"], 1, r"r.yaml: label.logt")
    (ws / "r.yaml").write_text("label: [\n")
    expect(ws, [*LABEL_TORCH, "--config", "r.yaml"], 1, r"r.yaml: not valid YAML")


# ---------------------------------------------------------------------------- shards and env


@pytest.mark.parametrize(
    "env, extra, pattern",
    [
        ({"RANK": "5", "WORLD_SIZE": "2"}, [], r"RANK='5' WORLD_SIZE='2'"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, [], r"RANK='-1'"),
        ({"RANK": "0", "WORLD_SIZE": "x"}, [], r"WORLD_SIZE='x'"),
        ({"RANK": "1"}, [], r"RANK is set but WORLD_SIZE is not"),
        ({}, ["--shard", "3/2"], r"need 0 <= i < n"),
        ({}, ["--shard", "1of2"], r"expected i/n"),
    ],
)
def test_bad_shards(ws, env, extra, pattern):
    full = {"RANK": None, "WORLD_SIZE": None, **env}
    expect(ws, label_ort("photos", *extra), 2, pattern, env=full)
    assert not (ws / "out").exists()


def test_shards_write_their_own_failure_lists(ws):
    (ws / "photos" / "labels.csv").unlink()
    (ws / "photos" / "p1.jpg").write_bytes(b"")
    for i in (0, 1):
        r = run(ws, label_ort("photos", "--predict-classes", "--shard", f"{i}/2"))
        assert r.code == (3 if i == 1 else 0), r.stderr[-800:]
    assert (ws / "out" / "failures.1of2.jsonl").exists()
    assert sorted(p.name for p in (ws / "out").glob("*.png")) == ["p0.png", "p2.png"]


def test_bad_walk_threads(ws):
    expect(ws, [*LABEL_TORCH], 1, r"PSA_RW_THREADS", env={"PSA_RW_THREADS": "zero"})


# ---------------------------------------------------------------------------- the error net


def test_a_bug_is_reported_as_a_bug(ws, monkeypatch):
    import psa_infer.pipeline

    def broken(*a, **k):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(psa_infer.pipeline, "label_items", broken)
    r = expect(ws, label_ort("photos"), 70, r"unexpected error \(a bug in psa.*TypeError")
    assert "PSA_DEBUG=1" in r.error


def test_a_missing_extra_names_the_extra(ws):
    code = (
        "import sys; sys.modules['safetensors'] = None\n"
        "from cli import main\n"
        f"main({LABEL_TORCH!r})\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ws,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 1, r.stderr[-1500:]
    assert "Traceback" not in r.stderr
    assert re.search(r"module 'safetensors'.*'train' extra", r.stderr.strip().splitlines()[-1])


def test_training_refuses_unreadable_images_before_the_first_epoch(ws):
    (ws / "data" / "JPEGImages" / "img_001.jpg").write_bytes(b"not a jpeg")
    r = expect(
        ws,
        TRAIN_CAM,
        1,
        r"train_split 'train': 1 of 3 images cannot be used: .*img_001.jpg: not a readable",
    )
    assert not (ws / "out" / "last.safetensors").exists(), r.changed


def _config_table():
    from tests.psa_train.test_config import BAD

    return BAD


@pytest.mark.parametrize(("item", "key"), _config_table(), ids=[i for i, _ in _config_table()])
def test_every_bad_setting_through_the_cli(ws, item, key):
    # Every command that takes --set builds the whole recipe: a bad value of any stage is
    # refused before anything is read or written.
    command = AFF_LABELS if key.startswith("make_cam.split") else MAKE_CAM  # no --split there
    r = expect(ws, [*command, "--set", item], 1, re.escape(key))
    assert r.changed == [], r.changed

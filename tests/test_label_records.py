"""Labeling that scripts can read: labels.jsonl records, a JSON summary alone on stdout, -q/-v,
re-runs and --overwrite, thresholds, and the Python API of the README (torch-free)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from tests.conftest import ROOT
from tests.psa_infer.test_bundle import BLOCK_TORCH

skimage = pytest.importorskip("skimage")
PHOTOS = Path(skimage.__file__).parent / "data"
REAL = ("chelsea.png", "astronaut.png", "motorcycle_left.png")


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in REAL:
        # halved: the tiny network labels them in a fraction of a second
        im = Image.open(PHOTOS / name).convert("RGB")
        im.resize((im.width // 2, im.height // 2)).save(folder / name)
    return folder


def label(tiny_bundle, source, out, *extra):
    args = ["label", str(source), "--backend", "onnxruntime", "--model", str(tiny_bundle.bundle)]
    return CliRunner().invoke(main, [*args, "-o", str(out), *extra])


def records(out: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in (out / "labels.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rows}


def test_records_of_predicted_classes_on_real_photos(tiny_bundle, photos, tmp_path):
    out = tmp_path / "out"
    r = label(tiny_bundle, photos, out, "--predict-classes", "--class-threshold", "0.3")
    assert r.exit_code == 0, r.stderr[-1500:]
    summary = json.loads(r.stdout)  # stdout is the summary alone
    assert summary["labeled"] == 3 and summary["records_file"] == str(out / "labels.jsonl")
    assert "onnxruntime: CPUExecutionProvider" in r.stderr
    rows = records(out)
    assert sorted(rows) == ["astronaut", "chelsea", "motorcycle_left"]
    for rid, row in rows.items():
        lab = np.asarray(Image.open(out / f"{rid}.png"))
        assert row["size"] == list(lab.shape)
        assert row["source"] == str(photos / f"{rid}.png")
        assert set(row["scores"]) == {"cat", "dog"}
        # predicted = exactly the classes whose score passed the threshold
        above = sorted(n for n, v in row["scores"].items() if v > 0.3)
        assert [c["name"] for c in row["classes"]] == above
        assert all(c["source"] == "predicted" and c["score"] > 0.3 for c in row["classes"])
        # pixel shares: the label map's own counts, by name
        ids, counts = np.unique(lab, return_counts=True)
        names = dict(enumerate(tiny_bundle.classes))
        want = {names[i]: round(c / lab.size, 4) for i, c in zip(ids, counts, strict=True)}
        assert row["pixels"] == want
        assert row["backend"] == "onnxruntime" and row["walk"] == "numpy"
        assert row["seconds"] > 0 and row["crf"] is False


def test_given_classes_by_name_from_a_labels_csv(tiny_bundle, photos, tmp_path):
    (photos / "labels.csv").write_text("image,labels\nchelsea.png,cat\nastronaut.png,dog;cat\n")
    (photos / "motorcycle_left.png").unlink()
    out = tmp_path / "out"
    r = label(tiny_bundle, photos, out)
    assert r.exit_code == 0, r.stderr[-1500:]
    rows = records(out)
    assert [c["name"] for c in rows["astronaut"]["classes"]] == ["cat", "dog"]
    assert all(c["source"] == "given" and "score" not in c for c in rows["chelsea"]["classes"])
    assert "scores" not in rows["chelsea"]
    lab = np.asarray(Image.open(out / "chelsea.png"))
    assert set(np.unique(lab)) <= {0, 1}  # only background and the given class


def test_reruns_skip_say_so_and_overwrite_relabels(tiny_bundle, photos, tmp_path):
    out = tmp_path / "out"
    assert label(tiny_bundle, photos, out, "--predict-classes").exit_code == 0
    first = records(out)
    r = label(tiny_bundle, photos, out, "--predict-classes", "--class-threshold", "0.99")
    stats = json.loads(r.stdout)
    assert (stats["labeled"], stats["skipped"]) == (0, 3)
    assert "skipped 3 images labeled before (--overwrite relabels them)" in r.stderr
    assert records(out) == first  # untouched
    r = label(
        tiny_bundle, photos, out, "--predict-classes", "--class-threshold", "0.999", "--overwrite"
    )
    assert json.loads(r.stdout)["labeled"] == 3
    rows = records(out)
    assert len((out / "labels.jsonl").read_text().splitlines()) == 3  # one line per image
    for rid, row in rows.items():
        if all(v <= 0.999 for v in row["scores"].values()):
            assert row["classes"] == [] and row["pixels"] == {"background": 1.0}
            assert not np.asarray(Image.open(out / f"{rid}.png")).any()


def test_quiet_and_verbose(tiny_bundle, photos, tmp_path):
    r = label(tiny_bundle, photos, tmp_path / "q", "--predict-classes", "-q")
    assert r.exit_code == 0 and r.stderr == ""
    r = label(tiny_bundle, photos, tmp_path / "v", "--predict-classes", "-v")
    lines = [
        ln for ln in re.split(r"[\r\n]", r.stderr) if re.match(r"^\w+: .* \(\d+\.\d+ s\)$", ln)
    ]
    assert sorted(ln.split(":")[0] for ln in lines) == ["astronaut", "chelsea", "motorcycle_left"]


def test_records_survive_a_torn_line_and_a_missing_map(tiny_bundle, photos, tmp_path):
    out = tmp_path / "out"
    assert label(tiny_bundle, photos, out, "--predict-classes").exit_code == 0
    before = records(out)
    # a killed run: a torn last line, a record whose map was never renamed into place
    with (out / "labels.jsonl").open("a") as f:
        f.write('{"id": "chelsea", "sou')
    (out / "chelsea.png").unlink()
    r = label(tiny_bundle, photos, out, "--predict-classes")
    assert json.loads(r.stdout)["labeled"] == 1
    after = records(out)
    assert sorted(after) == sorted(before)
    assert len((out / "labels.jsonl").read_text().splitlines()) == 3
    assert {k: v["classes"] for k, v in after.items()} == {
        k: v["classes"] for k, v in before.items()
    }


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"### Python API\n.*?```python\n(.*?)```", text, re.S)
    assert m, "README has a '### Python API' section with a python block"
    return m.group(1)


def test_the_readme_api_snippet_runs_without_torch(tiny_bundle, tmp_path):
    shutil.copytree(tiny_bundle.bundle, tmp_path / "bundle")
    shutil.copy(PHOTOS / "chelsea.png", tmp_path / "photo.jpg")  # a PNG by its bytes: fine
    code = _readme_snippet()
    check = """
assert result.label.shape == (300, 451) and result.label.dtype.name == "uint8"
assert result.record["size"] == [300, 451] and result.record["id"] == "photo"
assert [c["name"] for c in result.record["classes"]] == ["cat"]
assert set(predicted.record["scores"]) == {"cat", "dog"}
assert predicted.label.shape == (300, 451)
assert "torch" not in sys.modules
print("ok")
"""
    r = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code + check],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("ok")


def test_api_takes_arrays_and_pil_images_and_names_bad_classes(tiny_bundle):
    from psa_infer import open_bundle
    from psa_infer.errors import PsaError

    img = Image.open(PHOTOS / "chelsea.png").resize((96, 64))
    with open_bundle(tiny_bundle.bundle) as model:
        a = model.label(np.asarray(img), classes=["dog"])
        b = model.label(img, classes=["dog"])
        g = model.label(np.asarray(img.convert("L")), classes=["dog"])
        assert np.array_equal(a.label, b.label) and a.label.shape == (64, 96)
        assert g.label.shape == (64, 96)
        assert a.record["source"] is None and a.record["classes"][0]["name"] == "dog"
        with pytest.raises(PsaError, match="classes: unknown class 'cow'"):
            model.label(img, classes=["cow"])
        with pytest.raises(PsaError, match=r"image: expected \(H, W, 3\) uint8"):
            model.label(np.zeros((4, 4, 3), np.float32), classes=["dog"])


def test_overlay_on_a_rerun_draws_the_existing_labels(tiny_bundle, photos, tmp_path):
    out = tmp_path / "out"
    assert label(tiny_bundle, photos, out, "--predict-classes", "-q").exit_code == 0
    maps = {p.name: p.read_bytes() for p in out.glob("*.png")}
    r = label(tiny_bundle, photos, out, "--predict-classes", "-q", "--overlay")
    stats = json.loads(r.stdout)
    assert (stats["labeled"], stats["skipped"], stats["overlays_added"]) == (0, 0, 3)
    assert sorted(p.stem for p in (out / "overlays").glob("*.jpg")) == sorted(
        p.removesuffix(".png") for p in maps
    )
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == maps  # not relabeled
    r = label(tiny_bundle, photos, out, "--predict-classes", "-q", "--overlay")
    assert json.loads(r.stdout)["skipped"] == 3


def test_threads_give_the_same_labels_and_leave_the_environment_as_it_was(
    tiny_bundle, tmp_path, monkeypatch
):
    monkeypatch.setenv("PSA_RW_THREADS", "2")
    data = ["--split", "val", "-q"]
    one = label(tiny_bundle, tiny_bundle.data, tmp_path / "one", *data, "--threads", "1")
    assert one.exit_code == 0, one.stderr
    assert sys.modules["os"].environ["PSA_RW_THREADS"] == "2"  # restored after the run
    two = label(tiny_bundle, tiny_bundle.data, tmp_path / "two", *data)
    assert two.exit_code == 0, two.stderr
    maps = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert maps and maps == sorted(p.name for p in (tmp_path / "two").glob("*.png"))
    for name in maps:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    torch = ["--cam", str(tiny_bundle.cam), "--aff", str(tiny_bundle.aff), "--threads", "1"]
    r = CliRunner().invoke(
        main, ["label", str(tiny_bundle.data), "-o", str(tmp_path / "t"), *torch]
    )
    assert r.exit_code == 2 and "--threads: bundle backends" in r.stderr

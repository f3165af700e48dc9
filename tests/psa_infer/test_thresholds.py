"""Per-class thresholds for --predict-classes: chosen by F1 on image-level labels, kept in
meta.json, used by `psa label` and the API unless a threshold is given."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from psa_infer.bundle import BundleError, load_meta
from psa_infer.thresholds import GRID, best_thresholds, class_f1


def test_best_threshold_per_class():
    truth = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]], bool)
    scores = np.array(
        [[0.31, 0.6], [0.35, 0.8], [0.2, 0.78], [0.1, 0.65], [0.4, 0.68]], np.float32
    )  # class 0 separates at 0.2..0.3; class 1's scores are all high, present above 0.7
    t, f1 = best_thresholds(scores, truth)
    assert t[0] in (0.2, 0.25, 0.3) and f1[0] == 1.0
    assert t[1] == 0.7 and f1[1] == 1.0  # 0.7 and 0.75 both separate; 0.7 is nearer 0.5
    # at the fixed 0.5 the first class is never predicted, the second always
    assert class_f1(scores, truth, 0.5)[0] == 0.0
    assert class_f1(scores, truth, 0.5)[1] == pytest.approx(2 * 2 / (5 + 2))


def test_ties_go_to_the_threshold_nearest_a_half():
    truth = np.array([[1], [0]], bool)
    scores = np.array([[0.99], [0.01]], np.float32)  # every threshold of the grid is perfect
    t, f1 = best_thresholds(scores, truth)
    assert t[0] == 0.5 and f1[0] == 1.0
    assert GRID[0] == 0.05 and GRID[-1] == 0.95


def test_a_class_never_present_nor_predicted_has_no_f1():
    truth = np.zeros((3, 1), bool)
    t, f1 = best_thresholds(np.full((3, 1), 0.01, np.float32), truth)
    assert np.isnan(f1[0]) and 0.05 <= t[0] <= 0.95


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    shutil.copytree(tiny_bundle.bundle, tmp_path / "bundle")
    return tmp_path / "bundle"


def test_calibrate_writes_thresholds_that_label_uses(tiny_bundle, bundle, tmp_path):
    r = CliRunner().invoke(main, ["calibrate", str(bundle), str(tiny_bundle.data), "-q"])
    assert r.exit_code == 0, r.stderr[-1500:]
    report = json.loads(r.stdout)
    assert report["images"] == 3 and set(report["thresholds"]) == {"cat", "dog"}
    meta = load_meta(bundle)  # still a valid bundle (the graphs' sha256 unchanged)
    assert meta["class_thresholds"] == report["thresholds"]
    assert meta["class_thresholds_from"]["source"].endswith("split 'train'")
    args = ["label", str(tiny_bundle.data), "--split", "val", "--predict-classes", "-q"]
    args += ["--backend", "onnxruntime", "--model", str(bundle)]
    for extra, out in (([], "cal"), (["--class-threshold", "0.5"], "half")):
        r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / out), *extra])
        assert r.exit_code == 0, r.stderr[-1500:]
    for out, thresholds in (("cal", report["thresholds"]), ("half", None)):
        for line in (tmp_path / out / "labels.jsonl").read_text().splitlines():
            row = json.loads(line)
            want = [n for n, v in row["scores"].items() if v > (thresholds or {}).get(n, 0.5)]
            assert [c["name"] for c in row["classes"]] == sorted(want)


def test_the_api_uses_the_calibrated_thresholds(tiny_bundle, bundle):
    from psa_infer import open_bundle

    meta = json.loads((bundle / "meta.json").read_text())
    meta["class_thresholds"] = {"cat": 0.01, "dog": 1.0}  # cat always, dog never
    (bundle / "meta.json").write_text(json.dumps(meta))
    img = next((tiny_bundle.data / "JPEGImages").glob("*.jpg"))
    with open_bundle(bundle) as model:
        assert [c["name"] for c in model.label(img).record["classes"]] == ["cat"]
        assert model.label(img, threshold=1.0).record["classes"] == []


@pytest.mark.parametrize("value", [{"cat": 0.4}, {"cat": 0.4, "dog": 0}, [0.5, 0.5]])
def test_bad_thresholds_in_meta_json_are_one_line(bundle, value):
    meta = json.loads((bundle / "meta.json").read_text())
    meta["class_thresholds"] = value
    (bundle / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"meta.json: 'class_thresholds': expected a number"):
        load_meta(bundle)


def test_calibrate_needs_labeled_images(bundle, tmp_path):
    (tmp_path / "imgs").mkdir()
    r = CliRunner().invoke(main, ["calibrate", str(bundle), str(tmp_path / "imgs")])
    assert r.exit_code == 1 and "neither a VOC layout" in r.stderr

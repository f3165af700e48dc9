"""psa bench, random-walk part: the baseline is the reference's maths; the table says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.bench import targets_table
from benchmarks.report import Table, cell, to_markdown, to_text
from benchmarks.rw_bench import dense_walk, inputs, run_case
from cli import main
from psa_infer.randomwalk import pair_affinity, random_walk


def test_dense_baseline_is_the_same_walk_as_the_local_one():
    features, scores = inputs(96, 3)
    local = random_walk(scores, pair_affinity(features), beta=8.0, steps=256)
    dense = dense_walk(scores, features)
    assert np.abs(dense - local).max() < 1e-4 * max(1.0, np.abs(local).max())
    assert (dense.argmax(0) == local.argmax(0)).all()


def test_inputs_are_deterministic_and_shaped_for_the_image_side():
    f1, s1 = inputs(100, 21)
    f2, s2 = inputs(100, 21)
    assert f1.shape == (16, 13, 13) and s1.shape == (21, 13, 13)  # ceil(100 / 8)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(s1, s2)
    assert (s1 > 0).reshape(21, -1).any(axis=1).all()  # C = 21: every channel is walked


def test_a_case_reports_times_and_memory(tmp_path):
    res = run_case("numpy", 64, 3, 2, tmp_path / "o.npy")
    assert len(res["times_s"]) == 2 and res["median_s"] > 0
    assert res["peak_rss_mb"] >= res["rss_before_mb"] > 0
    assert np.load(tmp_path / "o.npy").shape == (3, 8, 8)
    with pytest.raises(ValueError, match="method: expected one of"):
        run_case("cupy", 64, 3, 1, None)


def test_cells_and_tables_render():
    assert cell(None) == "—" and cell(3) == "3" and cell(0.000123) == "1.2e-04"
    assert cell(1234.5) == "1234" and cell(True) == "yes"
    t = Table("T", ["a", "b"], [[1, None]], ["note"])
    assert "| 1 | — |" in to_markdown(t) and "- note" in to_markdown(t)
    assert to_text(t).splitlines()[2].split() == ["a", "b"]


def test_targets_table_checks_each_target():
    raw = {
        "random_walk": [
            {
                "method": "numba",
                "side": 448,
                "channels": 3,
                "ratio": 150.0,
                "label_agreement": 100.0,
            },
            {
                "method": "numba",
                "side": 448,
                "channels": 21,
                "ratio": 12.0,
                "label_agreement": 100.0,
            },
        ],
        "big_image": {"side": 2048, "peak_rss_mb": 2500.0, "seconds": 30.0},
    }
    rows = targets_table(raw).rows
    assert [r[2] for r in rows] == [True, False, False]


def test_psa_bench_writes_tables_json_and_plot(tmp_path):
    out = tmp_path / "b"
    args = ["bench", "--out", str(out), "--sides", "64,128", "--channels", "3", "--repeats", "1"]
    args += ["--label-sides", "", "--big-side", "0"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    report = json.loads((out / "bench.json").read_text())
    rows = report["tables"][0]["rows"]
    assert {(row[0], row[3]) for row in rows} == {
        (s, m) for s in (64, 128) for m in ("dense", "numba", "numpy", "onnx")
    }
    for row in rows:
        if row[3] != "dense":
            assert row[5] > 0 and row[6] < 1e-4 and row[7] == 100.0  # ratio, Δ, labels
    assert report["machine"]["cpus"] >= 1
    assert "| side | C |" in (out / "bench.md").read_text()
    assert (out / "rw_scaling.png").stat().st_size > 10_000
    assert "Targets (issues 5 and 13)" in r.output


def test_psa_bench_rejects_unknown_methods(tmp_path):
    r = CliRunner().invoke(main, ["bench", "--out", str(tmp_path), "--methods", "dense,cupy"])
    assert r.exit_code != 0 and "expected some of dense, numba, numpy, onnx" in r.output


@pytest.mark.parametrize(
    "args, match",
    [
        (["--sides", ""], "expected image sides >= 8"),
        (["--sides", "4"], "expected image sides >= 8"),
        (["--channels", "2"], "expected channel counts >= 3"),
        (["--sides", "a,b"], "expected comma-separated integers"),
    ],
)
def test_psa_bench_rejects_bad_sizes(tmp_path, args, match):
    r = CliRunner().invoke(main, ["bench", "--out", str(tmp_path), *args])
    assert r.exit_code != 0 and match in r.output

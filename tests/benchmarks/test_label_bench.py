"""benchmarks/label_bench.py at toy sizes: the tables and raw figures have what they promise."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks import label_bench  # noqa: E402


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    work = tmp_path_factory.mktemp("label_bench")
    tables, raw = label_bench.run_label_bench(
        work, sides=(64,), repeats=1, progress=False, backbone="tiny"
    )
    return work, tables, raw


def test_bench_image_has_two_classes_at_the_requested_side():
    img, keys = label_bench.bench_image(72)
    assert img.shape == (72, 72, 3) and img.dtype == np.uint8
    assert len(keys) == 2 and all(1 <= k <= label_bench.NUM_CLASSES for k in keys)


def test_run_label_bench_table_has_every_stage_for_both_backends(bench):
    _, tables, raw = bench
    (table,) = tables
    assert table.columns == [
        "side",
        "stage",
        "torch (s)",
        "onnxruntime (s)",
        "torch / onnxruntime",
    ]
    stages = [row[1] for row in table.rows]
    expected = [label for label, _ in label_bench.STAGE_ROWS]
    if not raw["crf"]:
        expected.remove("dense CRF")
    assert stages[: len(expected)] == expected
    assert "end to end, walk, no CRF (s)" in stages
    assert "end to end, walk, no CRF (images/s)" in stages
    for side, stage, t, o, ratio in table.rows:
        assert side == 64
        assert t > 0 and o > 0, stage
        if ratio is not None:
            assert ratio == pytest.approx(t / o)
    assert any("untrained" in n for n in table.notes)
    assert any("set_num_threads" in n for n in table.notes)


def test_run_label_bench_raw_is_json_with_one_run_per_backend(bench):
    _, _, raw = bench
    data = json.loads(json.dumps(raw))
    side = data["sides"]["64"]
    assert len(side["classes"]) == 2
    for backend in label_bench.BACKENDS:
        (run,) = side[backend]
        assert run["total"] >= run["cam"] + run["features"] + run["walk"] > 0
    assert data["backbone"] == "tiny" and data["scales"] == list(label_bench.SCALES)
    assert data["threads"] == label_bench.cpus()
    (ends,) = data["end_to_end"]  # what benchmarks/bench.py's targets table reads
    assert ends["side"] == 64 and ends["torch_s"] > 0 and ends["onnxruntime_s"] > 0


def test_run_big_image_measures_a_fresh_process_without_torch(bench):
    work, _, _ = bench
    r = label_bench.run_big_image(work, side=80, bundle=work / "bundle", tile=32)
    assert r["side"] == 80 and r["tile"] == 32 and r["seconds"] > 0
    assert r["peak_rss_mb"] >= r["rss_after_open_mb"] > 0
    assert not r["torch_loaded"]
    table = label_bench.big_image_table([r])
    assert table.rows[0][:2] == ["80x80", f"32 / {r['tile_margin']}"]


def test_run_tile_agreement_compares_tiled_with_untiled(bench):
    work, _, _ = bench
    r = label_bench.run_tile_agreement(work, side=96, bundle=work / "bundle", tile=32)
    assert r["tile"] == 32 and 0 <= r["label_agreement_pct"] <= 100
    assert r["max_cam_diff"] >= 0
    assert label_bench.agreement_table([r]).rows[0][0] == "96x96"

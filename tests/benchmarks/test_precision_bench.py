"""benchmarks/precision_bench.py at a toy size: one row per precision, each timed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxconverter_common")

from benchmarks import precision_bench  # noqa: E402


def test_one_timed_row_per_precision(tmp_path):
    tables, raw = precision_bench.run_precision_bench(tmp_path, 64, 1, backbone="tiny")
    (table,) = tables
    assert [row[0] for row in table.rows] == ["fp32", "fp16", "int8"]
    for _, cam, features, total, speedup in table.rows:
        assert 0 < cam < total and 0 < features < total
        assert speedup == pytest.approx(raw["median"]["fp32"]["total"] / total)
    assert table.rows[0][4] == 1
    assert any("not what a GPU gains" in n for n in table.notes)
    json.dumps(raw)  # bench.json keeps it
    # A second run reuses the variants already made.
    made = Path(raw["bundle"]) / "cam.int8.onnx"
    before = made.stat().st_mtime_ns
    assert precision_bench.make_variant_bundle(tmp_path, "tiny") == Path(raw["bundle"])
    assert made.stat().st_mtime_ns == before

"""benchmarks/seg_bench.py on tiny networks: both timings, the ratio, and the targets row."""

from __future__ import annotations

from benchmarks.bench import targets_table
from benchmarks.label_bench import make_bundle
from benchmarks.seg_bench import make_seg_bundle, run_seg_bench


def test_seg_bench_times_the_network_and_the_chain(tmp_path):
    bundle = make_bundle(tmp_path, "tiny")
    seg = make_seg_bundle(tmp_path, "tiny")
    tables, raw = run_seg_bench(tmp_path, side=64, repeats=1, bundle=bundle, seg_bundle=seg)
    assert raw["seg_s"] > 0 and raw["chain_s"] > 0
    assert raw["ratio"] == raw["chain_s"] / raw["seg_s"]
    assert tables[0].rows[-1][0].startswith("seg.onnx")
    row = targets_table({"segmentation": raw}).rows[-1]
    assert row[0].startswith("seg.onnx ≥ 10×") and row[2] == (raw["ratio"] >= 10)

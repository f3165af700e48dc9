"""benchmarks/ray_bench.py on the tiny bundle: every configuration labels every image."""

from __future__ import annotations

import benchmarks.ray_bench as ray_bench


def test_ray_bench_labels_with_each_engine(tiny_bundle, monkeypatch):
    assert ray_bench.configurations(2) == [("local", 1, 2), ("ray", 1, 2), ("ray", 2, 1)]
    monkeypatch.setattr(ray_bench, "cpus", lambda: 1)  # local 1×1 and one Ray actor: ~15 s
    table, raw = ray_bench.run_ray_bench(tiny_bundle.bundle, tiny_bundle.data, "train")
    assert [(r["engine"], r["actors"], r["threads"]) for r in raw] == [
        ("local", 1, 1),
        ("ray", 1, 1),
    ]
    assert all(r["labeled"] == 3 and r["failed"] == 0 for r in raw)
    assert raw[1]["first_image_seconds"] > 0 and raw[0]["first_image_seconds"] is None
    assert all(r["images_per_second"] > 0 for r in raw)
    assert [row[0] for row in table.rows] == ["local", "ray"]

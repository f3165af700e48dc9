"""Labeling speed of each precision variant of a bundle on this CPU (ONNX Runtime).

    python -m benchmarks.precision_bench [--side 448] [--repeats 3] [--bundle DIR]

One image per run, end to end (CAM at every scale with flip, affinity features, the walk, no
CRF) through ``open_bundle(precision=...)``, the same code path as ``psa label --precision``;
the variants alternate, repeat by repeat, and every figure is a median. Without ``--bundle``,
untrained networks (``mobilenet_v2_d12``, random weights) are exported with fp16 and int8
variants (INT8 calibrated with MinMax on 4 synthetic images: timings depend on the graph, not
on its ranges). With a bundle, the precisions it holds are timed.

This measures a CPU, where ONNX Runtime has few float16 kernels (it casts around the rest) and
runs Q/DQ graphs through its own int8 kernels only where its fusions apply: the variants are
made for TensorRT, and their CPU speed is reported as it is, not as a forecast for a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import psa_train  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads; imports no torch)
from benchmarks.label_bench import BACKBONE, bench_image, make_bundle, time_label
from benchmarks.report import Table, cpus, to_text

STAGES = (("CAM, every scale + flip", ("cam",)), ("affinity features", ("features",)))


def make_variant_bundle(work_dir: Path, backbone: str = BACKBONE) -> Path:
    """The untrained bundle of ``label_bench.make_bundle`` with fp16 and int8 graphs added."""
    import json

    from export.precision import Int8Recipe, write_variants
    from psa_infer.bundle import META, load_meta
    from psa_infer.datasets import Sample

    bundle = make_bundle(work_dir, backbone)
    meta = load_meta(bundle)
    if {"fp16", "int8"} <= set(meta.get("precisions", {})):
        return bundle
    from PIL import Image

    calib = []
    for seed in range(4):
        path = work_dir / f"calib_{seed}.png"
        Image.fromarray(bench_image(160, seed)[0]).save(path)
        calib.append(Sample(f"calib_{seed}", path))
    recipe = Int8Recipe(method="minmax")
    meta["precisions"] = write_variants(bundle, meta, ("fp16", "int8"), calib, recipe)
    (bundle / META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    load_meta(bundle)
    return bundle


def run_precision_bench(
    work_dir: Path,
    side: int = 448,
    repeats: int = 3,
    bundle: Path | None = None,
    backbone: str = BACKBONE,
) -> tuple[list[Table], dict]:
    """Median seconds per stage and end to end for each precision of the bundle at ``side``."""
    from psa_infer.bundle import load_meta, open_bundle

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    bundle = Path(bundle) if bundle is not None else make_variant_bundle(work_dir, backbone)
    precisions = ["fp32", *load_meta(bundle).get("precisions", {})]
    threads = cpus()
    opened = {p: open_bundle(bundle, threads=threads, precision=p) for p in precisions}
    img, keys = bench_image(side)
    runs: dict[str, list[dict]] = {p: [] for p in precisions}
    try:
        for p in precisions:
            time_label(opened[p].labeler, img, keys, crf=False)  # warm-up
        for _ in range(repeats):
            for p in precisions:
                runs[p].append(time_label(opened[p].labeler, img, keys, crf=False))
        walk = opened["fp32"].walk
    finally:
        for b in opened.values():
            b.close()
    med = {
        p: {
            **{s: statistics.median(r[s] for r in runs[p]) for s in ("cam", "features")},
            "total": statistics.median(r["total"] for r in runs[p]),
        }
        for p in precisions
    }
    cols = ["precision", *(label + " (s)" for label, _ in STAGES), "end to end (s)", "× fp32"]
    table = Table(f"Labeling one {side}² image per precision (ONNX Runtime, CPU)", cols)
    for p in precisions:
        m = med[p]
        speedup = med["fp32"]["total"] / m["total"] if m["total"] else None
        table.rows.append([p, m["cam"], m["features"], m["total"], speedup])
    table.notes += [
        f"Median of {repeats} runs after a warm-up, the precisions alternating; {threads} "
        f"threads; {walk} walk (float32 for every precision), no CRF. × fp32: fp32's end-to-end "
        "seconds over this row's (above 1 is faster).",
        "The fp16/int8 graphs are made for TensorRT (strongly typed engines); ONNX Runtime's "
        "CPU provider has few float16 kernels and casts around the rest, so these rows say what "
        "a CPU fallback costs, not what a GPU gains.",
    ]
    raw = {"bundle": str(bundle), "side": side, "repeats": repeats, "walk": walk, "runs": runs}
    raw["median"] = med
    return [table], raw


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=448)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bundle", type=Path, help="an exported bundle (default: untrained)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        tables, _ = run_precision_bench(Path(tmp), args.side, args.repeats, args.bundle)
    for t in tables:
        print(to_text(t))


if __name__ == "__main__":
    main()

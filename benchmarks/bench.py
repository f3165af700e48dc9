"""``psa bench``: the random-walk and labeling tables, the targets; JSON, Markdown, plot."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.report import Table, machine, to_text, write_report
from benchmarks.rw_bench import METHODS, SIDES, run_rw_bench

# Issue 5's targets, checked against the random-walk rows at this side.
TARGET_SIDE = 448
TARGET_RATIO = {3: 100.0, 21: 20.0}
BIG_IMAGE_MB = 2048.0


def _find(raw: list[dict], method: str, side: int, channels: int) -> dict | None:
    for r in raw:
        if (r.get("method"), r.get("side"), r.get("channels")) == (method, side, channels):
            return r
    return None


def targets_table(raw: dict) -> Table:
    """Each target of the performance issue with the measured value and whether it holds."""
    rows = []
    rw = raw.get("random_walk", [])
    for channels, want in TARGET_RATIO.items():
        res = _find(rw, "numba", TARGET_SIDE, channels) or _find(rw, "numpy", TARGET_SIDE, channels)
        if res is None or res.get("ratio") is None:
            continue
        same = res.get("label_agreement")
        ok = res["ratio"] >= want and same == 100.0
        what = f"walk {TARGET_SIDE}², C={channels}: ≥ {want:.0f}× dense, identical labels"
        got = f"{res['ratio']:.0f}× ({res['method']}), labels {same:.2f} % equal"
        rows.append([what, got, ok])
    big = raw.get("big_image")
    if big and "peak_rss_mb" in big:
        what = f"{big['side']}² image labeled end to end: peak RSS < {BIG_IMAGE_MB:.0f} MB"
        got = f"{big['peak_rss_mb']:.0f} MB, {big.get('seconds', float('nan')):.1f} s"
        rows.append([what, got, big["peak_rss_mb"] < BIG_IMAGE_MB])
    for res in raw.get("labeling", {}).get("end_to_end", []):
        if {"torch_s", "onnxruntime_s"} <= res.keys():
            what = f"onnxruntime labeling ≥ torch eager speed ({res['side']}²)"
            got = f"torch {res['torch_s']:.2f} s, onnxruntime {res['onnxruntime_s']:.2f} s"
            rows.append([what, got, res["onnxruntime_s"] <= res["torch_s"]])
    seg = raw.get("segmentation")
    if seg and seg.get("ratio") is not None:
        from benchmarks.seg_bench import TARGET_RATIO as SEG_RATIO

        what = f"seg.onnx ≥ {SEG_RATIO:.0f}× faster than the labeling chain ({seg['side']}²)"
        got = f"{seg['ratio']:.0f}× ({seg['seg_s']:.3f} s vs {seg['chain_s']:.2f} s)"
        rows.append([what, got, seg["ratio"] >= SEG_RATIO])
    return Table(
        title="Targets (issues 5 and 13)", columns=["target", "measured", "met"], rows=rows
    )


def run_bench(
    out: Path,
    sides: Sequence[int] = SIDES,
    channel_counts: Sequence[int] = (3, 21),
    methods: Sequence[str] = METHODS,
    repeats: int = 3,
    label_sides: Sequence[int] = (448,),
    big_side: int | None = 2048,
    bundle: Path | None = None,
    dense_max_seconds: float = 60.0,
    echo: Callable[[str], None] = print,
) -> list[Table]:
    """Run every part, print the tables, write ``bench.json``, ``bench.md``, ``rw_scaling.png``."""
    t0 = time.perf_counter()
    tables: list[Table] = []
    raw: dict = {}
    with tempfile.TemporaryDirectory(prefix="psa-bench-") as tmp:
        work = Path(tmp)
        echo("random walk ...")
        rw_tables, rw_raw = run_rw_bench(
            work / "rw",
            sides=sides,
            channel_counts=channel_counts,
            methods=methods,
            repeats=repeats,
            dense_max_seconds=dense_max_seconds,
            progress=echo,
        )
        tables += rw_tables
        raw.update(rw_raw)
        echo(to_text(rw_tables[0]))
        if label_sides or big_side:
            from benchmarks.label_bench import run_big_image, run_label_bench

            if label_sides:
                echo("labeling ...")
                lb_tables, lb_raw = run_label_bench(
                    work / "label", sides=tuple(label_sides), repeats=repeats, bundle=bundle
                )
                tables += lb_tables
                raw["labeling"] = lb_raw
                for t in lb_tables:
                    echo(to_text(t))
                from benchmarks.precision_bench import run_precision_bench

                echo("precision variants ...")
                pr_tables, raw["precisions"] = run_precision_bench(
                    work / "precision", side=label_sides[0], repeats=repeats, bundle=bundle
                )
                tables += pr_tables
                for t in pr_tables:
                    echo(to_text(t))
                from benchmarks.seg_bench import run_seg_bench

                echo("segmentation network vs labeling chain ...")
                sg_tables, raw["segmentation"] = run_seg_bench(
                    work / "seg", side=label_sides[0], repeats=repeats, bundle=bundle
                )
                tables += sg_tables
                for t in sg_tables:
                    echo(to_text(t))
            if big_side:
                echo(f"a {big_side}² image end to end ...")
                raw["big_image"] = run_big_image(work / "big", side=big_side, bundle=bundle)
    targets = targets_table(raw)
    tables.append(targets)
    echo(to_text(targets))
    raw["seconds"] = time.perf_counter() - t0
    info = machine()
    js, md = write_report(out, tables, info, raw)
    from benchmarks.plot import plot_rw_scaling

    png = plot_rw_scaling(raw["random_walk"], out / "rw_scaling.png")
    echo(f"wrote {js}, {md}" + (f", {png}" if png else " (no plot: matplotlib missing)"))
    echo(f"bench took {raw['seconds']:.0f} s")
    return tables

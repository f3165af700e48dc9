"""Labeling throughput of the local loop against Ray actors on this machine.

    python -m benchmarks.ray_bench --bundle DIR --data DATA [--split val] [--out FILE.json]

Each configuration labels the same images into a fresh folder through the code of `psa label`:
the local loop (one process, ``--threads`` = every CPU) and ``--engine ray`` with 1 actor of
every CPU's threads and with one actor per CPU of 1 thread each, each Ray run on a Ray started
for it with as many CPUs. Reported per run: wall seconds, seconds until the first image came
back (Ray's start, the actors' start, their first image) and the rate after it, which is what a
long run on a cluster approaches.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.report import Table, cpus, machine, to_text


def configurations(n_cpus: int) -> list[tuple[str, int, int]]:
    """(engine, actors, threads) of each run."""
    runs = [("local", 1, n_cpus), ("ray", 1, n_cpus)]
    if n_cpus > 1:
        runs.append(("ray", n_cpus, 1))
    return runs


def run_once(bundle: Path, items, out: Path, engine: str, actors: int, threads: int) -> dict:
    """Label ``items`` with one configuration; the stats of label_items / label_on_ray."""
    import os

    from psa_infer.bundle import open_bundle
    from psa_infer.pipeline import LabelJob, label_items
    from psa_infer.ray_engine import BundleOpener, label_on_ray

    if engine == "local":
        os.environ["PSA_RW_THREADS"] = str(threads)
        with open_bundle(bundle, threads=threads) as opened:
            classes = opened.meta["classes"]
            t0 = time.perf_counter()
            stats = label_items(opened.labeler, items, out, class_names=classes, progress=False)
            stats["first_image_seconds"] = None
            stats["wall"] = time.perf_counter() - t0
        return stats
    import ray

    from psa_infer.bundle import load_meta

    classes = load_meta(bundle)["classes"]
    job = LabelJob(out, class_names=classes, info={"backend": "onnxruntime", "walk": "auto"})
    ray.init(num_cpus=actors * threads, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        opener = BundleOpener(str(bundle))
        stats = label_on_ray(opener, job, items, actors=actors, threads=threads, progress=False)
        stats["wall"] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return stats


def run_ray_bench(bundle: Path, data: Path, split: str, limit: int | None = None):
    from psa_infer.bundle import load_meta
    from psa_infer.datasets import resolve_source

    classes = load_meta(bundle)["classes"]
    items = resolve_source(data, classes, split, None, [], False)[:limit]
    table = Table(
        f"Labeling {len(items)} images of {data.name}/{split}: local loop and Ray actors",
        ["engine", "actors × threads", "wall s", "first image s", "images/s after it"],
    )
    raw = []
    work = Path(tempfile.mkdtemp(prefix="ray_bench_"))
    try:
        for engine, actors, threads in configurations(cpus()):
            out = work / f"{engine}_{actors}x{threads}"
            stats = run_once(bundle, items, out, engine, actors, threads)
            first = stats["first_image_seconds"]
            rest = stats["wall"] - (first or 0.0)
            rate = (stats["labeled"] - (1 if first else 0)) / rest
            raw.append({"engine": engine, "actors": actors, "threads": threads, **stats})
            raw[-1]["images_per_second"] = rate
            table.rows.append([engine, f"{actors} × {threads}", stats["wall"], first, rate])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table.notes.append(f"{machine().get('cpu', '?')}, {cpus()} CPUs; bundle {bundle}")
    return table, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    table, raw = run_ray_bench(args.bundle, args.data, args.split, args.limit)
    print(to_text(table))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "runs": raw}, indent=1) + "\n")


if __name__ == "__main__":
    main()

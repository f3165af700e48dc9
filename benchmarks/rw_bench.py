"""The random walk against the reference's dense formulation, image side 224 … 2048.

Every (method, image side, channel count) runs in its own Python process, so the peak memory it
reports belongs to that case alone: the process builds the inputs, runs the method once to warm
up (numba loads its compiled loop, ONNX Runtime builds its session), then resets the kernel's
peak-RSS counter and times ``repeats`` runs. Methods, all starting from the same affinity
features and class scores:

* ``dense`` — the reference (SPEC §5) in numpy float32: the N×N matrix A (unit diagonal,
  ``a**beta`` for every pair), ``T = A / colsum(A)``, 8 squarings, ``v · T`` — on every core
  OpenBLAS may use;
* ``numba`` / ``numpy`` — ``psa_infer.randomwalk.random_walk`` with its compiled loop or its numpy
  loop (``PSA_RW_KERNEL``), pair affinities included;
* ``onnx`` — ``rw.onnx`` (``export.rw_graph``) under ONNX Runtime's CPU provider.

Inputs are deterministic from the image side: a feature map of a few flat regions (objects)
with noise, CAM-like scores peaking inside two of them, and for C = 21 every other channel
filled with weak nonzero scores (the worst case: with the reference's zeros for absent classes
the local walk skips them and costs as C = 3).

    python -m benchmarks.rw_bench --case numba 448 3 3 OUT.npy 1   # one case, JSON on stdout
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import Table, cpus, proc_status_kb

STRIDE = 8
BETA, STEPS, RADIUS = 8.0, 256, 5
METHODS = ("dense", "numba", "numpy", "onnx")
SIDES = (224, 448, 512, 1024, 2048)
# The dense form keeps ~3 N×N float32 matrices alive (A or T, the square, the next square).
DENSE_MATRICES = 3


def inputs(side: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features (16, s, s) and scores (C, s, s) float32 for an image of ``side`` pixels, s = side/8.

    Regions: background plus 5 discs of random centre and radius; features are a random
    16-vector per region plus noise (affinities ~1 inside a region, small across). Scores:
    channel 1 and 2 peak inside two discs, channel 0 is the background score
    ``(1 − max cam)^16`` as the pipeline computes it.
    """
    rng = np.random.default_rng(seed)
    s = -(-side // STRIDE)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    region = np.zeros((s, s), np.int64)
    discs = []
    for r in range(1, 6):
        cy, cx = rng.uniform(0.15, 0.85, 2) * s
        rad = rng.uniform(0.1, 0.25) * s
        region[(yy - cy) ** 2 + (xx - cx) ** 2 < rad**2] = r
        discs.append((cy, cx, rad))
    table = rng.standard_normal((6, 16)).astype(np.float32)
    features = table[region].transpose(2, 0, 1) + 0.15 * rng.standard_normal((16, s, s))
    scores = np.zeros((channels, s, s), np.float32)
    for c, (cy, cx, rad) in zip((1, 2), discs[:2], strict=True):
        # A CAM: a peak at the most discriminative part, half-way across the object.
        d2 = (yy - cy - 0.3 * rad) ** 2 + (xx - cx) ** 2
        scores[c] = np.exp(-d2 / (2 * (0.4 * rad) ** 2))
    scores[0] = (1 - scores[1:3].max(axis=0)) ** 16
    if channels > 3:
        scores[3:] = 0.05 * rng.random((channels - 3, s, s))
    return np.ascontiguousarray(features, np.float32), scores


def dense_walk(scores: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The reference's walk: dense A, column-normalised T, 8 squarings, ``v · T`` (float32)."""
    from psa_infer.randomwalk import pair_affinity, pair_offsets

    c, h, w = scores.shape
    n = h * w
    aff = pair_affinity(features, RADIUS, "full")
    a = np.zeros((n, n), np.float32)
    a[np.arange(n), np.arange(n)] = 1.0
    ys, xs = np.mgrid[0:h, 0:w]
    for k, (dy, dx) in enumerate(pair_offsets(RADIUS).tolist()):
        keep = (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)
        p = (ys * w + xs)[keep]
        q = ((ys + dy) * w + xs + dx)[keep]
        a[p, q] = a[q, p] = aff[k][keep] ** BETA
    a /= a.sum(axis=0, keepdims=True)
    t = a
    for _ in range(8):  # logt = 8: T^256
        t = t @ t
    return (scores.reshape(c, n) @ t).reshape(c, h, w)


def _local_walk(scores: np.ndarray, features: np.ndarray) -> np.ndarray:
    from psa_infer.randomwalk import pair_affinity, random_walk

    aff = pair_affinity(features, RADIUS, "full")
    return random_walk(scores, aff, beta=BETA, steps=STEPS, radius=RADIUS)


def _onnx_walk():
    import onnxruntime as ort

    from export.rw_graph import build_rw_model

    model = build_rw_model(radius=RADIUS, beta=BETA, steps=STEPS, pairs="full")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cpus()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda scores, features: sess.run(None, {"scores": scores, "features": features})[0]


def _status_kb(field: str) -> int:
    return proc_status_kb(field) or 0


def run_case(
    method: str, side: int, channels: int, repeats: int, out: Path | None, warmup: bool = True
) -> dict:
    """One case in this process: ``repeats`` timed runs (after a warm-up) → times, peak memory.

    Reports the process's peak resident memory (libraries, inputs and all) and the walk's own:
    the peak during the warm-up and timed runs above what the process held before them, after
    a walk on a tiny map has initialised the libraries ("walk MB"; an ONNX Runtime arena
    grown in the warm-up counts).
    """
    if method in ("numba", "numpy"):
        os.environ["PSA_RW_KERNEL"] = method
        from psa_infer.randomwalk import walk_kernel

        if walk_kernel() != method:
            raise RuntimeError(f"{method} walk requested, {walk_kernel()} in use")
        fn = _local_walk
    elif method == "onnx":
        fn = _onnx_walk()
    elif method == "dense":
        fn = dense_walk
    else:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    # A walk on a tiny map first: libraries initialise (OpenBLAS's buffers, numba's compiled
    # loop, ONNX Runtime's session), which is no part of the walk's memory.
    fn(*reversed(inputs(64, channels)))
    features, scores = inputs(side, channels)
    hwm_start_kb = _status_kb("VmHWM")
    before_kb = _status_kb("VmRSS")
    try:  # reset the peak (VmHWM) to the current RSS: from here on the peak is the walk's
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    warm = None
    if warmup:
        t = time.perf_counter()
        fn(scores, features)
        warm = time.perf_counter() - t
    times = []
    result = None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn(scores, features)
        times.append(time.perf_counter() - t)
    peak_kb = _status_kb("VmHWM")
    if out is not None:
        np.save(out, np.asarray(result, np.float32))
    return {
        "method": method,
        "side": side,
        "channels": channels,
        "grid": list(scores.shape[1:]),
        "times_s": times,
        "median_s": float(np.median(times)),
        "warmup_s": warm,
        "rss_before_mb": before_kb / 1024,
        "peak_rss_mb": max(peak_kb, hwm_start_kb) / 1024,
        "peak_extra_mb": max(0.0, (peak_kb - before_kb) / 1024) if reset else None,
        "threads": cpus(),
    }


def _spawn(method: str, side: int, channels: int, repeats: int, out: Path, warmup: bool) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.rw_bench", "--case", method, str(side)]
    cmd += [str(channels), str(repeats), str(out), str(int(warmup))]
    root = Path(__file__).resolve().parents[1]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"rw bench case {method} {side} C={channels} failed: {tail[0]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def dense_bytes(side: int) -> int:
    n = (-(-side // STRIDE)) ** 2
    return DENSE_MATRICES * n * n * 4


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 0


def run_rw_bench(
    work_dir: Path,
    sides=SIDES,
    channel_counts=(3, 21),
    methods=METHODS,
    repeats: int = 3,
    dense_max_seconds: float = 60.0,
    progress=print,
) -> tuple[list[Table], dict]:
    """The random-walk table (one row per side × C × method) and the raw measurements.

    The dense baseline is skipped where its matrices would not fit in the memory available, or
    where its O(N³) time, extrapolated from the largest side measured, exceeds
    ``dense_max_seconds`` per run; the table says which and why.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    raw: list[dict] = []
    rows = []
    notes = []
    for channels in channel_counts:
        dense_fit = None  # (n, seconds) of the largest dense run: for the O(N³) estimate
        for side in sides:
            n = (-(-side // STRIDE)) ** 2
            results: dict[str, dict] = {}
            for method in methods:
                skip = None
                if method == "dense":
                    need = dense_bytes(side)
                    if need > 0.8 * _mem_available():
                        skip = (
                            f"needs {need / 2**30:.0f} GB, {_mem_available() / 2**30:.0f} GB free"
                        )
                    elif dense_fit is not None:
                        est = dense_fit[1] * (n / dense_fit[0]) ** 3
                        if est > dense_max_seconds:
                            skip = f"~{est / 60:.0f} min per run (O(N³) from the last size)"
                if skip:
                    results[method] = {"method": method, "side": side, "skipped": skip}
                    raw.append(results[method])
                    notes.append(f"dense at {side}², C={channels} skipped: {skip}.")
                    continue
                out = work_dir / f"rw_{method}_{side}_{channels}.npy"
                # Large cases: one timed run; numpy and the dense form have nothing to warm up.
                reps = 1 if side > 512 else repeats
                warmup = method in ("numba", "onnx") or (method == "numpy" and side <= 512)
                progress(f"  random walk: {method:5s} {side:4d}² C={channels:2d} ...")
                res = _spawn(method, side, channels, reps, out, warmup)
                res["output"] = str(out)
                results[method] = res
                raw.append(res)
                if method == "dense":
                    dense_fit = (n, res["median_s"])
            rows.extend(_rows(results, side, channels))
    table = Table(
        title="Random walk (t = 256, β = 8, radius 5): median seconds per image",
        columns=[
            "side",
            "C",
            "grid",
            "method",
            "median s",
            "× vs dense",
            "max |Δscore|",
            "labels =",
            "walk MB",
            "process MB",
        ],
        rows=rows,
        notes=[
            "× vs dense: the dense baseline's median over this method's, measured in the same run.",
            "max |Δscore| and labels = (argmax agreement, %) against the dense baseline, or "
            "against the numba walk where the baseline was skipped.",
            "walk MB: peak resident memory during the warm-up and timed runs above what the "
            "process held before them (libraries initialised by a walk on a tiny map first); "
            "process MB: the whole process's peak. Each case runs in a fresh process.",
            "Sides above 512: one timed run after the warm-up (numba, onnx) or none (numpy).",
            "C = 21: every channel nonzero (worst case). With the reference's all-zero absent "
            "classes the local walks skip them and cost what C = 3 costs; the dense form does not.",
            "The local walks include the pair affinities (from the features); so does the "
            "baseline, and its N×N matrix assembly.",
        ]
        + sorted(set(notes)),
    )
    return [table], {"random_walk": raw}


def _rows(results: dict[str, dict], side: int, channels: int) -> list[list]:
    base = results.get("dense")
    have_base = base is not None and "skipped" not in base
    ref = base if have_base else results.get("numba")
    ref_out = np.load(ref["output"]) if ref and "output" in ref else None
    rows = []
    for method, res in results.items():
        grid = "×".join(str(x) for x in res.get("grid", [])) or "—"
        if "skipped" in res:
            rows.append([side, channels, grid, method, None, None, None, None, None, None])
            continue
        ratio = base["median_s"] / res["median_s"] if have_base else None
        diff = agree = None
        if ref_out is not None and res is not ref:
            got = np.load(res["output"])
            diff = float(np.abs(got - ref_out).max())
            agree = float((got.argmax(0) == ref_out.argmax(0)).mean() * 100)
        res.update(ratio=ratio, max_abs_diff=diff, label_agreement=agree)
        rows.append(
            [
                side,
                channels,
                grid,
                method,
                res["median_s"],
                ratio,
                diff,
                agree,
                res["peak_extra_mb"],
                res["peak_rss_mb"],
            ]
        )
    return rows


def main(argv: list[str]) -> None:
    if len(argv) == 7 and argv[0] == "--case":
        method, side, channels, repeats, out, warmup = argv[1:]
        res = run_case(method, int(side), int(channels), int(repeats), Path(out), warmup == "1")
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tables, _ = run_rw_bench(Path(tmp))
    from benchmarks.report import to_text

    for t in tables:
        print(to_text(t))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Labeling one image, per stage and end to end: torch eager vs ONNX Runtime; big-image memory.

    python -m benchmarks.label_bench [--sides 448] [--repeats 3] [--bundle DIR] [--big 2048]
                                     [--agreement 1024] [--out DIR]

Each labeler runs the reference's recipe (scales 1.0, 0.5, 1.5, 2.0, each batched with its
mirror image; the random walk; the dense CRF when pydensecrf2 is installed) through the same
``psa_infer.pipeline.Labeler``; only the two networks differ: torch eager modules
(``psa_train.label.torch_labeler``) or the ONNX Runtime sessions of a bundle
(``psa_infer.bundle.open_bundle``). Per-stage seconds come from ``Labeler.label(times=...)``,
i.e. from the code path that ``psa label`` runs. Without ``--bundle``, untrained networks
(``mobilenet_v2_d12``, random weights) are built and exported into the work folder: timings do
not depend on the weights. With a bundle, the torch side uses untrained networks of the
bundle's backbone and classes. The two labelers alternate, repeat by repeat, so that a change
in the machine's load hits both; every figure is a median.

``run_big_image`` labels one large image (ONNX Runtime, walk, no CRF) in a fresh process and
reports its peak resident memory; ``run_tile_agreement`` measures what tiling the network
inputs (``Labeler.tile``) changes in the labels, at a size where the untiled path also fits.

torch is imported only inside functions and after psa_train: psa_train sets
OMP_WAIT_POLICY=PASSIVE, which must happen before torch loads OpenMP (see export_bench.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import psa_train  # noqa: F401  (sets OMP_WAIT_POLICY, which must precede torch; imports no torch)
from benchmarks.report import (
    Table,
    cpus,
    machine,
    peak_rss_mb,
    proc_status_kb,
    to_text,
    write_report,
)
from psa_infer.randomwalk import walk_kernel

ROOT = Path(__file__).resolve().parent.parent
BACKBONE = "mobilenet_v2_d12"
NUM_CLASSES = 6
SCALES = (1.0, 0.5, 1.5, 2.0)  # the reference's multi-scale recipe (SPEC §2)
BACKENDS = ("torch", "onnxruntime")
# Table rows: (label, stages of Labeler.label summed into it); see psa_infer.pipeline.STAGES.
STAGE_ROWS = (
    ("normalise image", ("normalize",)),
    ("CAM, 4 scales + flip", ("cam",)),
    ("affinity features", ("features",)),
    ("pair affinities + random walk", ("walk",)),
    ("upsample + argmax", ("upsample", "argmax")),
    ("dense CRF", ("crf",)),
)


def has_crf() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def bench_image(side: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """A synthetic photo-like image with exactly 2 present classes, resized to side × side.

    Drawn at ``min(side, 448)`` pixels by ``psa_train.synthetic.render_image`` (photo
    background, textured objects, 1-3 classes; the first seed with 2 classes is taken) and
    resized with PIL bicubic, so every side shows the same scene. Returns (image, class ids).
    """
    from PIL import Image

    from psa_train.synthetic import render_image

    for s in range(seed, seed + 1000):
        r = render_image(np.random.default_rng([s]), min(side, 448), NUM_CLASSES)
        if len(set(r.classes)) == 2:
            break
    img = np.asarray(Image.fromarray(r.image).resize((side, side), Image.BICUBIC))
    return np.ascontiguousarray(img), sorted(set(r.classes))


# ---------------------------------------------------------------------------- networks


def make_checkpoints(work_dir: Path, backbone: str, classes: list[str]) -> tuple[Path, Path]:
    """Untrained CAM and affinity checkpoints (seed 0) in ``work_dir``; returns their paths."""
    import torch

    from psa_train.checkpoint import save_checkpoint
    from psa_train.train_aff import build_aff_model
    from psa_train.train_cam import build_cam_model

    torch.manual_seed(0)
    meta = {
        "backbone": backbone,
        "classes": classes,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    cam = build_cam_model(backbone, None, len(classes) - 1)
    aff = build_aff_model(backbone, None)
    cam_ckpt = save_checkpoint(work_dir / "cam", cam.state_dict(), {**meta, "kind": "cam"})
    aff_ckpt = save_checkpoint(work_dir / "aff", aff.state_dict(), {**meta, "kind": "aff"})
    return cam_ckpt, aff_ckpt


def make_bundle(work_dir: Path, backbone: str = BACKBONE) -> Path:
    """Untrained networks exported to ``work_dir/bundle`` with the reference's recipe (reused
    when it is there already)."""
    from export.bundle import export_bundle
    from psa_infer.bundle import BundleError, load_meta
    from psa_train.config import LabelConfig, MakeCamConfig

    out = work_dir / "bundle"
    if out.exists():
        try:
            meta = load_meta(out)
            if meta["sources"]["cam"]["backbone"] == backbone:
                return out
        except BundleError:
            pass
    classes = ["background", *(f"class{i}" for i in range(1, NUM_CLASSES + 1))]
    cam_ckpt, aff_ckpt = make_checkpoints(work_dir, backbone, classes)
    cfg = LabelConfig(device="cpu")
    return export_bundle(cam_ckpt, aff_ckpt, out, cfg, MakeCamConfig(scales=SCALES, flip=True))


def make_labelers(work_dir: Path, bundle: Path, threads: int) -> dict:
    """Backend name → Labeler. Both use the bundle's preprocessing and walk settings."""
    import torch

    from psa_infer.bundle import open_bundle
    from psa_train.config import LabelConfig, MakeCamConfig
    from psa_train.label import torch_labeler

    ort = open_bundle(bundle, backend="onnxruntime", walk="auto", threads=threads)
    meta = ort.meta
    torch_dir = work_dir / "torch"
    torch_dir.mkdir(parents=True, exist_ok=True)
    backbone = meta["sources"]["cam"]["backbone"]
    cam_ckpt, aff_ckpt = make_checkpoints(torch_dir, backbone, list(meta["classes"]))
    lab, _ = torch_labeler(cam_ckpt, aff_ckpt, LabelConfig(device="cpu"), MakeCamConfig())
    torch.set_num_threads(threads)  # after torch_labeler, which sets its own default
    o = ort.labeler
    lab = dataclasses.replace(
        lab, mean=o.mean, std=o.std, scales=o.scales, flip=o.flip, walk_params=o.walk_params
    )
    return {"torch": lab, "onnxruntime": o, "_bundle": ort}


# ---------------------------------------------------------------------------- timing


def time_label(labeler, img: np.ndarray, keys: list[int], crf: bool) -> dict[str, float]:
    """One ``label`` call: seconds per stage plus ``total``."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    labeler.label(img, keys, crf=crf, times=times)
    times["total"] = time.perf_counter() - t
    return times


def _median(runs: list[dict], stages: tuple[str, ...]) -> float | None:
    vals = [sum(r[s] for s in stages) for r in runs if all(s in r for s in stages)]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def run_label_bench(
    work_dir: Path,
    sides=(448,),
    repeats: int = 3,
    bundle: Path | None = None,
    progress: bool = True,
    backbone: str = BACKBONE,
) -> tuple[list[Table], dict]:
    """Label one test image per side with torch eager and ONNX Runtime; median seconds per stage.

    ``work_dir`` receives the untrained bundle (when ``bundle`` is None) and the torch side's
    checkpoints. Each labeler labels the image once to warm up, then ``repeats`` times,
    alternating with the other. Returns the table (per side and stage: torch s, ONNX Runtime s,
    torch / ONNX Runtime; end to end with and without the CRF; images/s) and the raw seconds.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    threads = cpus()
    bundle = Path(bundle) if bundle is not None else make_bundle(work_dir, backbone)
    labelers = make_labelers(work_dir, bundle, threads)
    opened = labelers.pop("_bundle")
    crf = has_crf()
    raw: dict = {
        "bundle": str(bundle),
        "backbone": opened.meta["sources"]["cam"]["backbone"],
        "scales": list(opened.labeler.scales),
        "flip": opened.labeler.flip,
        "walk": opened.walk,
        "threads": threads,
        "crf": crf,
        "repeats": repeats,
        "sides": {},
        "end_to_end": [],  # per side: median seconds per image of each backend
    }
    columns = ["side", "stage", "torch (s)", "onnxruntime (s)", "torch / onnxruntime"]
    table = Table("Labeling one image: torch eager vs ONNX Runtime (CPU)", columns)
    try:
        for side in sides:
            img, keys = bench_image(side)
            runs: dict[str, list[dict]] = {b: [] for b in BACKENDS}
            for b in BACKENDS:
                time_label(labelers[b], img, keys, crf)  # warm-up: allocations, lazy init
            for r in range(repeats):
                for b in BACKENDS:
                    runs[b].append(time_label(labelers[b], img, keys, crf))
                    if progress:
                        total = runs[b][-1]["total"]
                        print(
                            f"label_bench: {side} px, {b}, run {r + 1}: {total:.2f} s", flush=True
                        )
            raw["sides"][str(side)] = {"classes": keys, **runs}
            table.rows += _side_rows(side, runs, crf)
            raw["end_to_end"].append(_end_to_end(side, runs))
    finally:
        opened.close()
    table.notes += [
        f"One synthetic image (2 classes) per side; {raw['backbone']} networks; scales "
        f"{', '.join(str(s) for s in raw['scales'])}, each batched with its mirror image (the "
        "scales cannot share a batch: their sizes differ); median of "
        f"{repeats} runs after a warm-up, the two labelers alternating.",
        "Timings do not depend on the weights: without --bundle the networks are untrained "
        "(random weights), and the torch side always is.",
        f"Threads: torch.set_num_threads({threads}), ONNX Runtime intra-op {threads}, the "
        f"walk's kernel {threads} (the CPUs this process may use); load average at the end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (the machine may be shared).",
        f"Everything but the two networks is the same code for both backends: the walk "
        f"({raw['walk']} walk, {walk_kernel()} kernel), the upsampling, the dense CRF ("
        + ("pydensecrf2, 10 iterations)." if crf else "pydensecrf2 not installed: skipped)."),
    ]
    return [table], raw


def _end_to_end(side: int, runs: dict[str, list[dict]]) -> dict:
    """Median seconds per image of each backend, without and with the CRF."""
    out: dict = {"side": side}
    for b in BACKENDS:
        out[f"{b}_s"] = statistics.median(r["total"] - r.get("crf", 0.0) for r in runs[b])
        out[f"{b}_crf_s"] = statistics.median(r["total"] for r in runs[b])
    return out


def _side_rows(side: int, runs: dict[str, list[dict]], crf: bool) -> list[list]:
    rows = []
    for label, stages in STAGE_ROWS:
        if stages == ("crf",) and not crf:
            continue
        t, o = (_median(runs[b], stages) for b in BACKENDS)
        rows.append([side, label, t, o, _ratio(t, o)])
    # End to end: the whole label() call, and the same without the CRF stage.
    ends = _end_to_end(side, runs)
    keys = [("end to end, walk, no CRF", "_s")]
    if crf:
        keys.append(("end to end, walk + CRF", "_crf_s"))
    for label, key in keys:
        t, o = (ends[b + key] for b in BACKENDS)
        rows.append([side, label + " (s)", t, o, _ratio(t, o)])
        rows.append([side, label + " (images/s)", 1 / t, 1 / o, None])
    return rows


# ---------------------------------------------------------------------------- memory


def own_peak_rss_mb() -> float:
    """This process's peak resident memory in MB, counted from its own start.

    Linux's ``ru_maxrss`` of a child process starts at its parent's resident size at the fork
    (exec records the forked image's high-water mark), so a child of a large benchmark process
    would report at least the parent's size; ``VmHWM`` belongs to the running program alone.
    Falls back to ``ru_maxrss`` where /proc is missing.
    """
    hwm = proc_status_kb("VmHWM")
    return hwm / 1024 if hwm is not None else peak_rss_mb()


def _big_image_child(bundle: str, side: int, tile: str) -> dict:
    """In a fresh process: label one side × side image (ONNX Runtime, walk, no CRF)."""
    from psa_infer.bundle import open_bundle

    img, keys = bench_image(side)
    opened = open_bundle(bundle, backend="onnxruntime", threads=cpus())
    lab = opened.labeler
    lab.tile = None if tile == "none" else int(tile) if tile != "default" else lab.tile
    rss_open = own_peak_rss_mb()
    times: dict[str, float] = {}
    t = time.perf_counter()
    label = lab.label(img, keys, times=times)
    seconds = time.perf_counter() - t
    opened.close()
    return {
        "side": side,
        "tile": lab.tile,
        "tile_margin": lab.tile_margin,
        "seconds": seconds,
        "stages": times,
        "peak_rss_mb": own_peak_rss_mb(),
        "ru_maxrss_mb": peak_rss_mb(),  # includes the parent's size at the fork (see above)
        "rss_after_open_mb": rss_open,
        "torch_loaded": "torch" in sys.modules,
        "label_classes": [int(c) for c in np.unique(label)],
    }


def run_big_image(
    work_dir: Path, side: int = 2048, bundle: Path | None = None, tile: int | None | str = "default"
) -> dict:
    """Label a side × side image end to end in a fresh process; seconds and peak RSS (MB).

    ONNX Runtime backend, the walk as ``open_bundle`` picks it, no CRF; ``tile`` "default"
    keeps the Labeler's default, None labels without tiling (a 2048² image then needs ~17 GB).
    The child imports no torch; its peak resident memory (``VmHWM``, see ``own_peak_rss_mb``)
    covers everything from interpreter start-up to the label map.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    bundle = Path(bundle) if bundle is not None else make_bundle(work_dir)
    arg = "none" if tile is None else str(tile)
    cmd = [sys.executable, "-m", "benchmarks.label_bench", "_big", str(bundle), str(side), arg]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"label_bench child failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def big_image_table(results: list[dict]) -> Table:
    cols = ["image", "tile / margin (px)", "seconds", "peak RSS (MB)", "RSS after loading (MB)"]
    table = Table("A large image, end to end (ONNX Runtime, walk, no CRF), fresh process", cols)
    for r in results:
        tile = "none" if r["tile"] is None else f"{r['tile']} / {r['tile_margin']}"
        size = f"{r['side']}x{r['side']}"
        table.rows.append([size, tile, r["seconds"], r["peak_rss_mb"], r["rss_after_open_mb"]])
    table.notes.append(
        "Peak resident memory (VmHWM) of a child process that imports no torch. Network "
        "inputs with a side above the tile size (the reference's scale 2.0 makes a 4096 px input "
        "of a 2048 px image) run in overlapping tiles (psa_infer.cam.forward_tiled)."
    )
    table.notes.append(
        "ONNX Runtime's defaults (CPU memory arena + memory patterns) keep memory planned for "
        "every input shape a session has seen: 5 tile shapes of ~1200² cost 1.46 GB in one "
        "session vs 0.92 GB without memory patterns, at the same speed (measured once on this "
        "machine); without the arena large inputs ran ~2x slower."
    )
    return table


def run_tile_agreement(
    work_dir: Path, side: int = 1024, bundle: Path | None = None, tile: int | None = None
) -> dict:
    """Labels and CAMs of one side × side image with and without tiling (ONNX Runtime).

    ``tile`` None = the Labeler's default. Returns the pixel agreement of the label maps (%),
    the largest CAM difference (CAMs are normalised to max 1) and the seconds of each path.
    """
    from psa_infer.bundle import open_bundle
    from psa_infer.cam import multiscale_cam

    bundle = Path(bundle) if bundle is not None else make_bundle(Path(work_dir))
    img, keys = bench_image(side)
    with open_bundle(bundle, threads=cpus()) as opened:
        tiled = opened.labeler
        if tile is not None:
            tiled = dataclasses.replace(tiled, tile=tile)
        whole = dataclasses.replace(tiled, tile=None)
        out = {"side": side, "tile": tiled.tile, "tile_margin": tiled.tile_margin}
        labels, cams = {}, {}
        for name, lab in (("tiled", tiled), ("untiled", whole)):
            t = time.perf_counter()
            cams[name] = multiscale_cam(
                lab.cam_forward, img, keys, lab.scales, lab.mean, lab.std, lab.flip, lab.tile,
                lab.tile_margin,
            )  # fmt: skip
            labels[name] = lab.label(img, keys, cams=cams[name])
            out[f"{name}_seconds"] = time.perf_counter() - t
    out["label_agreement_pct"] = 100 * float((labels["tiled"] == labels["untiled"]).mean())
    out["max_cam_diff"] = float(np.abs(cams["tiled"] - cams["untiled"]).max())
    return out


def agreement_table(results: list[dict]) -> Table:
    cols = ["image", "tile / margin (px)", "label agreement (%)", "max |Δ CAM|"]
    table = Table("What tiling the network inputs changes (ONNX Runtime, walk, no CRF)", cols)
    for r in results:
        size = f"{r['side']}x{r['side']}"
        tile = f"{r['tile']} / {r['tile_margin']}"
        table.rows.append([size, tile, r["label_agreement_pct"], r["max_cam_diff"]])
    table.notes.append(
        "Tiled vs untiled labels of the same image; CAMs are normalised to max 1. Outputs "
        "differ only where the network looks further than the margin across a tile border."
    )
    return table


# ---------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_big"]:  # the child of run_big_image
        print(json.dumps(_big_image_child(argv[1], int(argv[2]), argv[3])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", default="448", help="image sides, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bundle", type=Path, help="an exported bundle (default: untrained)")
    ap.add_argument("--backbone", default=BACKBONE, help="for the untrained networks")
    ap.add_argument("--big", type=int, default=0, help="also label one image of this side")
    ap.add_argument("--agreement", type=int, default=0, help="tiled vs untiled at this side")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, help="write bench.json and bench.md here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        sides = [int(s) for s in args.sides.split(",") if s]
        tables, raw = run_label_bench(work, sides, args.repeats, args.bundle, True, args.backbone)
        if args.big:
            raw["big_image"] = run_big_image(work, args.big, args.bundle)
            tables.append(big_image_table([raw["big_image"]]))
        if args.agreement:
            raw["tile_agreement"] = run_tile_agreement(work, args.agreement, args.bundle)
            tables.append(agreement_table([raw["tile_agreement"]]))
    for t in tables:
        print(to_text(t))
    if args.out:
        write_report(args.out, tables, machine(), {"label": raw})


if __name__ == "__main__":
    main()

"""GPU acceptance check: ``make gpu-check`` (``python -m benchmarks.gpu_check [--out FILE]``).

On a machine with CUDA and a CUDA build of torch (TensorRT optional), with nothing to download:

1. ``tests`` — the ``gpu``-marked tests (``tests/test_gpu.py``): a training step on CUDA
   against CPU, the torch labeler on CUDA against CPU (tolerances written beside them);
2. ``train_cam`` — a synthetic data set (``psa make-synthetic``, 160 px) and one ``psa
   train-cam`` epoch on CUDA, timed: MobileNetV2 at stride 8 with random weights (the time
   does not depend on the weights, and there is nothing to download);
3. ``label`` — ``Labeler.label``'s per-stage seconds, torch labeler on CUDA, the reference's
   four scales with flip;
4. ``tensorrt`` — where TensorRT imports: the bundle exported from those checkpoints (with its
   fp16/int8 variants where ``psa export --precision`` can make them), ``psa build-engine``
   for every precision the bundle holds, and each engine set's labels against the torch
   labels on CUDA (pixel agreement) with its per-stage seconds.

Writes one JSON (default ``benchmarks/gpu_check.json``): the machine, and each step's status
("ok", "failed", "skipped" with the reason), seconds and results. A step that would start after
the time budget (default 420 s) is skipped, so the whole finishes in under 8 minutes. Exit
status: 0 every step that ran passed, 1 one failed, 2 no CUDA here (one line says so).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import psa_train  # noqa: F401  (sets OMP_WAIT_POLICY, which must precede torch; imports no torch)

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = 2
BUDGET_S = 420.0
IMAGES = 40  # synthetic images (30 train, 10 val), 160 px
LABEL_IMAGES = 8
PRECISIONS = ("fp32", "fp16", "int8")


class Budget:
    """Runs named steps while time is left; records each one's status and seconds."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock, self.deadline = clock, clock() + seconds
        self.steps: dict[str, dict] = {}

    def run(self, name: str, fn: Callable[[], dict | None]) -> dict | None:
        """``fn()``'s results, recorded as ``steps[name]``; None if skipped or failed."""
        start = self.clock()
        if start >= self.deadline:
            self.steps[name] = {"status": "skipped", "reason": "time budget spent"}
            return None
        try:
            result = fn() or {}
        except Skip as e:
            self.steps[name] = {"status": "skipped", "reason": str(e)}
            return None
        except Exception as e:  # a check that fails is a result, not a crash of the script
            self.steps[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
            return None
        self.steps[name] = {"status": "ok", "seconds": round(self.clock() - start, 2), **result}
        return result

    @property
    def failed(self) -> bool:
        return any(s["status"] == "failed" for s in self.steps.values())


class Skip(Exception):
    """A step that cannot run on this machine (e.g. no TensorRT): skipped with the reason."""


def cuda_status() -> tuple[bool, str]:
    """(CUDA usable, a line describing it)."""
    try:
        import torch
    except ImportError:
        return False, "gpu-check: torch is not installed (make install TORCH=<a CUDA build>)"
    if not torch.cuda.is_available():
        return False, (
            f"gpu-check: no CUDA device found (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False) — run it on a machine with an NVIDIA GPU and a "
            "CUDA build of torch, e.g. make gpu-check TORCH='torch --index-url ...'"
        )
    return True, f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"


def stage_medians(times: list[dict[str, float]]) -> dict[str, float]:
    """Per-image stage seconds → the median of each stage (and of their sum, ``total``)."""
    stages = sorted({k for t in times for k in t})
    out = {k: statistics.median(t.get(k, 0.0) for t in times) for k in stages}
    out["total"] = statistics.median(sum(t.values()) for t in times)
    return {k: round(v, 4) for k, v in out.items()}


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Share of pixels with the same label over all image pairs, in [0, 1]."""
    same = sum(int((x == y).sum()) for x, y in zip(a, b, strict=True))
    return same / max(1, sum(x.size for x in a))


def psa(*args: str, timeout: float = 300) -> str:
    """Run a ``psa`` command in a fresh interpreter; its stdout, or RuntimeError with stderr."""
    cmd = [sys.executable, "-c", "from cli import main; main()", *map(str, args)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"psa {args[0]}: exit {r.returncode}: {r.stderr.strip()[-1500:]}")
    return r.stdout


# ---------------------------------------------------------------------------- steps


def run_tests() -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-rs"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
    if r.returncode != 0 or "skipped" in summary:
        raise RuntimeError(f"gpu tests: {summary}")
    return {"summary": summary}


def train_cam_epoch(work: Path) -> dict:
    data, run = work / "data", work / "cam"
    psa("make-synthetic", data, "-n", IMAGES, "--seed", 0)
    args = ["train-cam", data, "-o", run, "--config", ROOT / "configs/synthetic_demo.yaml"]
    args += ["--backbone", "mobilenet_v2_d12", "--weights", "none", "--epochs", 1]
    start = time.perf_counter()
    psa(*args, "--device", "cuda")
    return {"epoch_seconds": round(time.perf_counter() - start, 2), "images": IMAGES}


def _aff_checkpoint(work: Path) -> Path:
    """A random-weight affinity checkpoint beside the trained CAM one (labeling time does not
    depend on the weights; training one would need the CAM and CRF stages first)."""
    from psa_train.checkpoint import load_checkpoint, save_checkpoint
    from psa_train.train_aff import build_aff_model

    _, meta = load_checkpoint(work / "cam" / "cam.safetensors", kind="cam")
    model = build_aff_model(meta["backbone"], None)
    keep = {k: meta[k] for k in ("backbone", "classes", "mean", "std")}
    return save_checkpoint(work / "aff", model.state_dict(), {**keep, "kind": "aff"})


def _images(work: Path) -> list:
    from psa_infer.datasets import load_image

    paths = sorted((work / "data" / "JPEGImages").glob("*.jpg"))[:LABEL_IMAGES]
    return [load_image(p) for p in paths]


def _label_all(labeler, images) -> tuple[list[np.ndarray], dict]:
    labeler.label(images[0], [1, 2])  # warm-up: CUDA context, cuDNN / TensorRT tactics
    labels, times = [], []
    for img in images:
        t: dict[str, float] = {}
        labels.append(labeler.label(img, [1, 2], times=t))
        times.append(t)
    return labels, stage_medians(times)


def label_torch(work: Path, state: dict) -> dict:
    from psa_train.config import LabelConfig, MakeCamConfig
    from psa_train.label import torch_labeler

    aff = _aff_checkpoint(work)
    cam_cfg = MakeCamConfig(scales=(1.0, 0.5, 1.5, 2.0), flip=True)
    labeler, _ = torch_labeler(
        work / "cam" / "cam.safetensors", aff, LabelConfig(device="cuda"), cam_cfg
    )
    state["labels"], medians = _label_all(labeler, _images(work))
    state["aff"] = aff
    return {"stage_median_seconds": medians, "images": LABEL_IMAGES}


def tensorrt_engines(work: Path, state: dict) -> dict:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        raise Skip("TensorRT is not installed")
    if "labels" not in state:
        raise Skip("no torch labels to compare with (the label step did not finish)")
    from psa_infer.bundle import load_meta, open_bundle

    bundle = work / "bundle"
    base = ["export", "--cam", work / "cam" / "cam.safetensors", "--aff", state["aff"]]
    base += ["-o", bundle, "--set", "make_cam.scales=[1.0,0.5,1.5,2.0]"]
    try:  # the variants, where this psa export makes them
        psa(
            *base, "--precision", ",".join(PRECISIONS), "--calib", work / "data", "--calib-limit", 8
        )
    except RuntimeError:
        psa(*base)
    made = ["fp32", *load_meta(bundle).get("precisions", {})]
    images, out = _images(work), {}
    for precision in made:
        start = time.perf_counter()
        psa("build-engine", bundle, "--precision", precision, "--profile", "32,160,512")
        built = round(time.perf_counter() - start, 1)
        with open_bundle(bundle, "tensorrt", precision=precision) as opened:
            labels, medians = _label_all(opened.labeler, images)
        out[precision] = {
            "build_seconds": built,
            "label_agreement_vs_torch_cuda": round(agreement(labels, state["labels"]), 5),
            "stage_median_seconds": medians,
        }
    fp32 = out["fp32"]["label_agreement_vs_torch_cuda"]
    if fp32 < 0.99:  # FP32 engines vs FP32 torch: the labels must agree (DESIGN's ladder)
        raise RuntimeError(f"TensorRT fp32 labels agree with torch on {fp32:.2%} of pixels")
    return {"precisions": out}


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
    }
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_check.json")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help="seconds (default 420)")
    args = ap.parse_args(argv)
    ok, line = cuda_status()
    print(line, flush=True)
    if not ok:
        return NO_CUDA
    budget, state = Budget(args.budget), {}
    with tempfile.TemporaryDirectory(prefix="psa-gpu-check-") as tmp:
        work = Path(tmp)
        budget.run("tests", run_tests)
        budget.run("train_cam", lambda: train_cam_epoch(work))
        budget.run("label", lambda: label_torch(work, state))
        budget.run("tensorrt", lambda: tensorrt_engines(work, state))
    report = {"machine": machine(), "budget_seconds": args.budget, "steps": budget.steps}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name, step in budget.steps.items():
        print(f"{name:10} {step['status']:8} {step.get('reason') or step.get('error') or ''}")
    print(f"wrote {args.out}")
    return 1 if budget.failed else 0


if __name__ == "__main__":
    sys.exit(main())

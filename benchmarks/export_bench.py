"""Export and runtime numbers: exporter time, torch vs ONNX Runtime parity, labeling time.

    python benchmarks/export_bench.py [--data DIR] [--repeats N] [--backbones tiny,mobilenet_v2]

Untrained networks are enough (timings do not depend on the weights; parity is also measured
with MobileNetV2's ImageNet backbone, whose activations have realistic magnitudes). DATA is a
synthetic set (``psa make-synthetic DIR -n 20 --size 160``); it is made in a temporary folder
when not given. Every time is the median of ``--repeats`` runs (the machine may be shared).
Prints three tables.

torch is imported only inside the functions, after psa_train: psa_train sets
OMP_WAIT_POLICY=PASSIVE, which must happen before torch loads OpenMP (with torch imported
first, the torch labeler measured 10.5 s per image instead of 0.8 s on this 2-core machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from export.bundle import export_bundle
from export.onnx_export import export_aff, export_cam
from psa_infer.bundle import open_bundle
from psa_infer.cam import multiscale_cam
from psa_infer.datasets import load_image, open_dataset
from psa_infer.pipeline import walk_scores
from psa_train.checkpoint import save_checkpoint
from psa_train.config import LabelConfig, MakeCamConfig
from psa_train.label import torch_labeler
from psa_train.train_aff import build_aff_model
from psa_train.train_cam import build_cam_model

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
SIZES = [(61, 47), (160, 120)]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def exporter_times(backbone: str, repeats: int, tmp: Path) -> list[tuple]:
    cam, aff = build_cam_model(backbone, None, 6).eval(), build_aff_model(backbone, None).eval()
    rows = []
    for exporter, opset in (("torchscript", 17), ("dynamo", 18)):
        for name, net, fn in (("cam", cam, export_cam), ("aff", aff, export_aff)):
            path = tmp / f"{backbone}_{exporter}_{name}.onnx"
            t = median_time(lambda: fn(net, path, opset, exporter), repeats)  # noqa: B023
            rows.append((backbone, exporter, name, opset, t))
    return rows


def parity(backbone: str, weights: str | None, tmp: Path) -> list[tuple]:
    import torch

    torch.manual_seed(0)
    cam = build_cam_model(backbone, weights, 6).eval()
    aff = build_aff_model(backbone, weights).eval()
    cam_path, aff_path = tmp / "p_cam.onnx", tmp / "p_aff.onnx"
    export_cam(cam, cam_path)
    export_aff(aff, aff_path)
    cpu = ["CPUExecutionProvider"]
    s_cam, s_aff = (
        ort.InferenceSession(cam_path, providers=cpu),
        ort.InferenceSession(aff_path, providers=cpu),
    )
    rng = np.random.default_rng(0)
    rows = []
    for h, w in SIZES:
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            xt = torch.from_numpy(x)
            ref = {"cams": cam.cam(xt), "logits": cam(xt), "features": aff(xt)}
        got = dict(zip(["cams", "logits"], s_cam.run(None, {"image": x}), strict=True))
        got["features"] = s_aff.run(None, {"image": x})[0]
        for k, r in ref.items():
            r = r.numpy()
            diff = float(np.abs(r - got[k]).max())
            rows.append(
                (backbone, weights or "random", f"{h}x{w}", k, diff, float(np.abs(r).max()))
            )
    return rows


def labeling_times(data: Path, repeats: int, tmp: Path) -> list[tuple]:
    """Per-image labeling time, MobileNetV2 (untrained), the recipe's 4 scales + flip."""
    import torch

    torch.manual_seed(0)
    ds = open_dataset(data)
    classes = list(ds.classes)
    meta = {"backbone": "mobilenet_v2", "classes": classes, "mean": MEAN, "std": STD}
    cam = build_cam_model("mobilenet_v2", None, len(classes) - 1)
    aff = build_aff_model("mobilenet_v2", None)
    save_checkpoint(tmp / "cam", cam.state_dict(), {**meta, "kind": "cam"})
    save_checkpoint(tmp / "aff", aff.state_dict(), {**meta, "kind": "aff", "radius": 5})
    label_cfg, cam_cfg = LabelConfig(device="cpu"), MakeCamConfig()
    cam_ckpt, aff_ckpt = tmp / "cam.safetensors", tmp / "aff.safetensors"
    bundle = export_bundle(cam_ckpt, aff_ckpt, tmp / "bundle", label_cfg, cam_cfg)
    samples = ds.split("train") + ds.split("val")
    images = [(load_image(s.image), s.labels) for s in samples]
    labelers = {
        "torch": torch_labeler(cam_ckpt, aff_ckpt, label_cfg, cam_cfg)[0],
        "onnxruntime, numpy walk": open_bundle(bundle, walk="numpy").labeler,
        "onnxruntime, rw.onnx walk": open_bundle(bundle, walk="onnx").labeler,
    }
    rows = []
    for name, lab in labelers.items():
        lab.label(*images[0])  # warm-up: first-run allocations, lazy initialisation
        per_image = [median_time(lambda: lab.label(img, keys), repeats) for img, keys in images]  # noqa: B023
        rows.append((name, len(images), statistics.median(per_image)))
    # The walk alone (same CAMs and features for both), at the data's size and at 448 px.
    lab, rw = labelers["torch"], labelers["onnxruntime, rw.onnx walk"].walk
    for side in (None, 448):
        numpy_s, onnx_s = [], []
        for img, keys in images:
            if side:
                img = np.asarray(Image.fromarray(img).resize((side, side), Image.BICUBIC))
            cams = multiscale_cam(lab.cam_forward, img, keys, (1.0,), lab.mean, lab.std, False)
            feats = lab.features(img)
            p = lab.walk_params
            numpy_s.append(median_time(lambda: walk_scores(cams, feats, p), repeats))  # noqa: B023
            onnx_s.append(median_time(lambda: walk_scores(cams, feats, p, rw), repeats))  # noqa: B023
        size = f"{side} px" if side else "data size"
        rows.append((f"walk only, numpy ({size})", len(images), statistics.median(numpy_s)))
        rows.append((f"walk only, rw.onnx ({size})", len(images), statistics.median(onnx_s)))
    return rows


def table(header: tuple, rows: list[tuple]) -> str:
    cells = [header] + [
        tuple(f"{c:.3g}" if isinstance(c, float) else str(c) for c in r) for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="synthetic data set (default: make one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbones", default="tiny,mobilenet_v2")
    ap.add_argument("--tables", default="export,parity,labeling", help="which tables to print")
    args = ap.parse_args()
    tables = args.tables.split(",")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = args.data
        if data is None:
            from psa_train.synthetic import make_synthetic

            data = tmp / "data"
            make_synthetic(data, 20, size=160, progress=False)
        backbones = args.backbones.split(",")
        if "export" in tables:
            rows = [r for b in backbones for r in exporter_times(b, args.repeats, tmp)]
            print(table(("backbone", "exporter", "graph", "opset", "seconds"), rows), end="\n\n")
        if "parity" in tables:
            rows = [r for b in backbones for r in parity(b, None, tmp)]
            if "mobilenet_v2" in backbones:
                rows += parity("mobilenet_v2", "default", tmp)
            header = ("backbone", "weights", "size", "output", "max |torch - ort|", "max |torch|")
            print(table(header, rows), end="\n\n")
        if "labeling" in tables:
            header = ("labeler (MobileNetV2, 4 scales + flip)", "images", "seconds / image")
            print(table(header, labeling_times(data, args.repeats, tmp)), flush=True)


if __name__ == "__main__":
    main()

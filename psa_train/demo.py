"""``psa demo``: the whole chain on freshly generated synthetic data, timed stage by stage.

The recipe is ``configs/synthetic_demo.yaml`` (small images, MobileNetV2, few epochs) so the
chain fits a 2-core CPU in minutes; ``--config``/``--set`` change it like any other run.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np

from psa_infer.errors import PsaError
from psa_train.config import load_config, save_config

OVERVIEW_HEIGHT = 160  # pixels per row of overview.png
DEMO_RECIPE = Path(__file__).resolve().parent.parent / "configs" / "synthetic_demo.yaml"


class StageTimer:
    """Collects wall time per stage and prints a table."""

    def __init__(self):
        self.rows: list[tuple[str, float]] = []
        self.t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        click.echo(f"── {name}", err=True)
        t = time.perf_counter()
        yield
        self.rows.append((name, time.perf_counter() - t))

    @property
    def total(self) -> float:
        return time.perf_counter() - self.t0

    def table(self) -> str:
        w = max(len(n) for n, _ in self.rows)
        lines = [f"{'stage':<{w}}  seconds", "-" * (w + 9)]
        lines += [f"{n:<{w}}  {t:7.1f}" for n, t in self.rows]
        lines += ["-" * (w + 9), f"{'total':<{w}}  {self.total:7.1f}"]
        return "\n".join(lines)


def run_demo(
    out: Path,
    config_path: str | None = None,
    sets: tuple[str, ...] | list[str] = (),
    num_images: int | None = None,
    seed: int = 0,
) -> dict:
    """Run the whole chain under ``out``; returns the RESULT dict.

    make-synthetic → train-cam → make-cam → make-aff-labels → train-aff → label → eval.
    Every stage skips work whose output already exists, so a re-run resumes.
    """
    from psa_infer.bundle import open_bundle
    from psa_infer.datasets import open_dataset
    from psa_infer.evaluate import evaluate_cams, evaluate_labels
    from psa_infer.metrics import format_table
    from psa_infer.pipeline import label_items
    from psa_train.label import torch_labeler
    from psa_train.make_aff_labels import make_aff_labels
    from psa_train.make_cam import make_cams
    from psa_train.synthetic import make_synthetic
    from psa_train.train_aff import train_aff
    from psa_train.train_cam import train_cam

    if config_path is None and not DEMO_RECIPE.exists():
        raise PsaError(f"{DEMO_RECIPE}: demo recipe missing (is the project checked out?)")
    cfg = load_config(config_path or DEMO_RECIPE, sets)
    n = num_images or cfg.demo.num_images
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    timer = StageTimer()
    data = out / "data"

    with timer.stage("make-synthetic"):
        if not (data / "psa_dataset.json").exists():
            make_synthetic(
                data,
                n,
                seed=seed,
                size=cfg.demo.size,
                num_classes=cfg.demo.num_classes,
                progress=True,
            )
    ds = open_dataset(data)

    with timer.stage("train-cam"):
        ckpt = out / "cam" / "cam.safetensors"
        if not ckpt.exists():
            ckpt = train_cam(ds, out / "cam", cfg.train_cam, resume=True)

    with timer.stage("make-cam"):
        for split in (cfg.make_cam.split, cfg.eval.split):
            make_cams(ds, ckpt, out / "cams", _replace(cfg.make_cam, split=split), fail_fast=True)

    with timer.stage("make-aff-labels"):
        make_aff_labels(ds, out / "cams", out / "aff_labels", cfg.aff_labels, fail_fast=True)

    with timer.stage("train-aff"):
        aff_ckpt = out / "aff" / "aff.safetensors"
        if not aff_ckpt.exists():
            tc = cfg.train_cam
            aff_ckpt = train_aff(
                ds, out / "aff_labels", out / "aff", cfg.train_aff, tc.mean, tc.std, resume=True
            )

    labeler, _ = torch_labeler(ckpt, aff_ckpt, cfg.label, cfg.make_cam)
    items = ds.split(cfg.eval.split)
    with timer.stage("label (random walk)"):
        label_items(
            labeler,
            items,
            out / "labels",
            cam_dir=out / "cams",
            num_classes=ds.num_classes,
            fail_fast=True,
        )
    with timer.stage("label (random walk + CRF)"):
        label_items(
            labeler,
            items,
            out / "labels_crf",
            crf=True,
            cam_dir=out / "cams",
            num_classes=ds.num_classes,
            fail_fast=True,
        )

    with timer.stage("export bundle"):
        from export.bundle import export_bundle

        bundle = out / "bundle"
        if not (bundle / "meta.json").exists():
            export_bundle(
                ckpt, aff_ckpt, bundle, cfg.label, cfg.make_cam, aff_labels_cfg=cfg.aff_labels
            )
    with timer.stage("calibrate class thresholds"):
        # --predict-classes thresholds from the labels of the training images train-cam held
        # out (the classifier never trained on them; all training images if it held none
        # out); checked on val.
        from psa_infer.thresholds import calibrate, class_f1, collect_scores, write_thresholds

        held = out / "cam" / "heldout.txt"
        use_held = held.exists() and len(held.read_text().split()) >= 8
        source = str(held) if use_held else cfg.train_cam.train_split
        with open_bundle(bundle) as opened:
            report = calibrate(opened.labeler, ds.split(source), ds.classes, progress=False)
            scores, truth = collect_scores(opened.labeler, items, ds.num_classes, False)
        what = "train-cam's held-out training images" if use_held else f"split '{source}'"
        write_thresholds(bundle, report, f"demo data: {what}")
        calibrated = [report["thresholds"][c] for c in ds.classes[1:]]
        predict_f1 = {
            "0.5": float(np.nanmean(class_f1(scores, truth, 0.5)) * 100),
            "calibrated": float(np.nanmean(class_f1(scores, truth, np.array(calibrated))) * 100),
        }
    with timer.stage("label (onnxruntime, torch-free)"):
        # The deployable path end to end: CAMs from cam.onnx, features from aff.onnx.
        with open_bundle(bundle) as opened:
            ort_stats = label_items(opened.labeler, items, out / "labels_ort", fail_fast=True)

    with timer.stage("eval"):
        rw = evaluate_labels(ds, out / "labels", cfg.eval.split)
        ort = evaluate_labels(ds, out / "labels_ort", cfg.eval.split)
        agreement = label_agreement(
            out / "labels", out / "labels_ort", [s.id for s in ds.split(cfg.eval.split)]
        )
        rw_crf = evaluate_labels(ds, out / "labels_crf", cfg.eval.split)
        (out / "eval_rw.json").write_text(json.dumps({"rw": rw, "rw_crf": rw_crf}, indent=2))
        th = cfg.eval.bg_threshold
        ths = (
            sorted({th, *(round(0.05 * i, 2) for i in range(1, 13))}) if cfg.demo.bg_sweep else [th]
        )
        reports = evaluate_cams(ds, out / "cams", cfg.eval.split, ths)
        at_default = next(r for r in reports if r["bg_threshold"] == th)
        best = max(reports, key=lambda r: r["miou"])
        (out / "eval_cam.json").write_text(
            json.dumps({"default": at_default, "sweep": reports}, indent=2)
        )
    with timer.stage("overview.png"):
        write_overview(ds, out, cfg.eval.split, cfg.eval.bg_threshold, out / "overview.png")
    click.echo("CAM (val):\n" + format_table(at_default))
    click.echo("CAM + random walk (val):\n" + format_table(rw))
    click.echo(timer.table())
    return {
        "cam_miou": round(at_default["miou"], 2),
        "rw_miou": round(rw["miou"], 2),
        "rw_crf_miou": round(rw_crf["miou"], 2),
        "ort_miou": round(ort["miou"], 2),
        "ort_agreement": round(agreement, 3),
        "ort_seconds_per_image": round(ort_stats["seconds_per_image"], 3),
        "cam_miou_best": round(best["miou"], 2),
        "predict_f1_val": {k: round(v, 2) for k, v in predict_f1.items()},
        "cam_best_bg_threshold": best["bg_threshold"],
        "num_images": n,
        "seconds": round(timer.total, 1),
        "stages": {name: round(t, 1) for name, t in timer.rows},
    }


def _replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def write_overview(ds, out: Path, split: str, bg_threshold: float, path: Path, rows: int = 6):
    """A grid of val images (``psa_infer.visualize.grid``, as ``psa show`` draws): image |
    ground truth | CAM labels | random-walk labels | + CRF, each label map painted on the
    image, then the names of the classes present."""
    from psa_infer.artifacts import load_cam
    from psa_infer.cam import cam_prediction
    from psa_infer.datasets import load_image
    from psa_infer.palette import load_label_png
    from psa_infer.visualize import classes_panel, fit_height, grid, paint_panel, save_picture

    h = OVERVIEW_HEIGHT
    out_rows = []
    for s in ds.split(split)[:rows]:
        img = load_image(s.image)
        cam, keys = load_cam(out / "cams" / f"{s.id}.npz")
        maps = [
            load_label_png(s.mask),
            cam_prediction(cam, keys, bg_threshold),
            load_label_png(out / "labels" / f"{s.id}.png"),
            load_label_png(out / "labels_crf" / f"{s.id}.png"),
        ]
        panels = [fit_height(img, h)] + [paint_panel(img, m, h) for m in maps]
        out_rows.append([*panels, classes_panel(maps, ds.classes, h, heading=s.id)])
    heads = ["image", "ground truth", "CAM", "CAM + RW", "CAM + RW + CRF", "classes"]
    save_picture(path, grid(out_rows, heads, h))


def label_agreement(dir_a: Path, dir_b: Path, ids: list[str]) -> float:
    """Percent of pixels with the same label in two folders of label PNGs."""
    from psa_infer.palette import load_label_png

    same = total = 0
    for i in ids:
        a, b = load_label_png(dir_a / f"{i}.png"), load_label_png(dir_b / f"{i}.png")
        same += int((a == b).sum())
        total += a.size
    return 100.0 * same / max(total, 1)

"""The whole chain in one call: ``psa pipeline DATA`` on a data set, ``psa demo`` on synthetic data.

train-cam → make-cam → make-aff-labels → train-aff → label (walk, walk + CRF) → export →
calibrate class thresholds → label with ONNX Runtime → eval (where there are masks) →
overview.png → the paper's last step where the labeled split has masks: the training split
labeled with walk + CRF, a segmentation network trained on those labels and one on the
ground truth (same recipe), each exported and run on the labeled split with ONNX Runtime;
each stage timed and each skipping work whose output exists, so a re-run resumes. A driver
of the stages, not a stage: it sits beside ``cli.py`` because it reaches into every package
(``psa_train``, ``export``, ``psa_infer``).

Which images play which part:

* a VOC-layout (or COCO) set: the classifier and AffinityNet train on ``train_cam.train_split``;
  ``eval.split`` (``val``) is labeled, and scored when every one of its images has a mask;
* a folder with a labels file: every image is a training image, and every image is labeled;
  there is no split to score (no mIoU), only train-cam's held-out share to judge the
  classifier by and to calibrate the class thresholds on.

The default recipe is ``configs/synthetic_demo.yaml`` (MobileNetV2 with ImageNet weights, few
epochs, small crops): it runs on a CPU without downloading anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np

from psa_infer.errors import PsaError
from psa_infer.pipeline import Labeler
from psa_train.config import Config, load_config, save_config, to_dict

OVERVIEW_HEIGHT = 160  # pixels per row of overview.png
DEMO_RECIPE = Path(__file__).resolve().parent / "configs" / "synthetic_demo.yaml"
RUN_FILE = "pipeline.json"  # which data set an output folder's run is on
# What the stages write under the output folder (the demo's data set first).
OUTPUTS = ("data", "cam", "cams", "aff_labels", "aff", "labels", "labels_crf", "bundle", "seg")
# train_aff.weights / train_seg.weights meaning "the backbone of this run's classifier"
# (psa_pipeline only).
CAM_WEIGHTS = "cam"
# Settings a resumed run may change: where it runs, not what it computes.
FREE_TO_CHANGE = ("device", "num_workers")


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


def load_recipe(config_path: str | os.PathLike | None, sets=()) -> Config:
    """The recipe at ``config_path`` (default: the demo's) with ``--set`` overrides."""
    if config_path is None and not DEMO_RECIPE.exists():
        raise PsaError(f"{DEMO_RECIPE}: demo recipe missing (is the project checked out?)")
    return load_config(config_path or DEMO_RECIPE, list(sets))


def run_demo(out: Path, cfg: Config, segmentation: bool = False) -> dict:
    """Generate the synthetic set of ``cfg.demo`` into ``out/data``, then ``run_pipeline``."""
    from psa_train.synthetic import make_synthetic

    timer = StageTimer()
    data = out / "data"
    _claim(out, data, cfg)  # before generating: a run of another recipe keeps its data
    with timer.stage("make-synthetic"):
        if not (data / "image_labels.json").exists():  # written last: the set is complete
            d = cfg.demo
            make_synthetic(
                data,
                d.num_images,
                seed=d.seed,
                size=d.size,
                num_classes=d.num_classes,
                style=d.style,
                progress=True,
            )
    return run_pipeline(data, out, cfg, timer=timer, segmentation=segmentation)


def run_pipeline(
    data: str | os.PathLike,
    out: str | os.PathLike,
    cfg: Config,
    labels_file: str | os.PathLike | None = None,
    timer: StageTimer | None = None,
    segmentation: bool = False,
) -> dict:
    """Run the chain on the data set at ``data`` under ``out``; returns the RESULT dict.

    Always: num_images, split (the one labeled), num_labeled, classifier (train-cam's held-out
    verdict), affinity (train-aff's), class_thresholds (calibrated, also in the bundle),
    ort_agreement and ort_seconds_per_image (the bundle's ONNX Runtime labels against the torch
    walk's), evaluated, seconds, stages. With a split of its own to label: predict_f1_val. When
    every labeled image has a mask (evaluated: true): cam_miou, rw_miou, rw_crf_miou, ort_miou,
    cam_miou_best, cam_best_bg_threshold; and, with ``segmentation`` where the labeled split is
    not training data, seg_miou (the segmentation network trained on the walk + CRF labels of
    the training split), seg_full_miou (trained on its ground truth; when every training image
    has some), seg_crf_miou and seg_full_crf_miou (each with the dense CRF on its softmax, as
    ``psa segment --crf``), seg_seconds_per_image (seg.onnx, ONNX Runtime).
    """
    from psa_infer.bundle import open_bundle
    from psa_infer.datasets import open_dataset
    from psa_infer.metrics import format_table
    from psa_infer.pipeline import label_items
    from psa_infer.runs import usable_cpus
    from psa_train.common import resolve_device
    from psa_train.label import torch_labeler
    from psa_train.make_aff_labels import make_aff_labels
    from psa_train.make_cam import make_cams
    from psa_train.train_aff import train_aff
    from psa_train.train_cam import train_cam

    data, out = Path(data), Path(out)
    timer = timer or StageTimer()
    ds = open_dataset(data, labels_file)
    _claim(out, data, cfg)
    # A folder has one split, its training images: they are what there is to label.
    own_split = ds.kind != "folder" and cfg.eval.split != cfg.train_cam.train_split
    split = cfg.eval.split if ds.kind != "folder" else cfg.train_cam.train_split
    items = ds.split(split)
    missing = sum(not ds.has_ground_truth(s) for s in items)
    evaluated = missing == 0
    if not evaluated:
        click.echo(
            f"no mIoU: {missing} of the {len(items)} images of split '{split}' have no "
            "ground truth; labeling them",
            err=True,
        )

    with timer.stage("train-cam"):
        ckpt = out / "cam" / "cam.safetensors"
        if not ckpt.exists():
            ckpt = train_cam(ds, out / "cam", cfg.train_cam, resume=True)

    with timer.stage("make-cam"):
        forward = None
        if resolve_device(cfg.make_cam.device).type == "cpu":
            # On a CPU the exported cam.onnx under ONNX Runtime gives the same CAMs (to ~1e-5)
            # 3x as fast as torch (3 scales + flip of a 160-px image: 0.09 s vs 0.27-0.30 s).
            from export.onnx_export import cam_checkpoint_forward

            forward = cam_checkpoint_forward(ckpt)
        for s in dict.fromkeys((cfg.make_cam.split, split)):
            make_cams(
                ds,
                ckpt,
                out / "cams",
                _replace(cfg.make_cam, split=s),
                fail_fast=True,
                forward=forward,
            )

    with timer.stage("make-aff-labels"):
        # Its dense CRFs hold the GIL: one worker process per CPU.
        make_aff_labels(
            ds,
            out / "cams",
            out / "aff_labels",
            cfg.aff_labels,
            fail_fast=True,
            workers=usable_cpus(),
        )

    with timer.stage("train-aff"):
        aff_ckpt = out / "aff" / "aff.safetensors"
        if not aff_ckpt.exists():
            tc = cfg.train_cam
            aff_cfg = _from_classifier(cfg, "train_aff", ckpt)
            aff_ckpt = train_aff(
                ds, out / "aff_labels", out / "aff", aff_cfg, tc.mean, tc.std, resume=True
            )

    labeler, _ = torch_labeler(ckpt, aff_ckpt, cfg.label, cfg.make_cam)
    common = {"cam_dir": out / "cams", "num_classes": ds.num_classes, "fail_fast": True}
    twice = WalkOnce.of(labeler)  # the same walk under both folders: walked once
    with timer.stage("label (random walk)"):
        label_items(twice, items, out / "labels", **common)
    with timer.stage("label (random walk + CRF)"):
        label_items(twice, items, out / "labels_crf", crf=True, **common)
    del twice

    with timer.stage("export bundle"):
        from export.bundle import export_bundle

        bundle = out / "bundle"
        if not (bundle / "meta.json").exists():
            export_bundle(
                ckpt, aff_ckpt, bundle, cfg.label, cfg.make_cam, aff_labels_cfg=cfg.aff_labels
            )
    with timer.stage("calibrate class thresholds"):
        # --predict-classes thresholds from the labels of the training images train-cam held
        # out (the classifier never trained on them; all training images if it held out
        # fewer than 8); checked on the labeled split where it is not training data.
        from psa_infer.thresholds import calibrate, class_f1, collect_scores, write_thresholds

        held = out / "cam" / "heldout.txt"
        use_held = held.exists() and len(held.read_text().split()) >= 8
        source = str(held) if use_held else cfg.train_cam.train_split
        with open_bundle(bundle) as opened:
            report = calibrate(opened.labeler, ds.split(source), ds.classes, progress=False)
            if own_split:
                scores, truth = collect_scores(opened.labeler, items, ds.num_classes, False)
        what = "train-cam's held-out training images" if use_held else f"split '{source}'"
        write_thresholds(bundle, report, f"{ds.name}: {what}")
        if own_split:
            calibrated = np.array([report["thresholds"][c] for c in ds.classes[1:]])
            predict_f1 = {
                "0.5": float(np.nanmean(class_f1(scores, truth, 0.5)) * 100),
                "calibrated": float(np.nanmean(class_f1(scores, truth, calibrated)) * 100),
            }
    with timer.stage("label (onnxruntime, torch-free)"):
        # The deployable path end to end: CAMs from cam.onnx, features from aff.onnx.
        with open_bundle(bundle) as opened:
            ort_stats = label_items(opened.labeler, items, out / "labels_ort", fail_fast=True)
    agreement = label_agreement(out / "labels", out / "labels_ort", [s.id for s in items])

    result = {
        "num_images": len({s.id for s in ds.split(cfg.train_cam.train_split) + items}),
        "split": split,
        "num_labeled": len(items),
        "classifier": _classifier_verdict(out / "cam"),
        "affinity": _affinity_verdict(out / "aff"),
        "class_thresholds": report["thresholds"],
        "ort_agreement": round(agreement, 3),
        "ort_seconds_per_image": round(ort_stats["seconds_per_image"], 3),
        "evaluated": evaluated,
    }
    if own_split:
        result["predict_f1_val"] = {k: round(v, 2) for k, v in predict_f1.items()}
    tables = []
    if evaluated:
        with timer.stage("eval"):
            scores, tables = _evaluate(ds, out, split, cfg)
            result.update(scores)
    with timer.stage("overview.png"):
        write_overview(ds, out, items, cfg.eval.bg_threshold, out / "overview.png", evaluated)
    if segmentation and evaluated and own_split:
        result.update(_segmentation(ds, out, cfg, labeler, items, split, common, timer))
    for what, report in tables:
        click.echo(f"{what} ({split}):\n" + format_table(report))
    click.echo(timer.table())
    result["seconds"] = round(timer.total, 1)
    result["stages"] = {name: round(t, 1) for name, t in timer.rows}
    return result


def _evaluate(ds, out: Path, split: str, cfg: Config) -> tuple[dict, list]:
    """mIoU of the CAMs (at eval.bg_threshold, and the best of a sweep), of both walks' labels
    and of the bundle's; writes eval_rw.json and eval_cam.json. Returns the RESULT entries and
    the (title, report) pairs to print."""
    from psa_infer.evaluate import evaluate_cams, evaluate_labels

    rw = evaluate_labels(ds, out / "labels", split)
    rw_crf = evaluate_labels(ds, out / "labels_crf", split)
    ort = evaluate_labels(ds, out / "labels_ort", split)
    (out / "eval_rw.json").write_text(json.dumps({"rw": rw, "rw_crf": rw_crf}, indent=2))
    th = cfg.eval.bg_threshold
    ths = sorted({th, *(round(0.05 * i, 2) for i in range(1, 13))}) if cfg.demo.bg_sweep else [th]
    reports = evaluate_cams(ds, out / "cams", split, ths)
    at_default = next(r for r in reports if r["bg_threshold"] == th)
    best = max(reports, key=lambda r: r["miou"])
    (out / "eval_cam.json").write_text(
        json.dumps({"default": at_default, "sweep": reports}, indent=2)
    )
    return {
        "cam_miou": round(at_default["miou"], 2),
        "rw_miou": round(rw["miou"], 2),
        "rw_crf_miou": round(rw_crf["miou"], 2),
        "ort_miou": round(ort["miou"], 2),
        "cam_miou_best": round(best["miou"], 2),
        "cam_best_bg_threshold": best["bg_threshold"],
    }, [("CAM", at_default), ("CAM + random walk", rw)]


@dataclasses.dataclass
class WalkOnce(Labeler):
    """A Labeler that hands each image's walked scores out twice and computes them once.

    The pipeline labels its split with the walk and again with the walk + CRF; the second pass
    would repeat AffinityNet's forward pass and the walk (most of a walk's labeling) only to
    get the same scores. A call keeps its scores (keyed by the image, its CAMs and classes)
    until a call with the same inputs takes them; at most ``keep`` are held at once, and
    beyond that the scores are computed again, as a plain Labeler would.
    """

    keep: int = 5000
    kept: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, labeler: Labeler, keep: int = 5000) -> WalkOnce:
        fields = {f.name: getattr(labeler, f.name) for f in dataclasses.fields(Labeler)}
        return cls(**fields, keep=keep)

    def walk_scores_at_stride(self, img, keys, cams=None, times=None):
        key = (_digest(img), None if cams is None else _digest(cams), tuple(keys))
        if key in self.kept:
            return self.kept.pop(key)
        rw = super().walk_scores_at_stride(img, keys, cams, times)
        if len(self.kept) < self.keep:
            self.kept[key] = rw
        return rw


def _digest(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    return a.shape, a.dtype.str, hashlib.blake2b(a.tobytes(), digest_size=16).digest()


def _segmentation(ds, out: Path, cfg: Config, labeler, items, split, common, timer) -> dict:
    """The paper's last step: label the training split with the walk + CRF, train the
    segmentation network on those labels (``seg``) and on the ground truth (``seg_full``,
    where every training image has some), export each and label ``split`` with ONNX Runtime;
    returns seg_miou, seg_full_miou, the same with the dense CRF on the network's softmax
    (seg_crf_miou, seg_full_crf_miou) and seg.onnx's seconds per image."""
    from export.seg_bundle import export_seg_bundle
    from psa_infer.evaluate import evaluate_labels
    from psa_infer.pipeline import label_items
    from psa_infer.segment import open_seg_bundle, segment_items
    from psa_train.train_seg import is_finished, train_seg

    train = ds.split(cfg.train_seg.train_split)
    with timer.stage("label train split (random walk + CRF)"):
        label_items(labeler, train, out / "labels_train_crf", crf=True, **common)
    runs = {"seg": out / "labels_train_crf"}
    if all(ds.has_ground_truth(s) for s in train):
        runs["seg_full"] = None  # the data set's masks
    result = {}
    seg_cfg = _from_classifier(cfg, "train_seg", out / "cam" / "cam.safetensors")
    for name, labels in runs.items():
        what = "ground truth" if labels is None else "walk + CRF labels"
        with timer.stage(f"train-seg ({what})"):
            ckpt = out / name / "seg.safetensors"
            if not is_finished(ckpt, seg_cfg):
                ckpt = train_seg(ds, labels, out / name, seg_cfg, resume=True)
        with timer.stage(f"segment {split} (onnxruntime, {what})"):
            bundle = out / f"{name}_bundle"
            if not (bundle / "meta.json").exists():
                export_seg_bundle(ckpt, bundle)
            with open_seg_bundle(bundle) as opened:
                stats = segment_items(opened, items, out / f"labels_{name}", fail_fast=True)
        with timer.stage(f"segment {split} + CRF ({what})"):
            with open_seg_bundle(bundle) as opened:
                segment_items(opened, items, out / f"labels_{name}_crf", crf=True, fail_fast=True)
        for key, folder in ((name, f"labels_{name}"), (f"{name}_crf", f"labels_{name}_crf")):
            result[f"{key}_miou"] = round(evaluate_labels(ds, out / folder, split)["miou"], 2)
        if name == "seg" and stats["labeled"]:
            result["seg_seconds_per_image"] = round(stats["seconds_per_image"], 4)
    (out / "eval_seg.json").write_text(json.dumps(result, indent=2))
    return result


def _from_classifier(cfg: Config, section: str, cam_ckpt: Path):
    """``cfg.<section>`` (train_aff or train_seg), where ``weights: cam`` becomes this run's
    classifier checkpoint: the stage's network starts from the backbone train-cam trained (its
    backbone must be the classifier's, or the same network at another stride)."""
    from psa_train.config import same_weights

    stage = getattr(cfg, section)
    if stage.weights != CAM_WEIGHTS:
        return stage
    if not same_weights(stage.backbone, cfg.train_cam.backbone):
        raise PsaError(
            f"{section}.weights: 'cam' starts from the classifier's {cfg.train_cam.backbone} "
            f"backbone, but {section}.backbone is {stage.backbone}"
        )
    return _replace(stage, weights=str(cam_ckpt))


def _classifier_verdict(cam_dir: Path) -> dict | None:
    """train-cam's judgement of its classifier on the held-out images (None: it held out none)."""
    from psa_train.common import VERDICT

    path = cam_dir / VERDICT
    if not path.exists():
        return None
    v = json.loads(path.read_text())
    row = v["row"]

    def r(x):
        return None if x is None else round(x, 4)

    return {
        "verdict": v["verdict"],
        "heldout_images": v["heldout_images"],
        "heldout_map": r(row["heldout_map"]),
        "chance_map": r(v["chance_map"]),
        "prior_map": r(row["heldout_prior_map"]),
    }


def _affinity_verdict(aff_dir: Path) -> dict | None:
    """train-aff's judgement of AffinityNet on the held-out images' confident pairs (None: it
    held out none)."""
    from psa_train.common import VERDICT

    path = aff_dir / VERDICT
    if not path.exists():
        return None
    v = json.loads(path.read_text())
    return {
        "verdict": v["verdict"],
        "heldout_images": v["heldout_images"],
        "epoch": v["epoch"],
        "gain": None if v["gain"] is None else round(v["gain"], 4),
    }


def _claim(out: Path, data: Path, cfg: Config) -> None:
    """Start or resume the run in ``out``: save the recipe and the data set's path there, and
    once a stage has written something, refuse a run on another data set or with another
    recipe, whose stages would silently keep work made from the old one."""
    out.mkdir(parents=True, exist_ok=True)
    started = any((out / d).exists() for d in OUTPUTS)
    here = out.resolve()
    where = data.resolve()
    # Relative when inside out (the demo's data), so that a moved output folder resumes.
    name = str(where.relative_to(here)) if where.is_relative_to(here) else str(where)
    run_file, cfg_file = out / RUN_FILE, out / "config.yaml"
    if started and run_file.exists():
        before = json.loads(run_file.read_text())["data"]
        if before != name:
            raise PsaError(
                f"{out}: holds a run on {before}, not on {name}; choose another output folder"
            )
    if started and cfg_file.exists():
        old, new = _flat(to_dict(load_config(cfg_file))), _flat(to_dict(cfg))
        changed = [
            k for k in new if old.get(k) != new[k] and k.split(".")[-1] not in FREE_TO_CHANGE
        ]
        if changed:
            k = changed[0]
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise PsaError(
                f"{cfg_file}: the run in this folder has {k}={old.get(k)!r}, this one "
                f"{new[k]!r}{more}; resume with the same recipe or choose another output folder"
            )
    save_config(cfg, cfg_file)
    run_file.write_text(json.dumps({"data": name}) + "\n")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _replace(obj, **kw):
    return dataclasses.replace(obj, **kw)


def write_overview(
    ds, out: Path, items: list, bg_threshold: float, path: Path, truth: bool, rows: int = 6
):
    """A grid of the first labeled images (``psa_infer.visualize.grid``, as ``psa show``
    draws): image | ground truth (``truth``) | CAM labels | random-walk labels | + CRF, each
    label map painted on the image, then the names of the classes present."""
    from psa_infer.artifacts import load_cam
    from psa_infer.cam import cam_prediction
    from psa_infer.datasets import load_image
    from psa_infer.palette import load_label_png
    from psa_infer.visualize import classes_panel, fit_height, grid, paint_panel, save_picture

    h = OVERVIEW_HEIGHT
    out_rows = []
    for s in items[:rows]:
        img = load_image(s.image)
        cam, keys = load_cam(out / "cams" / f"{s.id}.npz")
        maps = [ds.ground_truth(s)] if truth else []
        maps += [
            cam_prediction(cam, keys, bg_threshold),
            load_label_png(out / "labels" / f"{s.id}.png"),
            load_label_png(out / "labels_crf" / f"{s.id}.png"),
        ]
        panels = [fit_height(img, h)] + [paint_panel(img, m, h) for m in maps]
        out_rows.append([*panels, classes_panel(maps, ds.classes, h, heading=s.id)])
    heads = ["image", *["ground truth"] * truth, "CAM", "CAM + RW", "CAM + RW + CRF", "classes"]
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

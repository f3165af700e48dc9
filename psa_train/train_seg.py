"""Stage: train the segmentation network on label maps — ``psa train-seg`` (the paper's §5).

The pseudo labels of ``psa label`` (palette PNGs, 255 = ignore) are what a fully supervised
segmentation network then learns from; trained on a data set's ground-truth masks instead, the
same recipe gives the fully supervised upper bound. The network is `psa_train.networks.SegNet`
(a DeepLab head at the backbone's output stride, 8 or 16: LargeFOV for one dilation rate, ASPP
for several), the loss cross-entropy over the pixels that are not 255, on the logits upsampled
to the crop. The training loop is `psa_train.common.fit`'s (poly schedule, ``metrics.jsonl``,
exact resume).

There is no held-out selection: held-out pseudo labels would score the network's agreement
with the labels' own errors, so the last epoch is kept. Then (``cfg.calibrate``) its background
score is shifted by the offset that makes its argmax on the training images agree best with
their labels (`calibrate_background`). Writes into ``out``: ``config.yaml``, ``metrics.jsonl``,
``last.safetensors`` and, at the end, ``seg.safetensors`` + ``seg.json`` (and
``calibration.json``, the agreement at every offset tried).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from psa_infer.datasets import DataError, DataSet, Sample, check_images
from psa_infer.palette import IGNORE
from psa_train.checkpoint import load_checkpoint, load_state_strict, read_meta, save_checkpoint
from psa_train.common import fit, start_stage, world
from psa_train.config import TrainSegConfig, to_dict
from psa_train.data import (
    SegDataset,
    check_label_ids,
    check_label_size,
    label_dir_reader,
    label_source,
)


def build_seg_model(backbone: str, weights: str | None, num_classes: int, head: dict):
    """The segmentation network; ``head`` = {"rates", "width", "dropout", "context", "skip"}
    (the checkpoint's; one written before ``context`` or ``skip`` existed lacks them)."""
    from psa_train.backbones import build_backbone
    from psa_train.networks import SegNet

    return SegNet(
        build_backbone(backbone, weights),
        num_classes,
        tuple(head["rates"]),
        int(head["width"]),
        float(head["dropout"]),
        bool(head.get("context", False)),
        bool(head.get("skip", False)),
    )


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the pixels that are not ``IGNORE`` (0 when there are none,
    where ``F.cross_entropy``'s mean would be NaN), and their pixel accuracy for the log.

    logits (B, K+1, H, W) float32, target (B, H, W) int64."""
    valid = target != IGNORE
    n = int(valid.sum())
    loss = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum") / max(n, 1)
    with torch.no_grad():
        right = int((logits.argmax(1) == target)[valid].sum())
    return loss, {"pixel_acc": right / max(n, 1)}


def _step(model, batch):
    x, y = batch
    return seg_loss(model(x), y)


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as ``load_image`` shows it (EXIF rotation applied), from its header."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return (w, h) if rotated else (h, w)


def check_labels(samples: list[Sample], labels, num_classes: int) -> None:
    """Every training image's label map is there, readable, of its image's size and holds only
    ids 0..K and 255 — checked before the first epoch, so a bad file fails in one line now."""
    for s in samples:
        label = labels(s)
        where = label_source(labels, s)
        check_label_ids(label, num_classes, where)
        check_label_size(label, _image_size(s.image), s, where)


def train_seg(
    dataset: DataSet,
    labels: str | Path | None,
    out: str | Path,
    cfg: TrainSegConfig,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train the network on ``dataset``'s ``cfg.train_split`` with the label maps in the folder
    ``labels`` (``<id>.png``), or the data set's ground truth when ``labels`` is None; returns
    the checkpoint path."""
    if cfg.weights == "cam":
        raise DataError(
            "train_seg.weights: 'cam' (the classifier of the same run) is what psa pipeline "
            "and psa demo give; here give the file: --weights RUN/cam/cam.safetensors"
        )
    out, device = start_stage(out, cfg)
    torch.manual_seed(cfg.seed)
    samples = dataset.split(cfg.train_split)
    check_images(samples, f"train_seg.train_split '{cfg.train_split}'")
    if labels is None:
        missing = [s.id for s in samples if not dataset.has_ground_truth(s)]
        if missing:
            raise DataError(
                f"{dataset.root}: no ground truth for '{missing[0]}' (+{len(missing) - 1} more) "
                f"of split '{cfg.train_split}'; give --labels-dir"
            )
        read = dataset.ground_truth
    else:
        if not Path(labels).is_dir():
            raise DataError(f"{labels}: not a folder of label PNGs")
        read = label_dir_reader(labels, dataset.num_classes)
    check_labels(samples, read, dataset.num_classes)
    head = {
        "rates": list(cfg.head_rates),
        "width": cfg.head_width,
        "dropout": cfg.head_dropout,
        "context": cfg.head_context,
        "skip": cfg.head_skip,
    }
    model = build_seg_model(cfg.backbone, cfg.weights, dataset.num_classes, head).to(device)
    meta = {
        "kind": "seg",
        "backbone": cfg.backbone,
        "classes": list(dataset.classes),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "head": head,
        "labels": "ground truth" if labels is None else str(Path(labels).resolve()),
        "config": to_dict(cfg),
        "dataset": dataset.name,
    }
    ds = SegDataset(samples, read, cfg)
    path = fit(model, ds, _step, cfg, out, meta, "seg", resume, progress)
    if cfg.calibrate and world()[0] == 0:
        _calibrate_checkpoint(path, samples, read, dataset.num_classes, device, progress)
    return path


def is_finished(path: str | Path, cfg: TrainSegConfig) -> bool:
    """Whether ``path`` is the final checkpoint of a run of ``cfg``: there, and calibrated when
    ``cfg.calibrate`` (a run stopped between the last epoch and its calibration is not)."""
    return Path(path).exists() and (not cfg.calibrate or "calibration" in read_meta(path))


# The background offsets `calibrate_background` tries, -1 … 3 in steps of 0.1; 0 is the
# network as trained, so calibration can only raise its agreement with the training labels.
BG_OFFSETS = tuple(round(0.1 * i, 1) for i in range(-10, 31))
# Images it reads, evenly spaced over the training split: on the demo's 300, thirds of 100
# chose 0.6, 0.7 and 0.9 where all 300 chose 0.7, for a third of the time (~7 s on 2 cores).
CALIBRATION_IMAGES = 100
CALIBRATION = "calibration.json"


@torch.inference_mode()
def calibrate_background(
    model,
    samples: list[Sample],
    labels,
    num_classes: int,
    mean,
    std,
    device="cpu",
    offsets=BG_OFFSETS,
) -> dict:
    """The offset b of ``offsets`` under which the network's single-scale argmax on ``samples``,
    with its background score lowered by b, agrees best with ``labels(sample)`` (mIoU, 255
    ignored; a tie goes to the smaller |b|).

    Labels that mark foreground as background more often than the reverse (pseudo labels
    that miss part of an object) train a network that says background wherever it is unsure,
    and so misses more than its labels did; b > 0 undoes that. Only training images and their
    labels are read. Returns {"bg_offset", "miou", "miou_uncalibrated", "images", "table"},
    ``table`` the mIoU at every offset."""
    from psa_infer.cam import normalize_image
    from psa_infer.datasets import load_image
    from psa_infer.metrics import scores

    n, offsets = num_classes + 1, tuple(sorted(offsets))
    # hist[j, t, f]: pixels of label t whose best foreground class is f and whose background
    # margin passes exactly j of the offsets; under offset i they are background when j > i.
    hist = np.zeros((len(offsets) + 1, n, n), np.int64)
    model.eval()
    for s in samples:
        x = torch.from_numpy(normalize_image(load_image(s.image), mean, std)[None]).to(device)
        logits = model(x.contiguous(memory_format=torch.channels_last))[0].float().cpu().numpy()
        margin = logits[0] - logits[1:].max(0)  # background wins where margin >= b
        fg = logits[1:].argmax(0) + 1
        target = labels(s).astype(np.int64)
        keep = target != IGNORE
        j = np.searchsorted(offsets, margin[keep], side="right")
        hist += np.bincount((j * n + target[keep]) * n + fg[keep], minlength=hist.size).reshape(
            hist.shape
        )
    as_bg = hist.sum(2)[::-1].cumsum(0)[::-1]  # [j, t]: margin passes j or more offsets
    as_fg = hist.cumsum(0)  # [j, t, f]: passes j or fewer
    confs = []
    for i in range(len(offsets)):
        conf = as_fg[i].copy()
        conf[:, 0] += as_bg[i + 1]
        confs.append(conf)
    mious = [scores(c)["miou"] for c in confs]
    at_zero = mious[offsets.index(0.0)] if 0.0 in offsets else float("nan")
    finite = [i for i, m in enumerate(mious) if np.isfinite(m)]
    if not finite:  # no labeled pixel: nothing to say, keep the network as it is
        return {
            "bg_offset": 0.0,
            "miou": None,
            "miou_uncalibrated": None,
            "images": len(samples),
            "table": {},
        }
    best = max(finite, key=lambda i: (mious[i], -abs(offsets[i])))
    return {
        "bg_offset": float(offsets[best]),
        "miou": round(mious[best], 2),
        "miou_uncalibrated": round(at_zero, 2),
        "images": len(samples),
        "table": {str(b): round(m, 2) for b, m in zip(offsets, mious, strict=True)},
    }


def _calibrate_checkpoint(path: Path, samples, labels, num_classes, device, progress) -> None:
    """Calibrate the final checkpoint at ``path`` in place (once: one that says it is
    calibrated is left alone) and write ``calibration.json`` beside it."""
    meta = read_meta(path)
    if "calibration" in meta:
        return
    model, meta = load_seg_model(path, device)
    model.to(memory_format=torch.channels_last)  # as `fit` trains on the CPU: faster there
    pick = np.unique(np.linspace(0, len(samples) - 1, CALIBRATION_IMAGES).round().astype(int))
    report = calibrate_background(
        model, [samples[i] for i in pick], labels, num_classes, meta["mean"], meta["std"], device
    )
    model.shift_background(report["bg_offset"])
    summary = {k: v for k, v in report.items() if k != "table"}
    (path.parent / CALIBRATION).write_text(json.dumps(report, indent=2) + "\n")
    save_checkpoint(path, model.state_dict(), {**meta, "calibration": summary})
    if progress:
        from tqdm import tqdm

        said = (
            f"agreement with the training labels {report['miou_uncalibrated']:.2f} → "
            f"{report['miou']:.2f} mIoU"
            if report["miou"] is not None
            else "no labeled pixel to calibrate on"
        )
        tqdm.write(
            f"train-seg: background offset {report['bg_offset']:g}: {said} on "
            f"{report['images']} images"
        )


def load_seg_model(path: str | Path, device: torch.device | str = "cpu"):
    """Rebuild a trained segmentation network from its checkpoint; (model in eval mode, meta)."""
    tensors, meta = load_checkpoint(path, kind="seg")
    model = build_seg_model(meta["backbone"], None, len(meta["classes"]) - 1, meta["head"])
    load_state_strict(model, tensors, str(path))
    return model.to(device).eval(), meta


@torch.no_grad()
def predict(model, img: np.ndarray, mean, std, device="cpu") -> np.ndarray:
    """The network's label map of one (H, W, 3) uint8 image, (H, W) uint8 (torch, scale 1)."""
    from psa_infer.cam import normalize_image

    x = torch.from_numpy(normalize_image(img, mean, std)[None]).to(device)
    return model(x)[0].argmax(0).to(torch.uint8).cpu().numpy()

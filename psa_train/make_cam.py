"""Stage: multi-scale + flip CAMs for every image of a split — ``psa make-cam``.

One ``<id>.npz`` per image (schema in psa_infer.artifacts). Existing files are skipped, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from psa_infer.artifacts import save_cam
from psa_infer.cam import multiscale_cam
from psa_infer.datasets import DataSet, load_image, output_path
from psa_infer.errors import PsaError
from psa_infer.runs import run_items
from psa_train.common import start_stage
from psa_train.config import MakeCamConfig


def torch_cam_forward(model: torch.nn.Module, device: torch.device):
    """Wrap a CAM network as the numpy ``forward`` of psa_infer.cam."""

    @torch.no_grad()
    def forward(batch: np.ndarray) -> np.ndarray:
        return model.cam(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    return forward


def make_cams(
    dataset: DataSet,
    checkpoint: str | Path,
    out: str | Path,
    cfg: MakeCamConfig,
    progress: bool = True,
    fail_fast: bool = False,
    forward=None,
) -> dict:
    """Write CAMs of ``cfg.split``; returns the counts of ``psa_infer.runs.run_items``
    (done, skipped, failed — failures listed in ``out/failures.jsonl``).

    ``forward``: (numpy forward, checkpoint meta) of another backend for the checkpoint's
    network (``export.onnx_export.cam_checkpoint_forward``: ONNX Runtime); default the torch
    network on ``cfg.device``.
    """
    from psa_train.train_cam import load_cam_model

    out, device = start_stage(out, cfg)
    if forward is None:
        model, meta = load_cam_model(checkpoint, device)
        forward = torch_cam_forward(model, device)
    else:
        forward, meta = forward
    check_classes(meta["classes"], dataset, checkpoint)

    def work(s) -> None:
        img = load_image(s.image)
        cam = multiscale_cam(
            forward, img, s.labels, cfg.scales, meta["mean"], meta["std"], cfg.flip
        )
        save_cam(output_path(out, s.id, ".npz"), cam, np.asarray(s.labels, np.int64))

    return run_items(
        dataset.split(cfg.split),
        out,
        lambda s: output_path(out, s.id, ".npz").exists(),
        work,
        desc="make-cam",
        fail_fast=fail_fast,
        progress=progress,
    )


def check_classes(classes: list[str], dataset: DataSet, checkpoint) -> None:
    """A checkpoint trained on other classes than the data set's is refused with a message."""
    if list(classes) != list(dataset.classes):
        raise PsaError(
            f"{checkpoint}: trained on classes {classes[1:]}, but the data set "
            f"{dataset.root} has {list(dataset.classes[1:])}"
        )

"""The torch backend of ``psa label``: the trained networks wrapped as numpy callables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from psa_infer.errors import PsaError
from psa_infer.pipeline import Labeler
from psa_train.common import resolve_device, set_threads
from psa_train.config import LabelConfig, MakeCamConfig


def torch_labeler(
    cam_ckpt: str | Path,
    aff_ckpt: str | Path,
    label_cfg: LabelConfig,
    cam_cfg: MakeCamConfig,
) -> tuple[Labeler, dict]:
    """A Labeler running both networks in torch; returns it and the CAM checkpoint's meta."""
    from psa_train.train_aff import load_aff_model
    from psa_train.train_cam import load_cam_model

    set_threads()
    device = resolve_device(label_cfg.device)
    cam_model, cam_meta = load_cam_model(cam_ckpt, device)
    aff_model, aff_meta = load_aff_model(aff_ckpt, device)
    if aff_meta["classes"] != cam_meta["classes"]:
        raise PsaError(
            f"{aff_ckpt}: trained for classes {aff_meta['classes'][1:]}, but {cam_ckpt} "
            f"predicts {cam_meta['classes'][1:]}"
        )

    @torch.no_grad()
    def cam_forward(batch: np.ndarray) -> np.ndarray:
        return cam_model.cam(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    @torch.no_grad()
    def aff_forward(batch: np.ndarray) -> np.ndarray:
        return aff_model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    @torch.no_grad()
    def classify(batch: np.ndarray) -> np.ndarray:
        return cam_model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    labeler = Labeler(
        cam_forward,
        aff_forward,
        aff_meta["mean"],
        aff_meta["std"],
        cam_cfg.scales,
        cam_cfg.flip,
        label_cfg.walk(),
        classify,
    )
    return labeler, cam_meta

"""Checkpoints: safetensors weights with a JSON sidecar (never pickles).

``<name>.safetensors`` holds tensors; ``<name>.json`` holds what a reader needs to rebuild the
network and preprocess images the same way: kind (cam/aff), backbone, class names, mean/std,
the stage config, toolkit version, and training progress. Both are written to temporary names
and renamed, so an interrupted write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from psa_train import __version__


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or of another kind/backbone; the message says which."""


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write tensors + sidecar atomically; returns the .safetensors path."""
    st, js = _paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp_st = st.with_name(f".{st.name}.tmp{os.getpid()}")
    tmp_js = js.with_name(f".{js.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp_st))
    meta = {**meta, "toolkit_version": __version__}
    tmp_js.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_st, st)
    os.replace(tmp_js, js)
    return st


def load_checkpoint(
    path: str | Path, kind: str | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors and sidecar; ``kind`` ("cam"/"aff") is checked when given."""
    st, js = _paths(path)
    if not st.exists():
        raise CheckpointError(f"{st}: checkpoint does not exist")
    if not js.exists():
        raise CheckpointError(f"{js}: sidecar missing (expected next to {st.name})")
    try:
        meta = json.loads(js.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{js}: not readable JSON ({e})") from None
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{st}: expected a {kind} checkpoint, got kind {meta.get('kind')!r}")
    try:
        tensors = load_file(str(st))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{st}: not a readable safetensors file ({e})") from None
    return tensors, meta


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file (the export bundle records its source checkpoints by hash)."""
    from psa_infer.bundle import file_sha256

    return file_sha256(_paths(path)[0])


def load_state_strict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str):
    """``load_state_dict(strict=True)`` with a one-line error naming the file."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shape = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or unexpected or shape:
        detail = []
        if missing:
            detail.append(f"missing {missing[0]} (+{len(missing) - 1} more)")
        if unexpected:
            detail.append(f"unexpected {unexpected[0]} (+{len(unexpected) - 1} more)")
        if shape:
            k = shape[0]
            detail.append(
                f"{k} has shape {tuple(tensors[k].shape)}, model wants {tuple(own[k].shape)}"
            )
        raise CheckpointError(f"{where}: weights do not fit this network: " + "; ".join(detail))
    model.load_state_dict(tensors, strict=True)

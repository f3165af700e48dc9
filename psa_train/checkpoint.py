"""Checkpoints: safetensors files whose header carries their metadata (never pickles).

``<name>.safetensors`` holds the tensors and, in its header (key ``psa``, a JSON string), what a
reader needs to rebuild the network and preprocess images the same way: kind (cam/aff),
backbone, class names, mean/std, the stage config, toolkit version, and training progress.
Weights and metadata are therefore one file, written to a temporary name and renamed once: an
interrupted write leaves either the old checkpoint or the new one, never a mix of the two.

``<name>.json`` repeats the metadata for people and older readers; it is written after the
rename, so it may lag one save behind after a crash. Readers take the header and fall back to
the sidecar only for checkpoints written before the header held the metadata.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from psa_infer.errors import PsaError
from psa_train import __version__

HEADER_KEY = "psa"
# What every reader (make-cam, label, export) takes from the metadata.
REQUIRED = ("kind", "backbone", "classes", "mean", "std")


class CheckpointError(PsaError):
    """A checkpoint is missing, unreadable or of another kind/backbone; the message says which."""


def _paths(path: str | Path) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def kill_point_for_tests(point: str, count) -> None:
    """Test hook: ``PSA_TEST_KILL=<point>:<count>`` SIGKILLs this process at that point.

    Points: ``step:<n>`` after the run's n-th optimiser step, ``log:<epoch>`` after an epoch's
    metrics row, ``<name>-temp:<epoch>`` with a checkpoint written under its temporary name and
    ``<name>-sidecar:<epoch>`` after its rename, before the sidecar (``name``: last, cam, aff).
    tests/psa_train/test_resume.py kills training there and checks that ``--resume`` still
    gives the bytes of an uninterrupted run.
    """
    if os.environ.get("PSA_TEST_KILL") == f"{point}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write tensors + metadata as one file (one rename), then the sidecar; returns its path."""
    st, js = _paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {**meta, "toolkit_version": __version__}
    text = json.dumps(meta, indent=2, sort_keys=True)
    tmp_st = st.with_name(f".{st.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp_st), metadata={HEADER_KEY: text})
    kill_point_for_tests(f"{st.stem}-temp", meta.get("epoch"))
    os.replace(tmp_st, st)
    kill_point_for_tests(f"{st.stem}-sidecar", meta.get("epoch"))
    _write_sidecar(js, text)
    return st


def _write_sidecar(js: Path, text: str) -> None:
    tmp = js.with_name(f".{js.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, js)


def repair_sidecar(path: str | Path) -> None:
    """Rewrite ``<name>.json`` from the header where a crash left it one save behind."""
    st, js = _paths(path)
    with safe_open(str(st), "pt") as f:
        text = (f.metadata() or {}).get(HEADER_KEY)
    if text is not None and (not js.exists() or js.read_bytes() != text.encode()):
        _write_sidecar(js, text)


def read_meta(path: str | Path) -> dict:
    """The checkpoint's metadata (header, else the sidecar of an older checkpoint), validated."""
    st, js = _paths(path)
    if not st.exists():
        raise CheckpointError(f"{st}: checkpoint does not exist")
    try:
        with safe_open(str(st), "pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{st}: not a readable safetensors file ({_one_line(e)})") from None
    if HEADER_KEY in header:
        where, text = st, header[HEADER_KEY]
    elif js.exists():
        where, text = js, js.read_bytes().decode("utf-8", errors="replace")
    else:
        raise CheckpointError(
            f"{st}: no metadata in its header and no sidecar {js.name} next to it"
        )
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: metadata is not readable JSON ({e})") from None
    _check_meta(meta, where)
    return meta


def _check_meta(meta, where: Path) -> None:
    need = ", ".join(REQUIRED)
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{where}: expected checkpoint metadata as a JSON object with {need}, "
            f"got a {type(meta).__name__}"
        )
    for key in REQUIRED:
        if key not in meta:
            raise CheckpointError(f"{where}: checkpoint metadata lacks '{key}' (expected {need})")
    for key in ("kind", "backbone"):
        if not isinstance(meta[key], str):
            raise CheckpointError(f"{where}: '{key}' must be a string, got {meta[key]!r}")
    classes = meta["classes"]
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
    ):
        raise CheckpointError(
            f"{where}: 'classes' must be a list of names, background first, got {classes!r}"
        )
    for key in ("mean", "std"):
        v = meta[key]
        if not isinstance(v, list) or len(v) != 3 or not all(_is_number(x) for x in v):
            raise CheckpointError(f"{where}: '{key}' must be 3 numbers (R, G, B), got {v!r}")


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def load_checkpoint(
    path: str | Path, kind: str | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors and metadata; ``kind`` ("cam"/"aff") is checked when given."""
    st, _ = _paths(path)
    meta = read_meta(st)
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"{st}: expected a {kind} checkpoint, got kind {meta['kind']!r}")
    try:
        tensors = load_file(str(st))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{st}: not a readable safetensors file ({_one_line(e)})") from None
    return tensors, meta


def sha256(path: str | Path) -> str:
    """Hex sha256 of a file (the export bundle records its source checkpoints by hash)."""
    from psa_infer.artifacts import file_sha256

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

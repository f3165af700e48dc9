"""Per-image artifact files with a schema (no pickles), written atomically.

* CAM file ``<id>.npz``: ``cam`` (K, H, W) float32 normalised CAMs of the present classes,
  ``keys`` (K,) int64 their class ids (1..C, background excluded).
* Affinity-label file ``<id>.npz``: ``la`` and ``ha`` (K+1, H, W) float16 CRF score maps
  (channel 0 background, then ``keys`` in order) and ``keys`` (K,) int64.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np

from psa_infer.errors import PsaError


class ArtifactError(PsaError):
    """An artifact file does not match its schema; the message names file, field and shape."""


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to a temporary name, then rename: no half-written files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a .npy (or pickle) under an .npz name
            raise ArtifactError(f"{path}: expected an .npz archive of named arrays, got a .npy")
        with f:
            return {k: f[k] for k in f.files}
    except ArtifactError:
        raise
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ArtifactError(f"{path}: not a readable .npz ({e})") from None


def _expect(path, name: str, arr, ndim: int, dtypes: tuple, shape_txt: str) -> None:
    if arr is None:
        raise ArtifactError(f"{path}: expected an array '{name}' of shape {shape_txt}, missing")
    if arr.ndim != ndim or arr.dtype not in dtypes:
        want = "/".join(np.dtype(d).name for d in dtypes)
        raise ArtifactError(
            f"{path}: expected '{name}' of shape {shape_txt} {want}, got {arr.shape} {arr.dtype}"
        )


def save_cam(path: str | Path, cam: np.ndarray, keys: np.ndarray) -> None:
    save_npz(path, cam=np.asarray(cam, np.float32), keys=np.asarray(keys, np.int64))


def load_cam(
    path: str | Path, num_classes: int | None = None, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a CAM file → (cam (K, H, W) float32, keys (K,) int64)."""
    path = Path(path)
    d = _load(path)
    cam, keys = d.get("cam"), d.get("keys")
    _expect(path, "cam", cam, 3, (np.float32,), "(K, H, W)")
    _expect(path, "keys", keys, 1, (np.int64, np.int32), "(K,)")
    if len(keys) != cam.shape[0]:
        raise ArtifactError(
            f"{path}: 'keys' has {len(keys)} entries but 'cam' has {cam.shape[0]} maps"
        )
    if len(keys) and (keys.min() < 1 or (num_classes is not None and keys.max() > num_classes)):
        hi = num_classes if num_classes is not None else "C"
        raise ArtifactError(f"{path}: 'keys' must be class ids in 1..{hi}, got {keys.tolist()}")
    if size is not None and cam.shape[1:] != tuple(size):
        raise ArtifactError(
            f"{path}: expected 'cam' of spatial size {tuple(size)} (the image), got {cam.shape[1:]}"
        )
    if not np.isfinite(cam).all():
        raise ArtifactError(f"{path}: 'cam' contains NaN or infinity")
    return cam, keys.astype(np.int64)


def check_keys(path: str | Path, keys: np.ndarray, labels) -> None:
    """A CAM file's ``keys`` must be the image's own labels (``None``: nothing to check)."""
    if labels is not None and tuple(int(k) for k in keys) != tuple(sorted(labels)):
        raise ArtifactError(
            f"{path}: CAMs of class ids {[int(k) for k in keys]}, but the image is labeled "
            f"{sorted(labels)} — made from other labels or another data set; re-run make-cam"
        )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints, weights, bundles, engines)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_aff_scores(path: str | Path, la: np.ndarray, ha: np.ndarray, keys: np.ndarray) -> None:
    save_npz(
        path,
        la=np.asarray(la, np.float16),
        ha=np.asarray(ha, np.float16),
        keys=np.asarray(keys, np.int64),
    )


def load_aff_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read and validate an affinity-label file → (la, ha (K+1, H, W) float32, keys)."""
    path = Path(path)
    d = _load(path)
    la, ha, keys = d.get("la"), d.get("ha"), d.get("keys")
    for name, a in (("la", la), ("ha", ha)):
        _expect(path, name, a, 3, (np.float16, np.float32), "(K+1, H, W)")
    _expect(path, "keys", keys, 1, (np.int64, np.int32), "(K,)")
    if la.shape != ha.shape or la.shape[0] != len(keys) + 1:
        raise ArtifactError(
            f"{path}: expected 'la' and 'ha' of shape ({len(keys) + 1}, H, W) for "
            f"{len(keys)} keys, got {la.shape} and {ha.shape}"
        )
    return la.astype(np.float32), ha.astype(np.float32), keys.astype(np.int64)

"""The one base class of errors a user can cause and fix (torch-free).

Every error that is about the user's input — a file, a folder, a config key, an option, an
environment variable — is a ``PsaError`` whose message is one line naming that input and what
was expected. The CLI prints these as ``Error: <message>`` with exit status 1; any other
exception is a bug in psa and is reported as such (``cli.friendly``).

It derives from ``ValueError`` so that library callers who catch ``ValueError`` keep working.
"""

from __future__ import annotations


class PsaError(ValueError):
    """A user error: bad input, named in a one-line message."""


# This project's distribution name on the package index (`psa` there is an unrelated project);
# the command it installs is still `psa`.
DIST = "psa-affinity"

# Optional dependency (import name) → the extra of this package that installs it.
EXTRAS = {
    "torch": "train",
    "safetensors": "train",
    "skimage": "train",
    "pydensecrf": "crf",
    "onnxruntime": "cpu",
    "numba": "cpu",
    "onnxscript": "export",
    "tensorrt": "trt",
    "cuda": "trt",
    "matplotlib": "dev",
    "psutil": "dev",
    "pycocotools": "coco",
}


def missing_module_message(name: str) -> str | None:
    """One line for a missing optional dependency (``None`` when it is not one of ours)."""
    top = (name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return (
        f"this command needs the Python module '{top}', which is not installed: install the "
        f"'{extra}' extra, pip install '{DIST}[{extra}]' (in a checkout: pip install -e "
        f"'.[{extra}]')"
    )

"""DESIGN.md's rule: the runtime never imports torch (Jetson images carry no PyTorch)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import psa_infer
from tests.conftest import ROOT


def test_every_psa_infer_module_imports_without_torch():
    modules = [m.name for m in pkgutil.walk_packages(psa_infer.__path__, "psa_infer.")]
    assert len(modules) >= 8  # the walk found the package's modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
        "print('ok', len(sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")

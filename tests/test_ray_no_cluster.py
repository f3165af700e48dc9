"""`psa label --engine ray` where Ray cannot run: no cluster at --address, Ray not installed.

In a file of its own: while another test module's local Ray is up, `--address auto` would find
it. Each case runs the CLI in a fresh process (one line on stderr, exit 1).
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_no_cluster_at_the_address_and_no_ray_are_one_line_each(tiny_bundle, tmp_path):
    args = [
        "label",
        str(tiny_bundle.data),
        "--backend",
        "onnxruntime",
        "--model",
        str(tiny_bundle.bundle),
    ]
    args += [
        "-o",
        str(tmp_path / "o"),
        "--engine",
        "ray",
        "--address",
        "auto",
        "-q",
        "--split",
        "val",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    code = f"from cli import main; main({args!r})"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert r.returncode == 1 and len(errors) == 1, r.stderr[-2000:]
    assert "--address auto: no Ray cluster there" in errors[0]

    blocked = "import sys; sys.modules['ray'] = None; " + code.replace("'auto', ", "")
    blocked = blocked.replace("'--address', ", "")
    r = subprocess.run([sys.executable, "-c", blocked], env=env, capture_output=True, text=True)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: Ray is not installed: pip install 'psa-affinity[ray]'"
    )

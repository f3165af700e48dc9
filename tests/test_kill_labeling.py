"""kill -9 while a per-image stage runs, then run it again: the result is the uninterrupted run's.

Each output file is written to a temporary name and renamed (``psa_infer.palette.atomic_path``,
``psa_infer.artifacts.save_npz``), and a re-run skips the finished ones, so a kill at any
moment leaves only whole files (and, at most, a hidden temporary file that nothing reads).
The kills land at several points of the run: after the first file, in the middle, near the
end, and right at the start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from tests.conftest import ROOT


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    code = f"from cli import main; main({args!r})"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _outputs(out: Path, suffix: str) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob(f"*{suffix}"))
        if not p.name.startswith(".")
    }


def _kill_when(proc: subprocess.Popen, out: Path, suffix: str, n_files: int, limit=60.0) -> int:
    """SIGKILL ``proc`` once ``out`` holds ``n_files`` outputs (0: at once); returns the count."""
    t0 = time.monotonic()
    while n_files and len(list(out.rglob(f"[!.]*{suffix}"))) < n_files:
        if proc.poll() is not None or time.monotonic() - t0 > limit:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(out.rglob(f"[!.]*{suffix}")))


def _kill_and_resume(ws: Path, args: list[str], out: Path, suffix: str, total: int, points):
    """Kill runs of ``args`` at each of ``points`` (fractions of ``total``), then finish."""
    counts = []
    for frac in points:
        proc = _start(args, ws)
        counts.append(_kill_when(proc, out, suffix, int(frac * total)))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.stderr[-1500:]
    leftovers = [p.name for p in out.rglob(".*")]
    assert all(".tmp" in n for n in leftovers), leftovers  # hidden temporaries, nothing else
    return counts


@pytest.fixture
def photos(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(24):
        img = rng.integers(0, 255, (40 + (i % 3) * 8, 64, 3)).astype(np.uint8)
        Image.fromarray(img).save(folder / f"im{i:02d}.png")
    monkeypatch.chdir(tmp_path)
    return folder


def test_label_killed_at_any_point_resumes_to_the_same_bytes(tiny_bundle, photos, tmp_path):
    base = ["label", str(photos), "--predict-classes", "--backend", "onnxruntime"]
    base += ["--model", str(tiny_bundle.bundle)]
    r = CliRunner().invoke(main, [*base, "-o", "ref"])
    assert r.exit_code == 0, r.stderr[-1500:]
    ref = _outputs(tmp_path / "ref", ".png")
    assert len(ref) == 24
    args = [*base, "-o", "out"]
    counts = _kill_and_resume(tmp_path, args, tmp_path / "out", ".png", 24, (0, 1 / 24, 0.5, 0.9))
    assert _outputs(tmp_path / "out", ".png") == ref
    assert counts[1:] == sorted(counts[1:]) and counts[-1] < 24  # the kills interrupted it


def test_make_cam_and_make_aff_labels_killed_resume_to_the_same_bytes(tiny_bundle, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_bundle.data, data)
    (data / "ImageSets/Segmentation/train.txt").write_text(
        "".join(f"img_{i:03d}\n" for i in range(6))
    )
    os.chdir(tmp_path)
    cam = ["make-cam", str(data), "-c", str(tiny_bundle.cam), "--split", "train"]
    assert CliRunner().invoke(main, [*cam, "-o", "ref_cams"]).exit_code == 0
    ref = _outputs(tmp_path / "ref_cams", ".npz")
    _kill_and_resume(tmp_path, [*cam, "-o", "cams"], tmp_path / "cams", ".npz", 6, (0.3, 0.7))
    assert _outputs(tmp_path / "cams", ".npz") == ref

    aff = ["make-aff-labels", str(data), "--cams", "cams"]
    assert CliRunner().invoke(main, [*aff, "-o", "ref_aff"]).exit_code == 0
    ref = _outputs(tmp_path / "ref_aff", ".npz") | _outputs(tmp_path / "ref_aff", ".png")
    _kill_and_resume(tmp_path, [*aff, "-o", "aff"], tmp_path / "aff", ".npz", 6, (0.4,))
    got = _outputs(tmp_path / "aff", ".npz") | _outputs(tmp_path / "aff", ".png")
    assert got == ref and len(ref) == 12

"""run_items in worker processes: the same files, counts and failures as in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from psa_infer.datasets import DataError, Sample
from psa_infer.errors import PsaError
from psa_infer.runs import FAILURES, run_items
from tests.conftest import ROOT


# Module level, so that worker processes can import them.
def _write_square(s: Sample, out: Path) -> None:
    """Writes out/<id>.npy; an image named "bad" is a DataError, one named "bug" a bug."""
    if s.image.name == "bad":
        raise DataError(f"{s.image}: not a readable image")
    if s.image.name == "bug":
        raise RuntimeError("a bug, not a bad image")
    if s.image.name == "die":
        os._exit(1)  # as a worker killed for memory
    n = int(s.id.split("_")[1])
    np.save(out / f"{s.id}.npy", np.arange(n * n).reshape(n, n))


def _write_pid(s: Sample, out: Path) -> None:
    (out / f"{s.id}.pid").write_text(str(os.getpid()))


def _pid_then_wait(s: Sample, out: Path) -> None:
    (out / f"{s.id}.pid").write_text(str(os.getpid()))
    time.sleep(0.5)


def _samples(tmp_path: Path, names: list[str]) -> list[Sample]:
    return [Sample(f"s_{i + 1}", tmp_path / name) for i, name in enumerate(names)]


def _run(tmp_path, samples, out_name, workers, **kw):
    out = tmp_path / out_name
    out.mkdir(exist_ok=True)
    stats = run_items(
        samples,
        out,
        lambda s: (out / f"{s.id}.npy").exists(),
        partial(_write_square, out=out),
        desc="test",
        progress=False,
        workers=workers,
        **kw,
    )
    return out, stats


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_workers_write_what_one_process_writes(tmp_path):
    samples = _samples(tmp_path, ["a", "b", "bad", "c", "d", "bad", "e"])
    one, s1 = _run(tmp_path, samples, "one", 1)
    two, s2 = _run(tmp_path, samples, "two", 2)
    assert (s1["done"], s1["failed"]) == (s2["done"], s2["failed"]) == (5, 2)
    assert _files(one).keys() == _files(two).keys()
    assert all(_files(one)[k] == _files(two)[k] for k in _files(one) if k != FAILURES)
    rows = [json.loads(x) for x in (two / FAILURES).read_text().splitlines()]
    assert [r["id"] for r in rows] == ["s_3", "s_6"]  # in the samples' order
    assert (one / FAILURES).read_text() == (two / FAILURES).read_text()


def test_the_work_runs_in_worker_processes(tmp_path):
    samples = _samples(tmp_path, ["a", "b", "c", "d"])
    for workers, out in ((1, tmp_path / "one"), (2, tmp_path / "two")):
        out.mkdir()
        run_items(samples, out, lambda s: False, partial(_write_pid, out=out), desc="t",
                  progress=False, workers=workers)  # fmt: skip
    assert {p.read_text() for p in (tmp_path / "one").glob("*.pid")} == {str(os.getpid())}
    pids = {p.read_text() for p in (tmp_path / "two").glob("*.pid")}
    assert str(os.getpid()) not in pids and 1 <= len(pids) <= 2


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited, not yet reaped


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_of_a_killed_run_exit(tmp_path):
    """A run killed outright (SIGKILL, out of memory) leaves no worker waiting for work."""
    script = (
        "import sys; from functools import partial; from pathlib import Path\n"
        "from psa_infer.runs import run_items\n"
        "from tests.psa_infer.test_runs import _pid_then_wait, _samples\n"
        "out = Path(sys.argv[1])\n"
        "run_items(_samples(out, ['a'] * 40), out, lambda s: False,\n"
        "          partial(_pid_then_wait, out=out), desc='t', progress=False, workers=2)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = {int(p.read_text()) for p in tmp_path.glob("*.pid")}
    assert len(pids) == 2 and run.poll() is None
    run.kill()
    run.wait()
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_gone(pid) for pid in pids)


def test_workers_skip_what_is_done(tmp_path):
    samples = _samples(tmp_path, ["a", "b", "c"])
    out, _ = _run(tmp_path, samples, "out", 2)
    (out / "s_2.npy").unlink()
    _, again = _run(tmp_path, samples, "out", 2)
    assert (again["done"], again["skipped"]) == (1, 2)
    assert (out / "s_2.npy").exists()


def test_fail_fast_in_workers_raises_the_images_error(tmp_path):
    samples = _samples(tmp_path, ["a", "bad", "c"])
    with pytest.raises(DataError, match="bad: not a readable image"):
        _run(tmp_path, samples, "out", 2, fail_fast=True)


def test_a_bug_in_a_worker_stops_the_run(tmp_path):
    samples = _samples(tmp_path, ["a", "bug", "c", "d"])
    with pytest.raises(RuntimeError, match="a bug"):
        _run(tmp_path, samples, "out", 2)


def test_a_worker_that_dies_is_one_clear_error(tmp_path):
    samples = _samples(tmp_path, ["a", "die", "c", "d"])
    with pytest.raises(PsaError, match="a worker process died .* run again with fewer workers"):
        _run(tmp_path, samples, "out", 2)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_workers_must_be_a_positive_integer(tmp_path, workers):
    with pytest.raises(PsaError, match="workers: expected an integer >= 1"):
        _run(tmp_path, _samples(tmp_path, ["a"]), "out", workers)


def test_make_aff_labels_in_two_processes_writes_the_same_bytes(voc_root, tmp_path):
    """The dense CRF runs in worker processes: every la/ha file and preview is the one a single
    process writes, byte for byte."""
    from psa_infer.artifacts import save_cam
    from psa_infer.datasets import open_dataset
    from psa_infer.palette import load_label_png
    from psa_train.config import AffLabelsConfig
    from psa_train.make_aff_labels import make_aff_labels

    ds = open_dataset(voc_root)
    cams = tmp_path / "cams"
    for s in ds.split("train"):
        gt = load_label_png(s.mask)
        c = int(gt[gt < 255].max())
        blurred = (gt == c).astype(np.float32) * 0.9 + 0.05
        save_cam(cams / f"{s.id}.npz", blurred[None], [c])
    cfg = replace(AffLabelsConfig(), split="train")
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"aff_{workers}"
        stats = make_aff_labels(ds, cams, out, cfg, progress=False, workers=workers)
        assert (stats["done"], stats["failed"]) == (3, 0)
        outs[workers] = {
            p.relative_to(out): p.read_bytes()
            for p in sorted(out.rglob("*"))
            if p.suffix in (".npz", ".png")
        }
    assert len(outs[1]) == 6 and outs[1] == outs[2]


def test_make_aff_labels_cli_refuses_zero_workers(voc_root, tmp_path):
    from click.testing import CliRunner

    from cli import main

    args = ["make-aff-labels", str(voc_root), "--cams", str(tmp_path), "-o", str(tmp_path / "o")]
    r = CliRunner().invoke(main, [*args, "--workers", "0"])
    assert r.exit_code == 2 and "--workers" in r.output

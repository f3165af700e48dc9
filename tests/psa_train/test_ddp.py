"""Training under torchrun: 2 gloo processes against one process at the same global batch.

The runs are subprocesses (``python -m torch.distributed.run --standalone --nproc-per-node 2
-m cli …``) on the `tiny` backbone and 37×45 images, every process on one thread (torchrun's
default for several processes, set here for the one-process runs too).

What can match and why:
- train-seg with ``head_dropout=0``, BatchNorm frozen (a backbone from a weights file) and no
  ignored pixels (scale 1, a crop inside the image, ground-truth masks): each rank takes its
  slice of the one-process batch, and its loss is the mean over as many pixels as the other's,
  so DDP's average of the two ranks' gradients is the one-process gradient up to the order of
  float additions. The weights therefore agree to float noise, not bitwise.
- train-cam draws Dropout2d masks per rank (its dropout is part of the network), so a 2-process
  run is another sample of the same recipe than the one-process run; what holds there is that
  a 2-process run killed and resumed gives the bytes of the uninterrupted 2-process run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import ROOT, write_voc
from tests.psa_train.test_resume import CAM_ARGS, assert_same_run, rows

SEG_ARGS = [
    "--backbone",
    "tiny",
    "--epochs",
    "2",
    "--device",
    "cpu",
    *("--set", "train_seg.crop=32"),
    *("--set", "train_seg.batch_size=4"),
    *("--set", "train_seg.scale_range=[1.0,1.0]"),
    *("--set", "train_seg.head_width=8"),
    *("--set", "train_seg.head_rates=[1]"),
    *("--set", "train_seg.head_dropout=0"),
    *("--set", "train_seg.lr=0.05"),
]


def run(args, procs: int = 1, kill: str | None = None, **env) -> subprocess.CompletedProcess:
    """The CLI in one process, or under torchrun in ``procs``; returns the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env}
    env.pop("PSA_TEST_KILL", None)
    if kill:
        env["PSA_TEST_KILL"] = kill
    launch = [sys.executable, "-m", "cli"]
    if procs > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += ["--nproc-per-node", str(procs), "-m", "cli"]
    cmd = [*launch, *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    write_voc(root / "voc", n=16)  # 8 training images: 2 steps of 4 (2 per rank) an epoch
    from psa_train.backbones import build_backbone

    torch.manual_seed(0)  # a weights file makes the backbone "pretrained": BatchNorm frozen
    save_file(build_backbone("tiny", None).state_dict(), str(root / "tiny.safetensors"))
    return root


def test_two_processes_train_as_one_at_the_same_global_batch(data):
    args = ["train-seg", data / "voc", "--weights", data / "tiny.safetensors", *SEG_ARGS]
    ok(run([*args, "-o", data / "seg1"]))
    ok(run([*args, "-o", data / "seg2"], procs=2))
    one, two = (load_file(str(data / d / "seg.safetensors")) for d in ("seg1", "seg2"))
    assert one.keys() == two.keys()
    for k in one:
        # 4 SGD steps whose gradients differ only in the order of float32 additions (two
        # half-batch sums averaged vs one sum): measured max |Δ| 2e-9; 500x margin.
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    start = start_weights(data)
    moved = max(float((one[k].double() - start[k].double()).abs().max()) for k in one)
    assert moved > 0.1  # training moved the weights far beyond the tolerance (measured 1.3)
    r1, r2 = rows(data / "seg1"), rows(data / "seg2")
    assert [r["epoch"] for r in r2] == [1, 2]
    for a, b in zip(r1, r2, strict=True):
        assert a.keys() == b.keys()
        for k in a:  # the ranks' means of their halves = the one batch's mean (equal halves)
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k  # measured 1e-7 rel


def start_weights(data) -> dict:
    """The network both runs start from, built as train_seg builds it (seed 0, then the head)."""
    from psa_train.train_seg import build_seg_model

    torch.manual_seed(0)
    head = {"rates": [1], "width": 8, "dropout": 0.0}
    return build_seg_model("tiny", str(data / "tiny.safetensors"), 2, head).state_dict()


def test_two_processes_killed_and_resumed_give_the_uninterrupted_bytes(data, tmp_path):
    """Rank 0 dies writing epoch 2's checkpoint; torchrun stops rank 1. The resume repeats
    epoch 2 on both ranks, Dropout2d draws included (each rank seeds them per epoch)."""
    args = ["train-cam", data / "voc", *CAM_ARGS]
    ok(run([*args, "-o", tmp_path / "ref"], procs=2))
    r = run([*args, "-o", tmp_path / "cam"], procs=2, kill="last-temp:2")
    assert r.returncode != 0 and not (tmp_path / "cam" / "cam.safetensors").exists()
    assert json.loads((tmp_path / "cam" / "last.json").read_text())["epoch"] == 1
    ok(run([*args, "-o", tmp_path / "cam", "--resume"], procs=2))
    assert_same_run(tmp_path / "cam", tmp_path / "ref", "cam")
    # rank 0 alone wrote: no temporary file of another process is left behind
    assert not [p.name for p in (tmp_path / "ref").iterdir() if p.name.startswith(".")]


def test_a_world_size_that_does_not_divide_the_batch_is_one_line(data, tmp_path):
    # torchrun's variables without torchrun: the check comes before joining the process group
    r = run(["train-cam", data / "voc", "-o", tmp_path, *CAM_ARGS], RANK="0", WORLD_SIZE="3")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "Error: train_cam.batch_size=2 is the global batch, split evenly over the 3 processes "
        "of WORLD_SIZE: give a multiple of 3"
    ]

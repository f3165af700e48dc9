"""Kill -9 and --resume: the final checkpoint's bytes equal those of an uninterrupted run.

Training runs in a subprocess (`python -m cli`) on the `tiny` backbone and a few 37×45 images,
so an epoch takes a fraction of a second. ``PSA_TEST_KILL=<point>:<n>`` (the test hook in
psa_train.checkpoint) SIGKILLs the run at an exact place: after optimiser step n, after an
epoch's metrics row, with a checkpoint under its temporary name, or renamed but without its
sidecar. Every run of a test uses the same arguments and environment (thread count included:
the bytes depend on it), so any difference comes from the resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from tests.conftest import ROOT, write_voc

EPOCHS = 3
CAM_ARGS = [
    "--backbone",
    "tiny",
    "--weights",
    "none",
    "--epochs",
    EPOCHS,
    "--device",
    "cpu",
    "--set",
    "train_cam.crop=32",
    "--set",
    "train_cam.batch_size=2",
    "--set",
    "train_cam.resize_long=[32,48]",
    "--set",
    "train_cam.select=last",  # the kill points count epochs; test_heldout resumes a best-run
]
AFF_ARGS = [
    "--backbone",
    "tiny",
    "--weights",
    "none",
    "--epochs",
    EPOCHS,
    "--device",
    "cpu",
    "--set",
    "train_aff.crop=32",
    "--set",
    "train_aff.batch_size=2",
    "--set",
    "train_aff.radius=2",
]


def psa(*args, kill: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter; with ``kill``, expect it to die by SIGKILL there."""
    env = {k: v for k, v in os.environ.items() if k != "PSA_TEST_KILL"}
    if kill:
        env["PSA_TEST_KILL"] = kill
    r = subprocess.run(
        [sys.executable, "-m", "cli", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if kill:
        assert r.returncode == -signal.SIGKILL, f"not killed at {kill}: {r.stderr[-2000:]}"
    else:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def rows(out) -> list[dict]:
    """metrics.jsonl without the wall-clock column."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time_s"} for x in lines]


def assert_same_run(out, ref, name: str) -> None:
    assert (out / f"{name}.safetensors").read_bytes() == (ref / f"{name}.safetensors").read_bytes()
    assert rows(out) == rows(ref)  # one row per epoch, none repeated after the resume
    assert [r["epoch"] for r in rows(out)] == list(range(1, EPOCHS + 1))
    assert json.loads((out / "last.json").read_text())["epoch"] == EPOCHS


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_voc(root / "voc", n=10)  # 5 training images: 1 held out, 4 train in 2 steps of 2
    return root


@pytest.fixture(scope="module")
def cam_ref(data):
    """One uninterrupted train-cam run (two such runs are byte-identical, checked below)."""
    psa("train-cam", data / "voc", "-o", data / "cam_ref", *CAM_ARGS)
    return data / "cam_ref"


def test_two_uninterrupted_runs_are_byte_identical(data, cam_ref, tmp_path):
    psa("train-cam", data / "voc", "-o", tmp_path / "again", *CAM_ARGS)
    assert_same_run(tmp_path / "again", cam_ref, "cam")


@pytest.mark.parametrize(
    "kills",
    [
        ("step:3", "log:2"),  # mid-epoch 2; then after epoch 2's row, before its checkpoint
        ("last-temp:1", "last-sidecar:2"),  # inside the checkpoint write, before/after rename
        ("last-sidecar:3", "cam-temp:3"),  # the last epoch, then the final checkpoint
    ],
)
def test_train_cam_killed_and_resumed_gives_the_uninterrupted_bytes(data, cam_ref, tmp_path, kills):
    out = tmp_path / "cam"
    psa("train-cam", data / "voc", "-o", out, *CAM_ARGS, kill=kills[0])
    for k in kills[1:]:
        psa("train-cam", data / "voc", "-o", out, *CAM_ARGS, "--resume", kill=k)
    psa("train-cam", data / "voc", "-o", out, *CAM_ARGS, "--resume")
    assert_same_run(out, cam_ref, "cam")


def test_train_cam_killed_from_outside_and_resumed(data, cam_ref, tmp_path):
    """A real kill -9 from another process, wherever the run happens to be after epoch 1."""
    out = tmp_path / "cam"
    env = {k: v for k, v in os.environ.items() if k != "PSA_TEST_KILL"}
    cmd = [sys.executable, "-m", "cli", "train-cam", str(data / "voc"), "-o", str(out)]
    p = subprocess.Popen(
        [*cmd, *map(str, CAM_ARGS)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (out / "last.safetensors").exists() and p.poll() is None:
        assert time.monotonic() < deadline, "train-cam wrote no last.safetensors in 60 s"
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    psa("train-cam", data / "voc", "-o", out, *CAM_ARGS, "--resume")
    assert_same_run(out, cam_ref, "cam")


@pytest.fixture(scope="module")
def aff_labels(data):
    """la/ha maps from a random-weight tiny CAM network (their content does not matter here)."""
    import torch

    from cli import main
    from psa_train.checkpoint import save_checkpoint
    from psa_train.train_cam import build_cam_model

    torch.manual_seed(0)
    meta = {
        "kind": "cam",
        "backbone": "tiny",
        "classes": ["background", "cat", "dog"],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    cam = save_checkpoint(
        data / "cam0" / "cam", build_cam_model("tiny", None, 2).state_dict(), meta
    )
    cli = CliRunner()
    for args in (
        ["make-cam", data / "voc", "-c", cam, "-o", data / "cams", "--device", "cpu"]
        + ["--set", "make_cam.scales=[1.0]"],
        ["make-aff-labels", data / "voc", "--cams", data / "cams", "-o", data / "affl", "--no-crf"],
    ):
        r = cli.invoke(main, [str(a) for a in args])
        assert r.exit_code == 0, r.output
    return data / "affl"


def test_train_aff_killed_and_resumed_gives_the_uninterrupted_bytes(data, aff_labels, tmp_path):
    def train_aff(out, *extra, kill=None):
        psa("train-aff", data / "voc", "--aff-labels", aff_labels, "-o", out, *AFF_ARGS, *extra,
            kill=kill)  # fmt: skip

    train_aff(tmp_path / "ref")
    out = tmp_path / "aff"
    train_aff(out, kill="step:3")  # mid-epoch 2
    train_aff(out, "--resume", kill="last-temp:2")  # epoch 2's checkpoint, before its rename
    train_aff(out, "--resume")
    assert_same_run(out, tmp_path / "ref", "aff")

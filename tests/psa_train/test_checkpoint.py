"""Checkpoints as one file (metadata in the safetensors header), their validation, and the rules
a ``--resume`` applies before it continues a run."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from psa_train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

META = {
    "kind": "cam",
    "backbone": "tiny",
    "classes": ["background", "cat", "dog"],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
TENSORS = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}


def test_metadata_lives_in_the_header_and_the_sidecar_repeats_it(tmp_path):
    st = save_checkpoint(tmp_path / "cam", TENSORS, {**META, "epoch": 2})
    with safe_open(str(st), "pt") as f:
        header = json.loads(f.metadata()["psa"])
    assert header == json.loads((tmp_path / "cam.json").read_text())
    assert header["epoch"] == 2 and "toolkit_version" in header
    tensors, meta = load_checkpoint(st, kind="cam")
    assert torch.equal(tensors["w"], TENSORS["w"]) and meta == header
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_the_header_wins_over_a_sidecar_left_one_save_behind(tmp_path):
    # A kill between the rename of the .safetensors and the sidecar write leaves this pair.
    save_checkpoint(tmp_path / "last", TENSORS, {**META, "epoch": 2})
    stale = (tmp_path / "last.json").read_text()
    save_checkpoint(tmp_path / "last", TENSORS, {**META, "epoch": 3})
    (tmp_path / "last.json").write_text(stale)
    assert load_checkpoint(tmp_path / "last")[1]["epoch"] == 3


def test_an_older_checkpoint_with_only_a_sidecar_still_loads(tmp_path):
    save_file(TENSORS, str(tmp_path / "cam.safetensors"))  # no header metadata
    (tmp_path / "cam.json").write_text(json.dumps(META))
    tensors, meta = load_checkpoint(tmp_path / "cam.safetensors", kind="cam")
    assert meta == META and torch.equal(tensors["w"], TENSORS["w"])


def test_no_header_metadata_and_no_sidecar_is_an_error(tmp_path):
    save_file(TENSORS, str(tmp_path / "cam.safetensors"))
    with pytest.raises(CheckpointError, match=r"cam\.safetensors: no metadata .* no sidecar"):
        load_checkpoint(tmp_path / "cam.safetensors")


@pytest.mark.parametrize("keep", [10, 100, 0])
def test_a_truncated_safetensors_file_is_one_line(tmp_path, keep):
    st = save_checkpoint(tmp_path / "cam", TENSORS, META)
    data = st.read_bytes()
    st.write_bytes(data[: len(data) - keep] if keep else b"")
    with pytest.raises(CheckpointError, match=r"cam\.safetensors: not a readable safetensors") as e:
        load_checkpoint(st)
    assert "\n" not in str(e.value)


def test_a_sidecar_that_is_a_json_list_names_the_file(tmp_path):
    save_file(TENSORS, str(tmp_path / "cam.safetensors"))
    (tmp_path / "cam.json").write_text(json.dumps([META]))
    with pytest.raises(CheckpointError, match=r"cam\.json: expected .* JSON object .*got a list"):
        load_checkpoint(tmp_path / "cam")


@pytest.mark.parametrize("key", ["kind", "backbone", "classes", "mean", "std"])
def test_metadata_without_a_key_readers_need_names_it(tmp_path, key):
    meta = {k: v for k, v in META.items() if k != key}
    save_checkpoint(tmp_path / "cam", TENSORS, meta)
    with pytest.raises(CheckpointError, match=rf"cam\.safetensors: .* lacks '{key}'"):
        load_checkpoint(tmp_path / "cam")


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("classes", "cat", "'classes' must be a list of names"),
        ("mean", [0.5, 0.5], r"'mean' must be 3 numbers"),
        ("backbone", 3, "'backbone' must be a string"),
    ],
)
def test_metadata_of_the_wrong_shape_names_the_key(tmp_path, key, value, says):
    (tmp_path / "cam.json").write_text(json.dumps({**META, key: value}))
    save_file(TENSORS, str(tmp_path / "cam.safetensors"))
    with pytest.raises(CheckpointError, match=rf"cam\.json: {says}"):
        load_checkpoint(tmp_path / "cam")


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    save_checkpoint(tmp_path / "aff", TENSORS, {**META, "kind": "aff"})
    with pytest.raises(CheckpointError, match=r"aff\.safetensors: expected a cam checkpoint"):
        load_checkpoint(tmp_path / "aff", kind="cam")


def test_make_cam_reports_a_list_sidecar_in_one_line_not_a_traceback(tmp_path, voc_root):
    from cli import main

    save_file(TENSORS, str(tmp_path / "cam.safetensors"))
    (tmp_path / "cam.json").write_text("[]")
    args = ["make-cam", str(voc_root), "-c", str(tmp_path / "cam.safetensors")]
    r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "cams")])
    assert r.exit_code == 1, r.output
    assert "cam.json: expected checkpoint metadata as a JSON object" in r.output
    assert "Traceback" not in r.output


def test_rng_states_round_trip_through_tensors():
    from psa_train.common import restore_rng, rng_state

    state = rng_state()
    assert all(v.dtype == torch.uint8 for v in state.values())
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state, "here")
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_metrics_keep_only_the_epochs_the_resumed_checkpoint_holds(tmp_path):
    from psa_train.common import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for e in (1, 2, 3):
        log.write(epoch=e, train_loss=0.5)
    with log.path.open("a") as f:
        f.write('{"epoch": 4, "train_lo')  # torn by a kill
    log.keep_until(2)
    assert [json.loads(x)["epoch"] for x in log.path.read_text().splitlines()] == [1, 2]
    log.keep_until(0)  # a fresh start into the same folder
    assert log.path.read_text() == ""


# --- what --resume accepts -------------------------------------------------------------------

TINY = [
    "train_cam.backbone=tiny",
    "train_cam.weights=null",
    "train_cam.device=cpu",
    "train_cam.crop=32",
    "train_cam.batch_size=2",
    "train_cam.resize_long=[32,48]",
    "train_cam.epochs=2",
]


def cam_cfg(*sets):
    from psa_train.config import load_config

    return load_config(None, [*TINY, *sets]).train_cam


@pytest.fixture
def trained(tmp_path, voc_root):
    """A finished 2-epoch tiny train-cam run (its last.safetensors is what --resume reads)."""
    from psa_infer.datasets import open_dataset
    from psa_train.train_cam import train_cam

    out = tmp_path / "run"
    train_cam(open_dataset(voc_root), out, cam_cfg(), progress=False)
    return open_dataset(voc_root), out


def resume(trained, *sets):
    from psa_train.train_cam import train_cam

    dataset, out = trained
    return train_cam(dataset, out, cam_cfg(*sets), resume=True, progress=False)


def rewrite_last(out, **changes):
    tensors, meta = load_checkpoint(out / "last")
    save_checkpoint(out / "last", tensors, {**meta, **changes})


def test_resume_of_a_finished_run_rewrites_the_same_final_bytes(trained):
    _, out = trained
    before = (out / "cam.safetensors").read_bytes()
    resume(trained)
    assert (out / "cam.safetensors").read_bytes() == before


def test_resume_refuses_an_epoch_outside_the_run(trained):
    _, out = trained
    rewrite_last(out, epoch=99)
    with pytest.raises(
        CheckpointError, match=r"last\.safetensors: epoch 99 is not one of .*0\.\.2"
    ):
        resume(trained)


def test_resume_refuses_an_edited_sidecar_of_an_older_checkpoint(trained):
    # Older checkpoints have no header metadata: their sidecar is read, and checked the same way.
    _, out = trained
    tensors, meta = load_checkpoint(out / "last")
    save_file(tensors, str(out / "last.safetensors"))
    (out / "last.json").write_text(json.dumps({**meta, "epoch": 99}))
    with pytest.raises(CheckpointError, match=r"epoch 99 is not one of this run's"):
        resume(trained)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("train_cam.lr=0.2", r"train_cam\.lr=0\.1, this run has 0\.2"),
        ("train_cam.epochs=3", r"train_cam\.epochs=2, this run has 3"),
        ("train_cam.seed=1", r"train_cam\.seed=0"),
    ],
)
def test_resume_refuses_another_config_and_names_the_key(trained, change, key):
    with pytest.raises(CheckpointError, match=rf"last\.safetensors: saved with {key}.*same config"):
        resume(trained, change)


def test_resume_refuses_other_metadata_and_another_kind(trained):
    _, out = trained
    rewrite_last(out, mean=[0.5, 0.5, 0.5])
    with pytest.raises(CheckpointError, match=r"saved with mean \[0\.5, 0\.5, 0\.5\]"):
        resume(trained)
    rewrite_last(out, kind="aff")
    with pytest.raises(CheckpointError, match=r"expected a cam checkpoint, got kind 'aff'"):
        resume(trained)


def test_resume_refuses_a_checkpoint_without_rng_states(trained):
    _, out = trained
    tensors, meta = load_checkpoint(out / "last")
    save_checkpoint(out / "last", {k: v for k, v in tensors.items() if "rng." not in k}, meta)
    with pytest.raises(CheckpointError, match=r"no rng\.torch .* would not repeat the run"):
        resume(trained)


def test_resume_may_change_where_the_run_computes(trained):
    from psa_train.common import RESUME_MAY_CHANGE, check_resume

    _, out = trained
    _, saved = load_checkpoint(out / "last")
    meta = {k: v for k, v in saved.items() if k not in ("epoch", "toolkit_version")}
    changed = {**meta, "config": {**meta["config"], "device": "cuda:1", "num_workers": 4}}
    assert RESUME_MAY_CHANGE == {"device", "num_workers"}
    assert check_resume(saved, changed, 2, "last") == 2

"""The click CLI: every command's --help, and the whole chain on tiny data via CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main

COMMANDS = [
    "make-synthetic",
    "train-cam",
    "make-cam",
    "make-aff-labels",
    "train-aff",
    "train-seg",
    "label",
    "eval",
    "export",
    "export-seg",
    "segment",
    "build-engine",
    "demo",
    "pipeline",
    "show",
]


def test_group_help_lists_every_command():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for c in COMMANDS:
        assert c in r.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(cmd):
    r = CliRunner().invoke(main, [cmd, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output and len(r.output) > 200


def test_errors_are_one_line_without_traceback(tmp_path):
    r = CliRunner().invoke(main, ["eval", str(tmp_path), "--cams", str(tmp_path)])
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    assert "neither a VOC layout" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_cam:\n  epoch: 3\n")
    r = CliRunner().invoke(
        main, ["train-cam", str(tmp_path), "-o", str(tmp_path / "o"), "--config", str(bad)]
    )
    assert r.exit_code != 0 and "train_cam.epoch: unknown key" in r.output


def test_eval_needs_exactly_one_source(voc_root):
    r = CliRunner().invoke(main, ["eval", str(voc_root)])
    assert r.exit_code == 2 and "exactly one of --cams or --labels-dir" in r.output


def test_eval_label_pngs_perfect_and_json(voc_root, tmp_path):
    # the ground truth itself scores 100 mIoU
    out = tmp_path / "r.json"
    r = CliRunner().invoke(
        main,
        [
            "eval",
            str(voc_root),
            "--labels-dir",
            str(voc_root / "SegmentationClass"),
            "--json",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["miou"] == pytest.approx(100.0)


def test_eval_cams_with_sweep(voc_root, tmp_path):
    from psa_infer.artifacts import save_cam
    from psa_infer.palette import load_label_png

    cams = tmp_path / "cams"
    for s in (voc_root / "ImageSets/Segmentation/val.txt").read_text().split():
        gt = load_label_png(voc_root / "SegmentationClass" / f"{s}.png")
        c = int(gt.max())
        save_cam(cams / f"{s}.npz", (gt == c).astype(np.float32)[None] * 0.5, np.array([c]))
    r = CliRunner().invoke(main, ["eval", str(voc_root), "--cams", str(cams), "--bg-sweep"])
    assert r.exit_code == 0, r.output
    assert "← best" in r.output
    # CAM of 0.5 beats a background of 0.2 → perfect; loses to 0.6 → all background
    r = CliRunner().invoke(
        main, ["eval", str(voc_root), "--cams", str(cams), "--bg-threshold", "0.2"]
    )
    assert "100.00" in r.output


def test_shard_parsing():
    from cli import _parse_shard

    assert _parse_shard("1/4") == (1, 4)
    with pytest.raises(Exception, match="need 0 <= i < n"):
        _parse_shard("4/4")

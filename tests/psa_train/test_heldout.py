"""Whether the classifier learned: held-out training images, their mAP against chance, the
verdict, and the epoch of the best held-out mAP kept as the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from psa_infer.datasets import open_dataset
from psa_infer.metrics import average_precision, chance_map
from psa_train.checkpoint import load_checkpoint
from psa_train.config import load_config
from psa_train.train_cam import split_holdout, train_cam
from tests.conftest import write_voc

TINY = [
    "train_cam.backbone=tiny",
    "train_cam.weights=null",
    "train_cam.crop=48",
    "train_cam.resize_long=[40,56]",
    "train_cam.batch_size=4",
    "train_cam.lr=0.3",
    "train_cam.holdout=0.3",
    "train_cam.color_jitter=[0,0,0,0]",
]


def test_average_precision_and_chance():
    truth = np.array([[1], [1], [0], [0]], bool)
    assert average_precision(np.array([[0.9], [0.8], [0.2], [0.1]]), truth)[0] == 1.0
    assert average_precision(np.array([[0.1], [0.2], [0.8], [0.9]]), truth)[0] == pytest.approx(
        (1 / 3 + 2 / 4) / 2
    )
    # ties count together: a constant scores the prevalence
    assert average_precision(np.full((4, 1), 0.5), truth)[0] == 0.5
    assert np.isnan(average_precision(np.ones((2, 1)), np.zeros((2, 1), bool))[0])
    # shuffled labels: perfect scores of 4 images often stay good by luck; of 200, not
    rng = np.random.default_rng(0)
    big = rng.random((200, 3)) < 0.3
    assert chance_map(big.astype(float), big) < 0.5 < chance_map(truth.astype(float), truth)


def test_the_holdout_is_stable_and_leaves_training_images(tmp_path):
    write_voc(tmp_path / "d", n=20)
    samples = open_dataset(tmp_path / "d").split("train")
    train, held = split_holdout(samples, 0.3)
    assert len(held) == 3 and len(train) == 7 and not {s.id for s in held} & {s.id for s in train}
    again, held2 = split_holdout(list(reversed(samples)), 0.3)
    assert {s.id for s in held2} == {s.id for s in held}  # order-independent
    assert split_holdout(samples, 0)[1] == []


def _run(tmp_path, shuffle: bool, epochs: int = 4, sets=()):
    root = tmp_path / "data"
    write_voc(root, n=60, size=(40, 48))
    if shuffle:  # image-level labels that say nothing about the images
        ids = (root / "ImageSets/Segmentation/train.txt").read_text().split()
        rng = np.random.default_rng(1)
        labels = {i: [["cat"], ["dog"]][int(rng.integers(2))] for i in ids}
        (root / "image_labels.json").write_text(json.dumps(labels))
    cfg = load_config(sets=[*TINY, f"train_cam.epochs={epochs}", *sets]).train_cam
    out = tmp_path / "cam"
    path = train_cam(open_dataset(root), out, cfg, progress=False)
    return out, path, json.loads((out / "heldout.json").read_text())


def test_a_classifier_on_shuffled_labels_is_near_chance(tmp_path, capsys):
    # without the val split's loss pass: the verdict needs only training images
    out, _, report = _run(tmp_path, shuffle=True, sets=["train_cam.val_split=null"])
    assert report["verdict"] == "near chance", report["message"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and not any("val_loss" in r for r in rows)
    assert "WARNING" in capsys.readouterr().err  # said even without progress output
    assert report["heldout_images"] == 9 and len((out / "heldout.txt").read_text().split()) == 9


def test_a_classifier_that_learns_says_so_and_keeps_its_best_epoch(tmp_path):
    out, path, report = _run(tmp_path, shuffle=False)
    assert report["verdict"] == "learned", report["message"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["heldout_map"])
    assert all(r["val_loss"] > 0 for r in rows)  # logged by default
    _, meta = load_checkpoint(path, kind="cam")
    assert meta["epoch"] == best["epoch"] == report["epoch"]
    assert meta["selected"] == {
        "by": "heldout_map",
        "epoch": best["epoch"],
        "value": best["heldout_map"],
    }
    assert best["heldout_map"] > best["heldout_chance_map"]


def test_a_resumed_run_keeps_the_same_best_epoch(tmp_path):
    from tests.psa_train.test_resume import psa

    root = tmp_path / "data"
    write_voc(root, n=60, size=(40, 48))
    args = ["train-cam", root, "--epochs", 4, "--device", "cpu"]
    for item in TINY:
        args += ["--set", item]
    psa(*args, "-o", tmp_path / "ref")
    psa(*args, "-o", tmp_path / "cut", kill="step:11")  # inside epoch 3 of 4 (5 steps each)
    psa(*args, "-o", tmp_path / "cut", "--resume")
    for name in ("cam", "best"):
        ref = (tmp_path / "ref" / f"{name}.safetensors").read_bytes()
        assert (tmp_path / "cut" / f"{name}.safetensors").read_bytes() == ref

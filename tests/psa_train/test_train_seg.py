"""train-seg: SegNet at tiny sizes, the augmentation, the loss going down, exact resume after a
kill -9, and bad label folders refused through the CLI in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli import main
from psa_infer.palette import load_label_png, save_label_png
from psa_train.backbones import build_backbone
from psa_train.config import TrainSegConfig
from psa_train.networks import SegNet, param_groups
from tests.conftest import write_voc
from tests.psa_train.test_resume import EPOCHS, assert_same_run, psa

TINY = dict(backbone="tiny", weights=None, crop=32, batch_size=2, head_width=8, head_rates=(1, 2))
ARGS = [
    "--backbone",
    "tiny",
    "--weights",
    "none",
    "--epochs",
    EPOCHS,
    "--device",
    "cpu",
    "--set",
    "train_seg.crop=32",
    "--set",
    "train_seg.batch_size=2",
    "--set",
    "train_seg.head_width=8",
    "--set",
    "train_seg.head_rates=[1,2]",
]


@pytest.fixture
def voc(tmp_path):
    write_voc(tmp_path / "voc", n=8)
    return tmp_path / "voc"


@pytest.mark.parametrize("size", [(37, 45), (8, 8), (5, 3), (61, 47)])
def test_segnet_gives_image_size_logits_and_stride8_scores(size):
    torch.manual_seed(0)
    net = SegNet(build_backbone("tiny", None), 2, rates=(1, 3), width=8).eval()
    x = torch.randn(2, 3, *size)
    logits, scores = net(x), net.scores(x)
    assert logits.shape == (2, 3, *size)
    assert scores.shape == (2, 3, -(-size[0] // 8), -(-size[1] // 8))
    assert torch.isfinite(logits).all()


def test_segnet_runs_its_head_at_the_backbones_native_stride():
    net = SegNet(build_backbone("mobilenet_v2_os16", None), 3, rates=(1, 2), width=8).eval()
    x = torch.randn(1, 3, 61, 47)
    with torch.no_grad():
        logits, scores = net(x), net.scores(x)
    assert scores.shape == (1, 4, 4, 3)  # ceil(61 / 16), ceil(47 / 16)
    assert logits.shape == (1, 4, 61, 47)
    # The decoder step brings the scores back to the stride-8 grid of the low level, and a
    # change of the low level alone (outside the high level's reach) moves them.
    torch.manual_seed(0)
    skip = SegNet(build_backbone("mobilenet_v2_os16", None), 3, (1,), 8, 0.0, skip=True).eval()
    assert skip.scores(x).shape == (1, 4, 8, 6)
    with torch.no_grad():
        low, mid, high = skip.backbone.levels_native(x)
    bumped = low.clone()
    bumped[..., 0, 0] += 5.0
    with torch.no_grad():
        a = skip.scores(x)
        skip.backbone.levels_native = lambda _: (bumped, mid, high)  # this instance only
        b = skip.scores(x)
    assert not torch.allclose(a[..., 0, 0], b[..., 0, 0]) and torch.equal(
        a[..., 7, 5], b[..., 7, 5]
    )
    assert {id(p) for p in skip.skip.parameters()} <= {
        id(p) for g in param_groups(skip, 0.01, 5e-4)[2:] for p in g["params"]
    }  # new layers: trained at the head's rate


def test_the_context_branch_gives_every_cell_what_the_whole_image_holds():
    """With ``context`` a change far away (outside every cell's window of a 1-rate head on a
    backbone whose features are local) reaches a cell's scores; without it it does not."""
    torch.manual_seed(0)
    backbone = build_backbone("tiny", None)
    with_ctx = SegNet(backbone, 2, rates=(1,), width=8, context=True).eval()
    without = SegNet(backbone, 2, rates=(1,), width=8, context=False).eval()
    x = torch.randn(1, 3, 256, 256)
    y = x.clone()
    y[:, :, 200:, 200:] += 3.0  # the far corner only
    with torch.no_grad():
        assert torch.equal(without.scores(x)[..., 0, 0], without.scores(y)[..., 0, 0])
        assert not torch.allclose(with_ctx.scores(x)[..., 0, 0], with_ctx.scores(y)[..., 0, 0])
    assert {id(p) for p in with_ctx.context.parameters()} <= {
        id(p) for g in param_groups(with_ctx, 0.01, 5e-4)[2:] for p in g["params"]
    }  # a new layer: trained at the head's rate


def test_head_is_new_backbone_pretrained_and_both_learn():
    net = SegNet(build_backbone("tiny", None), 2, rates=(1, 2), width=8)
    groups = {g["name"]: g for g in param_groups(net, 0.01, 5e-4)}
    head = {id(p) for p in [*net.reduce.parameters(), *net.branches.parameters()]}
    assert {id(p) for p in groups["new_weights"]["params"] + groups["new_biases"]["params"]} == head
    assert groups["new_weights"]["lr"] == pytest.approx(0.1)  # the head at 10x
    net(torch.randn(1, 3, 24, 24)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_items_augment_image_and_label_together(voc):
    from psa_infer.datasets import open_dataset
    from psa_train.data import SegDataset, label_dir_reader

    ds = open_dataset(voc)
    cfg = TrainSegConfig(**{**TINY, "crop": 48}, scale_range=(1.0, 1.0), hflip=False)
    items = SegDataset(ds.split("train"), label_dir_reader(voc / "SegmentationClass", 2), cfg)
    x, y = items[0]
    assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
    # The 37x45 image in a 48-px window: the padding is 255 (ignored), the rest the mask's ids.
    assert (y == 255).sum() == 48 * 48 - 37 * 45
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}
    # Padded image pixels are 0 after normalising (the mean colour); the object is in the crop.
    assert ((y == 255) <= (x.abs().sum(0) == 0)).all() and (y == 1).any()
    again = SegDataset(ds.split("train"), label_dir_reader(voc / "SegmentationClass", 2), cfg)
    assert torch.equal(again[0][1], y)  # seeded by (seed, epoch, index)


def test_training_on_ground_truth_reduces_the_loss(voc, tmp_path):
    from psa_infer.datasets import open_dataset
    from psa_train.train_seg import load_seg_model, train_seg

    cfg = TrainSegConfig(**TINY, epochs=8, lr=0.02, device="cpu")
    path = train_seg(open_dataset(voc), None, tmp_path / "seg", cfg, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "seg" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"]
    net, meta = load_seg_model(path)
    assert meta["kind"] == "seg" and meta["labels"] == "ground truth"
    want = {"rates": [1, 2], "width": 8, "dropout": 0.5, "context": False, "skip": False}
    assert meta["head"] == want
    assert json.loads((tmp_path / "seg" / "seg.json").read_text())["epoch"] == 8


def test_cli_trains_on_a_labels_folder(voc, tmp_path):
    r = CliRunner().invoke(
        main,
        ["train-seg", str(voc), "--labels-dir", str(voc / "SegmentationClass"), "-o",
         str(tmp_path / "seg"), *map(str, ARGS)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "seg" / "seg.safetensors").exists()
    meta = json.loads((tmp_path / "seg" / "seg.json").read_text())
    assert meta["labels"] == str((voc / "SegmentationClass").resolve())


def test_killed_and_resumed_gives_the_uninterrupted_bytes(voc, tmp_path):
    labels = ["--labels-dir", voc / "SegmentationClass"]
    psa("train-seg", voc, *labels, "-o", tmp_path / "ref", *ARGS)
    out = tmp_path / "seg"
    # 4 training images, 2 steps per epoch: step 3 is inside epoch 2
    psa("train-seg", voc, *labels, "-o", out, *ARGS, kill="step:3")
    psa("train-seg", voc, *labels, "-o", out, *ARGS, "--resume", kill="last-sidecar:2")
    psa("train-seg", voc, *labels, "-o", out, *ARGS, "--resume")
    assert_same_run(out, tmp_path / "ref", "seg")


def _bad(voc: Path, tmp_path: Path, how: str) -> Path:
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in sorted((voc / "SegmentationClass").glob("*.png")):
        save_label_png(bad / p.name, load_label_png(p))
    first = bad / "img_000.png"
    if how == "size":
        save_label_png(first, np.zeros((20, 20), np.uint8))
    elif how == "class":
        lab = load_label_png(first)
        lab[0, 0] = 7
        save_label_png(first, lab)
    else:
        first.unlink()
    return bad


@pytest.mark.parametrize(
    "how, message",
    [
        ("size", r"img_000\.png: label map of 20x20 pixels \(HxW\), its image .*\.jpg is 37x45"),
        ("class", r"img_000\.png: class id 7 in a label map of a data set with ids 0\.\.2"),
        ("missing", r"img_000\.png: no label map for training image 'img_000'"),
    ],
)  # fmt: skip
def test_bad_label_folders_are_one_line_errors(voc, tmp_path, how, message):
    import re

    bad = _bad(voc, tmp_path, how)
    r = CliRunner().invoke(
        main, ["train-seg", str(voc), "--labels-dir", str(bad), "-o", str(tmp_path / "o"),
               *map(str, ARGS)],
    )  # fmt: skip
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "o" / "last.safetensors").exists()  # refused before training


class _ColourNet(torch.nn.Module):
    """A stand-in network whose logits are its input's first K+1 channels scaled: the margins
    of background over foreground are continuous, so each offset labels some pixels apart."""

    def forward(self, x):
        return torch.cat([x, -x[:, :1]], 1) * 2.0  # 4 scores: background + 3 classes


def _argmax_with(net, s, offset, mean, std):
    from psa_infer.cam import normalize_image
    from psa_infer.datasets import load_image

    x = torch.from_numpy(normalize_image(load_image(s.image), mean, std)[None])
    logits = net(x)[0].numpy()
    logits[0] -= offset
    return logits.argmax(0).astype(np.uint8)


def test_calibration_finds_the_offset_the_labels_were_made_with(voc):
    """Labels that are the network's argmax with its background lowered by 0.5: the calibration
    finds 0.5, where they agree completely, and its table is the per-offset confusion's mIoU."""
    from psa_infer.datasets import open_dataset
    from psa_infer.metrics import confusion, scores
    from psa_train.train_seg import BG_OFFSETS, calibrate_background

    samples = open_dataset(voc).split("train")
    net, mean, std = _ColourNet(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    made = {s.id: _argmax_with(net, s, 0.5, mean, std) for s in samples}
    report = calibrate_background(net, samples, lambda s: made[s.id], 3, mean, std)
    assert report["bg_offset"] == 0.5 and report["miou"] == 100.0
    assert report["miou_uncalibrated"] < 100.0 and report["images"] == len(samples)
    for b in (-1.0, 0.0, 0.3, 1.2, 3.0):  # the histogram's table against the direct count
        conf = sum(confusion(made[s.id], _argmax_with(net, s, b, mean, std), 4) for s in samples)
        assert report["table"][str(b)] == round(scores(conf)["miou"], 2)
    assert len(report["table"]) == len(BG_OFFSETS)


def test_a_trained_network_is_calibrated_in_its_checkpoint(voc, tmp_path):
    """train-seg folds the chosen offset into the weights: the final network's background
    score is the last epoch's minus the offset, and the checkpoint says so; without
    ``calibrate`` the two are the same network."""
    from psa_infer.datasets import open_dataset
    from psa_train.checkpoint import load_checkpoint
    from psa_train.train_seg import CALIBRATION, build_seg_model, is_finished, train_seg

    ds = open_dataset(voc)
    x = torch.randn(1, 3, 37, 45)
    for calibrate in (True, False):
        out = tmp_path / f"seg_{calibrate}"
        cfg = TrainSegConfig(**TINY, epochs=2, lr=0.02, device="cpu", calibrate=calibrate)
        path = train_seg(ds, None, out, cfg, progress=False)
        assert is_finished(path, cfg)
        tensors, meta = load_checkpoint(path, kind="seg")
        last = {k[6:]: v for k, v in load_checkpoint(out / "last")[0].items() if k[:6] == "model."}
        nets = []
        for weights in (tensors, last):
            net = build_seg_model("tiny", None, 2, meta["head"]).eval()
            net.load_state_dict(weights)
            nets.append(net)
        with torch.no_grad():
            final, trained = nets[0](x), nets[1](x)
        offset = meta["calibration"]["bg_offset"] if calibrate else 0.0
        assert ("calibration" in meta) == calibrate == (out / CALIBRATION).exists()
        assert torch.allclose(final[:, 0], trained[:, 0] - offset, atol=1e-5)
        assert torch.equal(final[:, 1:], trained[:, 1:])
    report = json.loads((tmp_path / "seg_True" / CALIBRATION).read_text())
    assert report["miou"] >= report["miou_uncalibrated"]  # 0 is among the offsets tried


def test_a_run_stopped_before_its_calibration_is_not_finished(voc, tmp_path):
    from psa_infer.datasets import open_dataset
    from psa_train.checkpoint import load_checkpoint, save_checkpoint
    from psa_train.train_seg import is_finished, train_seg

    cfg = TrainSegConfig(**TINY, epochs=1, device="cpu")
    path = train_seg(open_dataset(voc), None, tmp_path / "seg", cfg, progress=False)
    tensors, meta = load_checkpoint(path)
    del meta["calibration"]
    save_checkpoint(path, tensors, meta)  # as fit leaves it, before the calibration
    assert not is_finished(path, cfg) and is_finished(path, replace(cfg, calibrate=False))
    train_seg(open_dataset(voc), None, tmp_path / "seg", cfg, resume=True, progress=False)
    assert is_finished(path, cfg)

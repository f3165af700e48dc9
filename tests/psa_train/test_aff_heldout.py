"""Whether AffinityNet learned: its loss on held-out images' confident pairs beside the best
constant affinity's, the verdict, and the epoch of the best gain kept as the checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from psa_infer.artifacts import save_aff_scores
from psa_infer.datasets import open_dataset
from psa_infer.palette import load_label_png
from psa_train.checkpoint import load_checkpoint
from psa_train.common import split_holdout
from psa_train.config import load_config
from psa_train.data import AffDataset
from psa_train.train_aff import constant_loss, heldout_affinity, train_aff
from tests.conftest import write_voc

TINY = [
    "train_aff.backbone=tiny",
    "train_aff.weights=null",
    "train_aff.crop=48",
    "train_aff.batch_size=4",
    "train_aff.radius=2",
    "train_aff.pairs=full",
    "train_aff.lr=0.1",
    "train_aff.holdout=0.3",
    "train_aff.color_jitter=[0,0,0,0]",
]


def test_the_constant_is_the_best_one_affinity():
    every = dict(bg=True, fg=True, neg=True)
    assert constant_loss(every) == pytest.approx(math.log(2))
    for present in (every, dict(bg=True, fg=False, neg=True)):
        grid = np.linspace(0.001, 0.999, 9999)
        p = 0.25 * present["bg"] + 0.25 * present["fg"]
        brute = np.min(-p * np.log(grid) - 0.5 * np.log(1 - grid))
        assert constant_loss(present) == pytest.approx(brute, abs=1e-6)
    assert constant_loss(dict(bg=True, fg=True, neg=False)) == 0.0


def _write_scores(root, out, samples, shuffle: bool):
    """la = ha = the one-hot masks (every pixel confident); ``shuffle``: random 8-px blocks of
    object and background instead, which say nothing about the images."""
    rng = np.random.default_rng(3)
    out.mkdir()
    for s in samples:
        mask = load_label_png(root / "SegmentationClass" / f"{s.id}.png")
        if shuffle:
            h, w = mask.shape
            blocks = rng.random((-(-h // 8), -(-w // 8))) < 0.4
            mask = np.kron(blocks, np.ones((8, 8), bool))[:h, :w] * s.labels[0]
        fg = (mask > 0).astype(np.float32)
        maps = np.stack([1 - fg, fg])
        save_aff_scores(out / f"{s.id}.npz", maps, maps, np.array(s.labels))


def _run(tmp_path, shuffle: bool, epochs: int = 4):
    root = tmp_path / "data"
    write_voc(root, n=120, size=(40, 48))
    ds = open_dataset(root)
    _write_scores(root, tmp_path / "affl", ds.split("train"), shuffle)
    cfg = load_config(sets=[*TINY, f"train_aff.epochs={epochs}"]).train_aff
    out = tmp_path / "aff"
    path = train_aff(ds, tmp_path / "affl", out, cfg, progress=False)
    return ds, cfg, out, path, json.loads((out / "heldout.json").read_text())


def test_affinity_net_on_true_pairs_learned_and_keeps_its_best_epoch(tmp_path, capsys):
    ds, cfg, out, path, report = _run(tmp_path, shuffle=False)
    held = (out / "heldout.txt").read_text().split()
    # the same images train-cam holds out at the same fraction
    assert held == [s.id for s in split_holdout(ds.split("train"), 0.3)[1]]
    assert report["heldout_images"] == len(held) == 18
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(
        r["heldout_const_loss"] == pytest.approx(math.log(2)) for r in rows
    )
    best = max(rows, key=lambda r: r["heldout_aff_gain"])
    _, meta = load_checkpoint(path, kind="aff")
    assert meta["selected"] == {"by": "heldout_aff_gain", "epoch": best["epoch"],
                                "value": best["heldout_aff_gain"]}  # fmt: skip
    assert report["verdict"] == "learned" and report["epoch"] == best["epoch"]
    assert best["heldout_aff_gain"] > 0.2
    assert min(best[f"heldout_{k}_right"] for k in ("bg", "fg", "neg")) > 0.5
    assert "WARNING" not in capsys.readouterr().err


def test_affinity_net_on_shuffled_pairs_is_no_better_than_a_constant(tmp_path, capsys):
    *_, report = _run(tmp_path, shuffle=True)
    assert report["verdict"] == "no better than a constant", report["message"]
    assert report["gain"] <= 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "no better than a constant affinity" in err


def test_the_held_out_view_does_not_change_between_epochs(tmp_path):
    root = tmp_path / "data"
    write_voc(root, n=12, size=(40, 56))
    ds = open_dataset(root)
    _write_scores(root, tmp_path / "affl", ds.split("train"), shuffle=False)
    cfg = load_config(sets=TINY).train_aff
    held = AffDataset(
        ds.split("train"), tmp_path / "affl", cfg, (0.5,) * 3, (0.2,) * 3, train=False
    )
    first = held[0]
    held.epoch = 5
    assert all(torch.equal(a, b) for a, b in zip(first, held[0], strict=True))
    assert first[0].shape == (3, 48, 48) and first[3].sum() > 0  # centred crop, with neg pairs


def test_a_constant_affinity_net_scores_below_the_constant(tmp_path):
    """Features that are the same everywhere give affinity 1 to every pair: the bg/fg pairs
    are all right, the neg pairs all wrong, and the loss far above log 2."""
    root = tmp_path / "data"
    write_voc(root, n=12, size=(40, 48))
    ds = open_dataset(root)
    _write_scores(root, tmp_path / "affl", ds.split("train"), shuffle=False)
    cfg = load_config(sets=TINY).train_aff
    items = AffDataset(ds.split("train"), tmp_path / "affl", cfg, (0.5,) * 3, (0.2,) * 3, False)

    class Flat(torch.nn.Module):
        def forward(self, x):
            return torch.ones(x.shape[0], 4, x.shape[2] // 8, x.shape[3] // 8)

    row = heldout_affinity(Flat(), torch.utils.data.DataLoader(items, batch_size=4), cfg, "cpu")
    assert row["heldout_bg_right"] == row["heldout_fg_right"] == 1.0
    assert row["heldout_neg_right"] == 0.0 and row["heldout_aff_gain"] < -1


def test_pairs_on_the_walks_4px_grid(tmp_path):
    """train_aff.pair_stride 4: the confident labels pooled 4×4 and AffinityNet's features
    upsampled ×2 exactly as the walk at stride 4 upsamples them; a run learns and says so."""
    from psa_infer.ops import resize_bilinear
    from psa_train.afflabels import confident_labels, pair_labels
    from psa_train.train_aff import on_pair_grid

    f = torch.from_numpy(np.random.default_rng(0).random((2, 5, 6, 7), dtype=np.float32))
    assert on_pair_grid(f, 8) is f
    up = on_pair_grid(f, 4).numpy()
    assert up.shape == (2, 5, 12, 14)
    np.testing.assert_allclose(up[1], resize_bilinear(f[1].numpy(), (12, 14)), atol=1e-6)

    root = tmp_path / "data"
    write_voc(root, n=12, size=(40, 56))
    ds = open_dataset(root)
    _write_scores(root, tmp_path / "affl", ds.split("train"), shuffle=False)
    s8, s4 = (load_config(sets=[*TINY, f"train_aff.pair_stride={k}"]).train_aff for k in (8, 4))
    args = (ds.split("train"), tmp_path / "affl", (0.5,) * 3, (0.2,) * 3, False)
    x8, *labels8 = AffDataset(args[0], args[1], s8, *args[2:])[0]
    x4, *labels4 = AffDataset(args[0], args[1], s4, *args[2:])[0]
    assert torch.equal(x8, x4) and labels8[0].shape == (len(labels8[0]), 6, 6)
    assert labels4[0].shape == (len(labels8[0]), 12, 12)  # radius 2 cells of 4 px: same offsets
    # the labels are those of the 4-px confident map of the same crop
    from psa_infer.artifacts import load_aff_scores

    la, ha, _ = load_aff_scores(tmp_path / "affl" / f"{ds.split('train')[0].id}.npz")
    pad = np.zeros((la.shape[0], 48, 48), np.float32)
    pad[:, 4:44, :] = la[:, :, 4:52]  # the centred 48-px crop of a 40×56 image
    want = pair_labels(confident_labels(pad, pad, stride=4), radius=2, pairs="full")
    for got, w in zip(labels4, want, strict=True):
        np.testing.assert_array_equal(got.numpy(), w)

    cfg = load_config(sets=[*TINY, "train_aff.epochs=3", "train_aff.pair_stride=4"]).train_aff
    ds120 = tmp_path / "d120"
    write_voc(ds120, n=120, size=(40, 48))
    big = open_dataset(ds120)
    _write_scores(ds120, tmp_path / "affl120", big.split("train"), shuffle=False)
    train_aff(big, tmp_path / "affl120", tmp_path / "aff", cfg, progress=False)
    report = json.loads((tmp_path / "aff" / "heldout.json").read_text())
    assert report["verdict"] == "learned" and report["gain"] > 0.2
    assert report["row"]["heldout_bg_pairs"] > 0


def test_pair_stride_is_4_or_8_and_the_crop_must_hold_pairs_on_its_grid():
    from psa_train.config import ConfigError

    with pytest.raises(ConfigError, match="pair_stride"):
        load_config(sets=[*TINY, "train_aff.pair_stride=6"])
    # 8 px holds two 4-px cells side by side (full pairs), not two 8-px ones
    load_config(sets=[*TINY, "train_aff.crop=8", "train_aff.pair_stride=4"])
    with pytest.raises(ConfigError, match="pair_stride: 8"):
        load_config(sets=[*TINY, "train_aff.crop=8"])

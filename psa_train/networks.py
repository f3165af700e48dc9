"""The CAM classifier, AffinityNet and the segmentation network on top of a backbone, pair
affinities, loss, lr groups.

Head layers keep the reference's names (``fc8``; ``f8_3``, ``f8_4``, ``f8_5``, ``f9``) so a
reference checkpoint maps onto ours by prefixing its backbone keys with ``backbone.``.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from psa_infer.randomwalk import pair_offsets
from psa_train.backbones import Backbone


class CAMNet(nn.Module):
    """Multi-label classifier whose 1×1 classifier also gives the class activation maps (SPEC §1).

    ``forward`` is the training path: Dropout2d(0.5) → global average pooling of the high level
    → bias-free 1×1 conv. ``cam`` applies the same conv to the high level without dropout or
    pooling, then ReLU. With no bias the two commute: in eval mode the logits equal the spatial
    mean of the CAMs before their ReLU.
    """

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(backbone.channels[2], num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) float32 → logits (B, num_classes) float32."""
        high = self.dropout(self.backbone(x)[2])
        return self.fc8(high.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def cam(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) float32 → CAMs (B, num_classes, ceil(H/8), ceil(W/8)) float32, ≥ 0."""
        return F.relu(self.fc8(self.backbone(x)[2]))


def affinity_widths(channels: tuple[int, int, int]) -> tuple[int, int, int]:
    """Default per-level widths of AffinityNet's head: ``clamp(c // 8, 16, 256)`` per level.

    This is the reference's ratio (1/8) with its cap: ResNet-38's (512, 1024, 4096) gives
    exactly PSA's (64, 128, 256); MobileNetV2's (32, 96, 1280) gives (16, 16, 160) and tiny's
    (16, 32, 64) gives (16, 16, 16) — the floor of 16 keeps thin levels from vanishing.
    """
    return tuple(min(256, max(16, c // 8)) for c in channels)  # type: ignore[return-value]


class AffinityNet(nn.Module):
    """Backbone + the affinity head of SPEC §4 → affinity features at stride 8.

    Per level a bias-free 1×1 conv (Kaiming-normal init) + ELU; concatenated; a bias-free 1×1
    conv to the same width (Xavier-uniform init, gain 4) + ELU. Affinities of pixel pairs come
    from ``pair_affinity_torch`` on the output.
    """

    def __init__(self, backbone: Backbone, widths: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        widths = affinity_widths(backbone.channels) if widths is None else tuple(widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"widths: expected three positive ints, got {widths}")
        self.widths = widths
        self.out_channels = sum(widths)
        c = backbone.channels
        self.f8_3 = nn.Conv2d(c[0], widths[0], 1, bias=False)
        self.f8_4 = nn.Conv2d(c[1], widths[1], 1, bias=False)
        self.f8_5 = nn.Conv2d(c[2], widths[2], 1, bias=False)
        self.f9 = nn.Conv2d(self.out_channels, self.out_channels, 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) float32 → features (B, sum(widths), ceil(H/8), ceil(W/8)) float32."""
        low, mid, high = self.backbone(x)
        f = torch.cat([F.elu(self.f8_3(low)), F.elu(self.f8_4(mid)), F.elu(self.f8_5(high))], 1)
        return F.elu(self.f9(f))


class SegNet(nn.Module):
    """Semantic segmentation: backbone + a DeepLab head at the backbone's ``high_stride`` (8 as
    the paper's §5; 16 on ``mobilenet_v2_os16``).

    The head reads the high level through a 1×1 conv to ``width`` channels + ReLU (on
    MobileNetV2's 1280 channels a 3×3 conv per branch would cost 7x the backbone); then per
    dilation rate r of ``rates`` a branch 3×3 conv (dilation r) → ReLU → Dropout2d → 1×1 conv
    to the K+1 class scores, and the branches' scores are summed: one rate is DeepLab's
    LargeFOV, several are DeepLab v2's ASPP. ``context`` adds DeepLab v3's image-level branch:
    the high level averaged over the whole image, through a 1×1 conv + ReLU, added to every
    cell of the reduced features, so that a cell far from an object's telling part still knows
    which classes the image holds.
    ``forward`` upsamples the scores bilinearly to the input size (the loss is taken there, and
    the exported graph gives image-size logits), ``scores`` keeps them at the head's stride.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        rates: tuple[int, ...] = (2, 4, 8, 12),
        width: int = 256,
        dropout: float = 0.5,
        context: bool = False,
        skip: bool = False,
    ) -> None:
        super().__init__()
        if not rates or min(rates) < 1 or width < 1:
            raise ValueError(
                f"rates, width: expected rates >= 1 and width >= 1, got {rates}, {width}"
            )
        self.backbone = backbone
        self.num_classes = num_classes  # foreground classes; the network scores K + 1
        self.rates = tuple(int(r) for r in rates)
        self.reduce = nn.Sequential(
            nn.Conv2d(backbone.channels[2], width, 1), nn.ReLU(inplace=True)
        )
        self.context = (
            nn.Sequential(nn.Conv2d(backbone.channels[2], width, 1), nn.ReLU(inplace=True))
            if context
            else None
        )
        # DeepLab v3+'s decoder, narrowed: the low level through a 1×1 conv to a quarter of
        # ``width``, joined with the reduced high level upsampled to its grid, a 3×3 conv.
        low_width = max(1, width // 4)
        self.skip = (
            nn.ModuleDict(
                {
                    "low": nn.Sequential(
                        nn.Conv2d(backbone.channels[0], low_width, 1), nn.ReLU(inplace=True)
                    ),
                    "mix": nn.Sequential(
                        nn.Conv2d(width + low_width, width, 3, padding=1), nn.ReLU(inplace=True)
                    ),
                }
            )
            if skip
            else None
        )
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=r, dilation=r),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
                nn.Conv2d(width, num_classes + 1, 1),
            )
            for r in self.rates
        )
        extra = [*self.context.modules()] if self.context is not None else []
        extra += [*self.skip.modules()] if self.skip is not None else []
        for m in [*self.reduce.modules(), *extra, *self.branches.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for b in self.branches:  # small class scores at the start: a uniform first guess
            nn.init.normal_(b[3].weight, std=0.01)

    @property
    def score_stride(self) -> int:
        """The output stride of ``scores``: the backbone's ``high_stride``, or the low level's
        8 after the decoder step."""
        return 8 if self.skip is not None else int(self.backbone.high_stride)

    @torch.no_grad()
    def shift_background(self, offset: float) -> None:
        """Lower the background score by ``offset`` everywhere (raise it when negative): the
        first branch's background bias, since the branches' scores are summed."""
        self.branches[0][3].bias[0] -= offset

    def scores(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) float32 → logits (B, K+1, ceil(H/s), ceil(W/s)) float32, s the
        backbone's ``high_stride``."""
        if self.skip is None:
            features = self.backbone.high_native(x)
        else:
            low, _, features = self.backbone.levels_native(x)
        high = self.reduce(features)
        if self.context is not None:
            high = high + self.context(features.mean(dim=(2, 3), keepdim=True))
        if self.skip is not None:
            up = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=False)
            high = self.skip["mix"](torch.cat([up, self.skip["low"](low)], 1))
        out = self.branches[0](high)
        for b in self.branches[1:]:
            out = out + b(high)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) float32 → logits (B, K+1, H, W) float32 (bilinear, corners not
        aligned: ``psa_infer.ops.resize_bilinear``'s convention)."""
        return F.interpolate(self.scores(x), size=x.shape[2:], mode="bilinear", align_corners=False)


@cache
def _offsets(radius: int) -> tuple[tuple[int, int], ...]:
    return tuple((int(dy), int(dx)) for dy, dx in pair_offsets(radius))


def _affinity(a: Tensor, b: Tensor) -> Tensor:
    # The reference averages |Δf| over channels (SPEC §4, §9.3), it does not sum it.
    return torch.exp(-(a - b).abs().mean(dim=1))


def pair_affinity_torch(features: Tensor, radius: int, pairs: str) -> Tensor:
    """Affinities ``exp(-mean_c |f_c(i) - f_c(j)|)`` of the pairs (i, i + d_k), d_k in
    ``pair_offsets(radius)`` (K offsets, the reference's half disk), by shifted slices.

    Args:
        features: (B, D, h, w) float32.
        pairs: "psa" — the reference's pair set and layout (SPEC §3.1): (B, K, Nf) with the
            from-pixels rows 0 … h-r, columns r-1 … w-r, row-major, Nf = (h-r+1)(w-2r+2); needs
            h ≥ r and w ≥ 2r-1. "full" — every pair: (B, K, h, w), entry [b, k, y, x] the pair
            ((y, x), (y+dy_k, x+dx_k)), 0 where that pixel is outside the map (the layout of
            ``psa_infer.randomwalk.pair_affinity(..., pairs="full")``).
    """
    if features.dim() != 4:
        raise ValueError(f"features: expected (B, D, h, w), got shape {tuple(features.shape)}")
    offsets = _offsets(radius)
    bsz, _, h, w = features.shape
    if pairs == "psa":
        hf, wf = h - radius + 1, w - 2 * radius + 2
        if hf < 1 or wf < 1:
            raise ValueError(
                f"pairs='psa' needs a feature map of at least {radius}×{2 * radius - 1} for "
                f"radius {radius}, got {h}×{w}"
            )
        x0 = radius - 1
        src = features[:, :, :hf, x0 : x0 + wf]
        out = [
            _affinity(src, features[:, :, dy : dy + hf, x0 + dx : x0 + dx + wf]).flatten(1)
            for dy, dx in offsets
        ]
        return torch.stack(out, 1) if out else features.new_zeros(bsz, 0, hf * wf)
    if pairs == "full":
        out = []
        for dy, dx in offsets:
            # from-pixels whose partner is inside: y < h - dy, max(0, -dx) <= x < w - max(0, dx)
            x0, x1 = max(0, -dx), w - max(0, dx)
            if dy >= h or x1 <= x0:
                out.append(features.new_zeros(bsz, h, w))
                continue
            a = _affinity(features[:, :, : h - dy, x0:x1], features[:, :, dy:, x0 + dx : x1 + dx])
            out.append(F.pad(a, (x0, w - x1, 0, dy)))
        return torch.stack(out, 1) if out else features.new_zeros(bsz, 0, h, w)
    raise ValueError(f"pairs: expected 'psa' or 'full', got {pairs!r}")


def affinity_loss(
    aff: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """SPEC §4's loss ``L_bg/4 + L_fg/4 + L_neg/2``, each normalised over the whole batch.

    ``L_bg = Σ bg_pos·(−log(a + 1e-5)) / (Σ bg_pos + 1e-5)``, likewise ``L_fg``;
    ``L_neg = Σ neg·(−log(1 + 1e-5 − a)) / (Σ neg + 1e-5)``.

    Args:
        aff: predicted affinities in (0, 1], any shape (e.g. (B, K, Nf) or (B, K, h, w)).
        bg_pos, fg_pos, neg: float 0/1 label tensors of the same shape.

    Returns:
        the scalar loss and detached parts {"bg", "fg", "neg", "bg_count", "fg_count",
        "neg_count"} for logging.
    """
    for name, t in (("bg_pos", bg_pos), ("fg_pos", fg_pos), ("neg", neg)):
        if t.shape != aff.shape:
            raise ValueError(
                f"{name}: expected shape {tuple(aff.shape)} like aff, got {tuple(t.shape)}"
            )
    pos_nll = -torch.log(aff + 1e-5)
    neg_nll = -torch.log(1.0 + 1e-5 - aff)
    bg_count, fg_count, neg_count = bg_pos.sum(), fg_pos.sum(), neg.sum()
    bg = (bg_pos * pos_nll).sum() / (bg_count + 1e-5)
    fg = (fg_pos * pos_nll).sum() / (fg_count + 1e-5)
    ng = (neg * neg_nll).sum() / (neg_count + 1e-5)
    loss = bg / 4 + fg / 4 + ng / 2
    parts = dict(bg=bg, fg=fg, neg=ng, bg_count=bg_count, fg_count=fg_count, neg_count=neg_count)
    return loss, {k: v.detach() for k, v in parts.items()}


# (name, lr multiplier, weight decay applies) — SPEC §1's four groups, in the reference's order.
_GROUPS = (
    ("pretrained_weights", 1.0, True),
    ("pretrained_biases", 2.0, False),
    ("new_weights", 10.0, True),
    ("new_biases", 20.0, False),
)


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """SGD parameter groups with SPEC §1's lr multipliers.

    "Pretrained" = every parameter of ``model.backbone``, also when the backbone was randomly
    initialised (tiny, weights=None): its layers are trained like the reference's backbone, and
    ×10 rates would only destabilise them. "New" = the head layers (fc8; f8_*, f9). A bias is a
    parameter named ``*.bias`` (×2 or ×20, no weight decay); anything else is a weight,
    norm-layer scales included, as the reference treats GroupNorm's. Frozen parameters
    (requires_grad False) are in no group.

    Returns:
        four dicts, always in this order and even when empty: {"name", "params", "lr",
        "lr_mult", "weight_decay"}; a poly schedule sets ``lr = base · lr_mult · (1 − t/T)^p``.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"param_groups: {type(model).__name__} has no .backbone module")
    pretrained = {id(p) for p in backbone.parameters()}
    groups = [
        {
            "name": name,
            "params": [],
            "lr": lr * mult,
            "lr_mult": mult,
            "weight_decay": weight_decay if decay else 0.0,
        }
        for name, mult, decay in _GROUPS
    ]
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new = id(p) not in pretrained
        bias = name.rsplit(".", 1)[-1] == "bias"
        groups[2 * new + bias]["params"].append(p)
    return groups

"""Configuration as data: one frozen dataclass per stage, filled from defaults → YAML → --set.

A recipe YAML has one section per stage (``train_cam:``, ``make_cam:``, …). Unknown sections or
keys, values of the wrong type and values outside a field's range are errors that name the key.
Every stage class declares a ``ranges`` entry for each of its fields; the values are checked
whenever a stage config is built (defaults, YAML, ``--set``, ``dataclasses.replace``, a
checkpoint's saved config), so a bad value fails before any work starts. The resolved
configuration is written next to every run's output (``config.yaml``) so a run can be repeated
exactly.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from psa_infer.cam import STRIDE  # the networks' output stride: CAMs and features at 1/8
from psa_infer.crf import REFERENCE_BILATERAL_SXY
from psa_infer.errors import PsaError
from psa_infer.pipeline import REFERENCE_WALK, WalkParams

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The keys of psa_train.backbones.BACKBONES, kept here so that this module needs no torch
# (a test checks that the two agree).
BACKBONE_NAMES = ("tiny", "mobilenet_v2", "mobilenet_v2_d12", "mobilenet_v2_os16", "resnet38")
# Backbones that are one network with other strides or dilations: the same parameters, so one's
# trained weights start another (a test loads each into the others).
WEIGHT_FAMILY = {"mobilenet_v2_d12": "mobilenet_v2", "mobilenet_v2_os16": "mobilenet_v2"}


def same_weights(a: str, b: str) -> bool:
    """Whether the backbones named ``a`` and ``b`` take the same weights files."""
    return WEIGHT_FAMILY.get(a, a) == WEIGHT_FAMILY.get(b, b)


class ConfigError(PsaError):
    """A configuration value is unknown, of the wrong type or out of range; the message names
    the key."""


# --- What a value may be: one small check per field, all applied in _Stage.__post_init__ ---


def _show(v) -> str:
    """A value as the user wrote it: lists for tuples (YAML), repr for strings."""
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    return repr(v)


class Check:
    """One field's allowed values. ``text`` completes "expected …" in the error message."""

    text = "a value"

    def accepts(self, v) -> bool:
        raise NotImplementedError

    def check(self, key: str, v) -> None:
        if not self.accepts(v):
            raise ConfigError(f"{key}: expected {self.text}, got {_show(v)}")


@dataclass(frozen=True)
class Int(Check):
    """An integer in lo..hi (no upper bound when ``hi`` is None), a multiple of ``multiple_of``."""

    lo: int
    hi: int | None = None
    multiple_of: int = 1

    @property
    def text(self) -> str:
        what = "an integer" if self.multiple_of == 1 else f"a multiple of {self.multiple_of}"
        return f"{what} in {self.lo}..{self.hi}" if self.hi is not None else f"{what} >= {self.lo}"

    def accepts(self, v) -> bool:
        return (
            isinstance(v, int)
            and not isinstance(v, bool)
            and v >= self.lo
            and (self.hi is None or v <= self.hi)
            and v % self.multiple_of == 0
        )


@dataclass(frozen=True)
class Real(Check):
    """A finite number (never NaN or ±inf) within the bounds given: > gt, >= ge, < lt, <= le."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def _bounds(self) -> list[tuple[str, float]]:
        pairs = ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
        return [(op, b) for op, b in pairs if b is not None]

    @property
    def text(self) -> str:
        return " and ".join(["a finite number", *(f"{op} {b:g}" for op, b in self._bounds())])

    def accepts(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return all(_COMPARE[op](v, b) for op, b in self._bounds())


_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class OneOf(Check):
    choices: tuple[str, ...]

    @property
    def text(self) -> str:
        return "one of " + ", ".join(self.choices)

    def accepts(self, v) -> bool:
        return isinstance(v, str) and v in self.choices


@dataclass(frozen=True)
class Pattern(Check):
    """A string matching ``regex`` as a whole; ``text`` says it in words."""

    regex: str
    text: str

    def accepts(self, v) -> bool:
        return isinstance(v, str) and re.fullmatch(self.regex, v) is not None


class Bool(Check):
    text = "true or false"

    def accepts(self, v) -> bool:
        return isinstance(v, bool)


@dataclass(frozen=True)
class Maybe(Check):
    """null, or a value that passes ``inner``."""

    inner: Check

    def check(self, key: str, v) -> None:
        if v is not None:
            self.inner.check(key, v)


@dataclass(frozen=True)
class Each(Check):
    """A list whose every item passes ``item`` (the key names the item: ``key[i]``)."""

    item: Check
    nonempty: bool = False
    distinct: bool = False
    ascending: bool = False  # each item >= the one before

    def check(self, key: str, v) -> None:
        if not isinstance(v, (tuple, list)):
            raise ConfigError(f"{key}: expected a list, got {_show(v)}")
        if self.nonempty and not v:
            raise ConfigError(f"{key}: expected at least one value, got []")
        for i, x in enumerate(v):
            self.item.check(f"{key}[{i}]", x)
        if self.distinct and len(set(v)) != len(v):
            twice = next(x for i, x in enumerate(v) if x in v[:i])
            raise ConfigError(f"{key}: expected distinct values, got {_show(v)} ({twice!r} twice)")
        if self.ascending and any(v[i] < v[i - 1] for i in range(1, len(v))):
            raise ConfigError(f"{key}: expected the smaller value first, got {_show(v)}")


@dataclass(frozen=True)
class Items(Check):
    """A list of len(items) values, the i-th passing items[i] (the key names it: ``key[i]``)."""

    items: tuple[Check, ...]

    def check(self, key: str, v) -> None:
        if not isinstance(v, (tuple, list)) or len(v) != len(self.items):
            raise ConfigError(f"{key}: expected a list of {len(self.items)} values, got {_show(v)}")
        for i, (c, x) in enumerate(zip(self.items, v, strict=True)):
            c.check(f"{key}[{i}]", x)


BOOL = Bool()
NAME = Pattern(r"\S(.*\S)?", "a non-empty name")  # split names
UNIT = Real(ge=0, le=1)
POSITIVE = Real(gt=0)
DEVICE = Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")
PAIRS = OneOf(("psa", "full"))
# The pair radius on the stride-8 grid. 1 has no pairs at all: AffinityNet would learn nothing
# and the walk would leave the CAMs as they are. 10 (152 pairs per node, 4.5x the reference's
# 34 at radius 5) bounds the walk's O(K·N) memory; a radius of 80+ pixels reaches past most
# objects anyway.
RADIUS = Int(2, 10)

# The fields both training stages share, with the same meaning and the same range.
_TRAINING: dict[str, Check] = {
    "backbone": OneOf(BACKBONE_NAMES),
    "weights": Maybe(Pattern(NAME.regex, "'default' or a weights file")),  # null: random init
    "epochs": Int(1),  # 0 would write an untrained checkpoint
    "batch_size": Int(1),
    "lr": POSITIVE,
    # Below 1 because with reference_momentum_quirk it is also SGD's momentum.
    "weight_decay": Real(ge=0, lt=1),
    "poly_power": Real(ge=0),  # 0 = constant learning rate
    "reference_momentum_quirk": BOOL,
    "momentum": Real(ge=0, lt=1),  # at 1 the velocity never decays and training diverges
    "hflip": BOOL,
    # (brightness, contrast, saturation, hue): the first three draw factors in [1 - v, 1 + v],
    # which must stay >= 0; hue shifts by up to ±v of the colour wheel, so 0.5 is all of it.
    "color_jitter": Items((UNIT, UNIT, UNIT, Real(ge=0, le=0.5))),
    "train_split": NAME,
    "num_workers": Int(0),
    # Under torchrun: BatchNorm statistics over the whole global batch (SyncBatchNorm, CUDA
    # only) instead of each process's share. Matters only where BN trains: a backbone without
    # pretrained weights (pretrained ones keep BN frozen, SPEC §1).
    "sync_bn": BOOL,
    # The loader's generator gets seed * 1000 + epoch, which must fit torch's 64 bits.
    "seed": Int(0, 2**32 - 1),
    "device": DEVICE,
}


class _Stage:
    """Base of the stage configs: ``section`` is its key in a recipe, ``ranges`` has one check
    per field; every value is checked whenever an instance is built."""

    section: ClassVar[str]
    ranges: ClassVar[dict[str, Check]]

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            self.ranges[f.name].check(f"{self.section}.{f.name}", getattr(self, f.name))


HOLDOUT = Real(ge=0, le=0.5)  # more than half would leave less to train on
SELECT = OneOf(("best", "last"))


@dataclass(frozen=True)
class TrainCamConfig(_Stage):
    """The CAM classifier recipe (SPEC §1); defaults are the reference's."""

    backbone: str = "resnet38"
    weights: str | None = "default"  # "default" = the backbone's ImageNet weights; a path; null
    epochs: int = 15
    batch_size: int = 16
    lr: float = 0.1  # the reference's README value; its author says ResNet-38 wants 0.01
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    # Reference quirk (SPEC §1, §9.1): PolyOptimizer passes weight_decay positionally into
    # SGD's momentum slot, so the reference trains with momentum = weight_decay (~plain SGD).
    # True reproduces that; False uses `momentum` below.
    reference_momentum_quirk: bool = True
    momentum: float = 0.9
    crop: int = 448
    resize_long: tuple[int, int] = (256, 512)
    hflip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    train_split: str = "train"
    # Each epoch's image-level loss on this split is logged (``val_loss``, as the reference
    # does); nothing is chosen by it. null: no such pass (a recipe that must not read val).
    val_split: str | None = "val"
    # A share of the training images (chosen by a hash of their ids) the classifier does not
    # train on: each epoch it is scored there (mAP, F1, loss against a class-prior constant),
    # which says whether it learned, and `select: best` keeps the epoch of the best mAP.
    # Image-level labels suffice, so every data set has it. 0 trains on every image.
    holdout: float = 0.1
    select: str = "best"  # "best" (held-out mAP) or "last" epoch
    num_workers: int = 0
    sync_bn: bool = False  # see _TRAINING
    seed: int = 0
    device: str = "auto"

    section: ClassVar[str] = "train_cam"
    ranges: ClassVar[dict[str, Check]] = {
        **_TRAINING,
        "crop": Int(STRIDE),  # at least one cell of the CAM grid
        "resize_long": Each(Int(1), ascending=True),  # (low, high) of the random long side
        "mean": Each(UNIT),  # of pixel values scaled to [0, 1]
        "std": Each(POSITIVE),
        "val_split": Maybe(NAME),
        "holdout": HOLDOUT,
        "select": SELECT,
    }


@dataclass(frozen=True)
class MakeCamConfig(_Stage):
    """Multi-scale + flip CAM inference (SPEC §2)."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    split: str = "train"
    device: str = "auto"

    section: ClassVar[str] = "make_cam"
    ranges: ClassVar[dict[str, Check]] = {
        # Up to 4: twice the reference's largest (2.0). A scale-s input has s² the pixels and
        # memory of the image (16x at 4), and CAMs of inputs that far above the training crops
        # stop adding detail. A repeated scale would only weigh that scale twice.
        "scales": Each(Real(gt=0, le=4), nonempty=True, distinct=True),
        "flip": BOOL,
        "split": NAME,
        "device": DEVICE,
    }


@dataclass(frozen=True)
class AffLabelsConfig(_Stage):
    """Confident regions for AffinityNet from the CAMs with a dense CRF (SPEC §2–3)."""

    low_alpha: float = 4.0  # "la": strong background competitor → confident foreground
    high_alpha: float = 32.0  # "ha": weak background → confident background
    crf: bool = True
    crf_iterations: int = 10
    # The bilateral kernel's spatial width in pixels (reference: 80, for ~500-px VOC images).
    crf_bilateral_sxy: float = REFERENCE_BILATERAL_SXY
    split: str = "train"

    section: ClassVar[str] = "aff_labels"
    ranges: ClassVar[dict[str, Check]] = {
        "low_alpha": POSITIVE,
        "high_alpha": POSITIVE,
        "crf": BOOL,
        # 0 would run no mean-field step (turn the CRF off with crf: false instead); the mean
        # field settles within ~10 (the reference's), so 100 only stops a typo's endless run.
        "crf_iterations": Int(1, 100),
        "crf_bilateral_sxy": POSITIVE,
        "split": NAME,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        # The background score is (1 - max CAM)^alpha: the low alpha must give the stronger
        # background, or "confident foreground" and "confident background" swap places.
        if not self.low_alpha < self.high_alpha:
            raise ConfigError(
                f"aff_labels.low_alpha, aff_labels.high_alpha: expected low_alpha < high_alpha, "
                f"got {self.low_alpha:g} and {self.high_alpha:g}"
            )


@dataclass(frozen=True)
class TrainAffConfig(_Stage):
    """The AffinityNet recipe (SPEC §4); defaults are the reference's."""

    backbone: str = "resnet38"
    weights: str | None = "default"
    epochs: int = 8
    batch_size: int = 8
    lr: float = 0.1
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    reference_momentum_quirk: bool = True  # see TrainCamConfig
    momentum: float = 0.9
    crop: int = 448
    hflip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    radius: int = REFERENCE_WALK.radius  # AffinityNet learns the pairs the walk will use
    pairs: str = "psa"  # "psa" = the reference's pair set (SPEC §3.1); "full" = every pair
    # The grid the pairs are taken on, in pixels: 8 = the features' own (the reference); 4 =
    # the features upsampled ×2 (bilinear) as the walk at label.walk_stride 4 reads them, with
    # the confident labels pooled 4×4, so that AffinityNet learns the pairs that walk uses
    # (radius in cells of this grid).
    pair_stride: int = 8
    # Train only the affinity head on a frozen backbone (as IRN trains its boundary branch);
    # the reference fine-tunes the whole backbone (false).
    freeze_backbone: bool = False
    # Per-level widths of the affinity head; null = clamp(channels // 8, 16, 256), which is
    # the reference's (64, 128, 256) for ResNet-38.
    widths: tuple[int, int, int] | None = None
    train_split: str = "train"
    # As train_cam.holdout, and by the same hash, so at the same fraction the same images:
    # AffinityNet does not train on them, and each epoch its loss on their confident pairs
    # (no labels needed beyond the CAMs') is set beside a constant affinity's; `select: best`
    # keeps the epoch where that gain is highest. 0 trains on every image.
    holdout: float = 0.1
    select: str = "best"  # "best" (held-out pair loss) or "last" epoch
    num_workers: int = 0
    sync_bn: bool = False  # see _TRAINING
    seed: int = 0
    device: str = "auto"

    section: ClassVar[str] = "train_aff"
    ranges: ClassVar[dict[str, Check]] = {
        **_TRAINING,
        # The pair labels are taken on the stride-8 grid of the crop, so it must tile it.
        "crop": Int(STRIDE, multiple_of=STRIDE),
        "radius": RADIUS,
        "pairs": PAIRS,
        "pair_stride": Int(4, 8, multiple_of=4),
        "freeze_backbone": BOOL,
        "widths": Maybe(Each(Int(1))),
        "holdout": HOLDOUT,
        "select": SELECT,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        # The crop's grid must hold at least one pair, or every batch has no labels and the
        # loss is 0. "full" needs two cells side by side; "psa" starts pairs only in columns
        # r-1 … g-r of a g-cell grid (SPEC §3.1), which needs g >= 2r - 1.
        cells = 2 if self.pairs == "full" else 2 * self.radius - 1
        if self.crop < cells * self.pair_stride:
            raise ConfigError(
                f"train_aff.crop, train_aff.radius: a {self.crop}-px crop holds no pairs of "
                f"radius {self.radius} (train_aff.pairs: {self.pairs}, pair_stride: "
                f"{self.pair_stride}); expected a crop >= {cells * self.pair_stride}"
            )


@dataclass(frozen=True)
class TrainSegConfig(_Stage):
    """The segmentation network trained on pseudo labels (the paper's last step, §5): a
    DeepLab-style head on a backbone at output stride 8, cross-entropy with 255 ignored, SGD
    with poly decay (the head at 10x the backbone's rate, ``param_groups``)."""

    backbone: str = "resnet38"
    weights: str | None = "default"
    epochs: int = 30
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    # DeepLab trains with plain SGD momentum; the CAM stages' quirk (see TrainCamConfig) is off.
    reference_momentum_quirk: bool = False
    momentum: float = 0.9
    crop: int = 448
    # Each image (and its label map, nearest-neighbour) is resized by a factor drawn uniformly
    # from this range before the crop.
    scale_range: tuple[float, float] = (0.7, 1.3)
    hflip: bool = True
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    # The head's dilation rates on the stride-8 grid: one rate is DeepLab's LargeFOV, several
    # an ASPP whose branches' class scores are summed (DeepLab v2's ASPP-S has 2, 4, 8, 12).
    head_rates: tuple[int, ...] = (2, 4, 8, 12)
    head_width: int = 256  # channels of each branch's dilated conv
    head_dropout: float = 0.5
    # DeepLab v3's image-level branch (``SegNet``): the whole image's features added to each
    # cell's, for classes told apart by a part that a cell's receptive field may not reach.
    head_context: bool = False
    # A decoder step (DeepLab v3+'s, narrowed): where the head runs coarser than stride 8
    # (backbone mobilenet_v2_os16), its reduced features are upsampled to the backbone's
    # stride-8 low level, joined with it and mixed by a 3×3 conv before the class scores.
    head_skip: bool = False
    # After training, shift the background score by the offset (of BG_OFFSETS) under which the
    # network's single-scale argmax on its own training images best agrees with the labels it
    # was trained on (`calibrate_background`); folded into the weights, so export and runtime
    # are unchanged. Labels that call foreground background more often than the reverse leave
    # the network too ready to say background; training images alone say by how much.
    calibrate: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    train_split: str = "train"
    num_workers: int = 0
    sync_bn: bool = False  # see _TRAINING
    seed: int = 0
    device: str = "auto"

    section: ClassVar[str] = "train_seg"
    ranges: ClassVar[dict[str, Check]] = {
        **_TRAINING,
        "crop": Int(STRIDE),  # at least one cell of the stride-8 grid
        # 0.1 .. 4: a factor past these makes a 500-px image a few cells or 16x its pixels.
        "scale_range": Each(Real(ge=0.1, le=4), nonempty=True, ascending=True),
        # A rate past 64 cells (512 px) reads only padding on any image we label.
        "head_rates": Each(Int(1, 64), nonempty=True, distinct=True),
        "head_width": Int(1, 4096),
        "head_dropout": Real(ge=0, lt=1),  # 1 would zero every feature
        "head_context": BOOL,
        "head_skip": BOOL,
        "calibrate": BOOL,
        "mean": Each(UNIT),
        "std": Each(POSITIVE),
    }


@dataclass(frozen=True)
class LabelConfig(_Stage):
    """Random-walk pseudo labels (SPEC §5)."""

    alpha: float = REFERENCE_WALK.alpha
    beta: float = REFERENCE_WALK.beta
    logt: int = REFERENCE_WALK.steps.bit_length() - 1  # steps = 2 ** logt = 256
    radius: int = REFERENCE_WALK.radius
    pairs: str = REFERENCE_WALK.pairs  # "psa" reproduces the reference's border quirk bit for bit
    # Each walked channel divided by its maximum before the argmax (WalkParams.normalize).
    normalize: bool = REFERENCE_WALK.normalize
    crf: bool = False
    crf_sxy: float = REFERENCE_WALK.crf_sxy  # the dense CRF's bilateral width, pixels
    # The walk's grid: 8 (the features' stride, the reference's) or 4 (features upsampled ×2).
    walk_stride: int = REFERENCE_WALK.stride
    split: str = "train"
    class_threshold: float = 0.5  # for --predict-classes: sigmoid(logit) above this
    device: str = "auto"

    def walk(self) -> WalkParams:
        """These settings as the runtime takes them (``2 ** logt`` steps)."""
        return WalkParams(
            self.alpha,
            self.beta,
            2**self.logt,
            self.radius,
            self.pairs,
            self.normalize,
            self.crf_sxy,
            self.walk_stride,
        )

    section: ClassVar[str] = "label"
    ranges: ClassVar[dict[str, Check]] = {
        "alpha": POSITIVE,
        "beta": POSITIVE,
        # Up to 2**12 = 4096 steps, 16x the reference's 256: the walk has long converged, and
        # each step costs a pass over all pairs (logt 40 would be 10^12 passes: a hang).
        "logt": Int(0, 12),
        "radius": RADIUS,
        "pairs": PAIRS,
        "normalize": BOOL,
        "crf": BOOL,
        "crf_sxy": POSITIVE,
        "walk_stride": Int(4, 8, multiple_of=4),
        "split": NAME,
        # A probability compared with ">": 1 predicts no class at all (every pixel background),
        # a tested edge case; 0 would predict every class.
        "class_threshold": Real(gt=0, le=1),
        "device": DEVICE,
    }


@dataclass(frozen=True)
class EvalConfig(_Stage):
    """CAM evaluation: a constant background score competes with the normalised CAMs."""

    bg_threshold: float = 0.2
    split: str = "val"

    section: ClassVar[str] = "eval"
    ranges: ClassVar[dict[str, Check]] = {
        "bg_threshold": UNIT,  # the CAMs are normalised to [0, 1]
        "split": NAME,
    }


@dataclass(frozen=True)
class DemoConfig(_Stage):
    """The synthetic data set that ``psa demo`` generates (``bg_sweep``: ``psa demo`` and
    ``psa pipeline`` also score the CAMs at other background thresholds)."""

    num_images: int = 400
    size: int = 160
    style: str = "default"  # psa make-synthetic --style: what the images look like
    num_classes: int | None = None  # null: the style's (6; 12 for "many")
    seed: int = 0  # image i is drawn from default_rng([seed, i])
    bg_sweep: bool = True

    # The keys of psa_train.synthetic.STYLES, kept here so that reading a config draws in no
    # image code (a test checks that the two agree).
    styles: ClassVar[tuple[str, ...]] = (
        "default",
        "parts",
        "textured",
        "many",
        "plain",
        "small",
        "classes12",
    )
    section: ClassVar[str] = "demo"
    ranges: ClassVar[dict[str, Check]] = {
        "num_images": Int(8),  # as psa demo --num-images
        "size": Int(64),  # the generator's smallest image
        "style": OneOf(styles),
        "num_classes": Maybe(Int(1, 20)),  # the generator has 20 class names
        "seed": Int(0),  # numpy's seed sequences take no negative numbers
        "bg_sweep": BOOL,
    }


@dataclass(frozen=True)
class Config:
    """The whole pipeline's configuration."""

    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = field(default_factory=MakeCamConfig)
    aff_labels: AffLabelsConfig = field(default_factory=AffLabelsConfig)
    train_aff: TrainAffConfig = field(default_factory=TrainAffConfig)
    train_seg: TrainSegConfig = field(default_factory=TrainSegConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)


def _coerce(value, tp, key: str):
    """Check/convert a YAML value against a type hint; raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _update(obj, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(names))})")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            changes[k] = _update(current, v, key)
        else:
            changes[k] = _coerce(v, hints[k], key)
    return dataclasses.replace(obj, **changes)


def parse_set(item: str) -> tuple[str, object]:
    """``a.b=value`` → (``a.b``, YAML-parsed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: value is not valid YAML ({e})") from None


def load_config(path: str | Path | None = None, sets: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML recipe at ``path``, then each ``key=value`` of ``sets``.

    The sets are applied together (a later one for the same key wins), so that values checked
    against each other (``aff_labels.low_alpha < high_alpha``) can be changed in one call.
    """
    cfg = Config()
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        try:
            cfg = _update(cfg, data, "")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    nested: dict = {}
    for item in sets:
        key, value = parse_set(item)
        cur = nested
        parts = key.split(".")
        for i, p in enumerate(parts[:-1]):
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"--set {item}: {'.'.join(parts[: i + 1])} is not a section")
        cur[parts[-1]] = value
    return _update(cfg, nested, "") if nested else cfg


def to_dict(obj) -> dict:
    """A dataclass as plain YAML-able data (tuples become lists)."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    if isinstance(obj, Config):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}


def save_config(obj, path: str | Path) -> None:
    """Write a (stage or whole) configuration as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def stage_from_dict(cls, data: dict, source: str | Path | None = None):
    """Rebuild a stage dataclass from saved YAML data (e.g. a checkpoint's sidecar); errors
    name ``source`` (the file the data came from) when given."""
    try:
        return _update(cls(), data, cls.section)
    except ConfigError as e:
        if source is None:
            raise
        raise ConfigError(f"{source}: {e}") from None

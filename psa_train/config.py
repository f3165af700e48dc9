"""Configuration as data: one frozen dataclass per stage, filled from defaults → YAML → --set.

A recipe YAML has one section per stage (``train_cam:``, ``make_cam:``, …). Unknown sections or
keys and values of the wrong type are errors that name the key. The resolved configuration is
written next to every run's output (``config.yaml``) so a run can be repeated exactly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A configuration value is unknown or of the wrong type; the message names the key."""


@dataclass(frozen=True)
class TrainCamConfig:
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
    val_split: str = "val"
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class MakeCamConfig:
    """Multi-scale + flip CAM inference (SPEC §2)."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    split: str = "train"
    device: str = "auto"


@dataclass(frozen=True)
class AffLabelsConfig:
    """Confident regions for AffinityNet from the CAMs with a dense CRF (SPEC §2–3)."""

    low_alpha: float = 4.0  # "la": strong background competitor → confident foreground
    high_alpha: float = 32.0  # "ha": weak background → confident background
    crf: bool = True
    crf_iterations: int = 10
    # The bilateral kernel's spatial width in pixels (reference: 80, for ~500-px VOC images).
    crf_bilateral_sxy: float = 80.0
    split: str = "train"


@dataclass(frozen=True)
class TrainAffConfig:
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
    radius: int = 5
    pairs: str = "psa"  # "psa" = the reference's pair set (SPEC §3.1); "full" = every pair
    # Train only the affinity head on a frozen backbone (as IRN trains its boundary branch);
    # the reference fine-tunes the whole backbone (false).
    freeze_backbone: bool = False
    # Per-level widths of the affinity head; null = clamp(channels // 8, 16, 256), which is
    # the reference's (64, 128, 256) for ResNet-38.
    widths: tuple[int, int, int] | None = None
    train_split: str = "train"
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class LabelConfig:
    """Random-walk pseudo labels (SPEC §5)."""

    alpha: float = 16.0
    beta: float = 8.0
    logt: int = 8  # steps = 2 ** logt = 256
    radius: int = 5
    pairs: str = "full"  # "psa" reproduces the reference's border quirk bit for bit
    crf: bool = False
    split: str = "train"
    class_threshold: float = 0.5  # for --predict-classes: sigmoid(logit) above this
    device: str = "auto"


@dataclass(frozen=True)
class EvalConfig:
    """CAM evaluation: a constant background score competes with the normalised CAMs."""

    bg_threshold: float = 0.2
    split: str = "val"


@dataclass(frozen=True)
class DemoConfig:
    """The synthetic data set that ``psa demo`` generates."""

    num_images: int = 400
    size: int = 160
    num_classes: int = 6
    bg_sweep: bool = True


@dataclass(frozen=True)
class Config:
    """The whole pipeline's configuration."""

    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = field(default_factory=MakeCamConfig)
    aff_labels: AffLabelsConfig = field(default_factory=AffLabelsConfig)
    train_aff: TrainAffConfig = field(default_factory=TrainAffConfig)
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
    """Defaults, then the YAML recipe at ``path``, then each ``key=value`` of ``sets``."""
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
    for item in sets:
        key, value = parse_set(item)
        nested: dict = {}
        cur = nested
        parts = key.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = value
        cfg = _update(cfg, nested, "")
    return cfg


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


def stage_from_dict(cls, data: dict):
    """Rebuild a stage dataclass from saved YAML data (e.g. a checkpoint's sidecar)."""
    return _update(cls(), data, cls.__name__)

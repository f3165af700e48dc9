import dataclasses
import re

import numpy as np
import pytest
import yaml

from psa_train.config import (
    BACKBONE_NAMES,
    AffLabelsConfig,
    Config,
    ConfigError,
    LabelConfig,
    MakeCamConfig,
    TrainAffConfig,
    load_config,
    save_config,
    stage_from_dict,
    to_dict,
)
from tests.conftest import ROOT

RECIPES = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_are_the_reference_recipe():
    cfg = load_config()
    assert cfg.train_cam.lr == 0.1 and cfg.train_cam.batch_size == 16
    assert cfg.train_cam.reference_momentum_quirk is True
    assert cfg.make_cam.scales == (1.0, 0.5, 1.5, 2.0)
    assert (cfg.aff_labels.low_alpha, cfg.aff_labels.high_alpha) == (4.0, 32.0)
    assert (cfg.label.alpha, cfg.label.beta, cfg.label.logt) == (16.0, 8.0, 8)


def test_yaml_then_set_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train_cam:\n  epochs: 3\n  resize_long: [100, 200]\n")
    cfg = load_config(p, ["train_cam.epochs=5", "label.pairs=psa"])
    assert cfg.train_cam.epochs == 5
    assert cfg.train_cam.resize_long == (100, 200)
    assert cfg.label.pairs == "psa"


def test_unknown_keys_and_wrong_types_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="train_cam.epoch: unknown key"):
        load_config(None, ["train_cam.epoch=3"])
    with pytest.raises(ConfigError, match="train_cam.epochs: expected an integer, got 3.5"):
        load_config(None, ["train_cam.epochs=3.5"])
    with pytest.raises(ConfigError, match="expected a list of 2 values"):
        load_config(None, ["train_cam.resize_long=[1,2,3]"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train_cam.epochs"])
    with pytest.raises(ConfigError, match="train_cam.hflip: expected true or false, got 2"):
        load_config(None, ["train_cam.hflip=2"])
    # YAML reads "nan" as a string, ".nan" as the float (rejected by the ranges, below)
    with pytest.raises(ConfigError, match="train_cam.lr: expected a number, got 'nan'"):
        load_config(None, ["train_cam.lr=nan"])
    p = tmp_path / "bad.yaml"
    p.write_text("nosuchstage:\n  x: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml: nosuchstage: unknown key"):
        load_config(p)


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["train_cam.epochs=2", "train_cam.weights=null"])
    save_config(cfg, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["train_cam"]["weights"] is None
    assert load_config(tmp_path / "c.yaml") == cfg


def test_every_field_of_every_stage_has_a_range():
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        assert cls.section == section.name
        assert set(cls.ranges) == {f.name for f in dataclasses.fields(cls)}, cls.__name__


def test_backbone_names_are_the_backbones():
    pytest.importorskip("torch")
    from psa_train.backbones import BACKBONES

    assert tuple(BACKBONES) == BACKBONE_NAMES


# (--set item, the key its message must start with)
BAD = [
    # the cases
    ("make_cam.scales=[]", "make_cam.scales"),
    ("make_cam.scales=[0]", "make_cam.scales[0]"),
    ("make_cam.scales=[-1]", "make_cam.scales[0]"),
    ("train_cam.lr=.nan", "train_cam.lr"),
    ("train_cam.epochs=0", "train_cam.epochs"),
    ("label.logt=40", "label.logt"),
    ("label.alpha=-1", "label.alpha"),
    ("label.class_threshold=2", "label.class_threshold"),
    # training
    ("train_cam.lr=.inf", "train_cam.lr"),
    ("train_cam.lr=0", "train_cam.lr"),
    ("train_aff.lr=-0.1", "train_aff.lr"),
    ("train_aff.epochs=0", "train_aff.epochs"),
    ("train_cam.batch_size=0", "train_cam.batch_size"),
    ("train_aff.batch_size=-8", "train_aff.batch_size"),
    ("train_cam.weight_decay=-0.0001", "train_cam.weight_decay"),
    ("train_aff.weight_decay=1", "train_aff.weight_decay"),
    ("train_cam.weight_decay=.nan", "train_cam.weight_decay"),
    ("train_cam.momentum=1", "train_cam.momentum"),
    ("train_aff.momentum=-0.5", "train_aff.momentum"),
    ("train_cam.poly_power=-1", "train_cam.poly_power"),
    ("train_aff.poly_power=.inf", "train_aff.poly_power"),
    ("train_cam.crop=4", "train_cam.crop"),
    ("train_aff.crop=0", "train_aff.crop"),
    ("train_aff.crop=100", "train_aff.crop"),  # not a multiple of 8
    ("train_cam.resize_long=[0,512]", "train_cam.resize_long[0]"),
    ("train_cam.resize_long=[512,256]", "train_cam.resize_long"),
    ("train_cam.color_jitter=[1.5,0,0,0]", "train_cam.color_jitter[0]"),
    ("train_cam.color_jitter=[0,-0.1,0,0]", "train_cam.color_jitter[1]"),
    ("train_aff.color_jitter=[0,0,2,0]", "train_aff.color_jitter[2]"),
    ("train_aff.color_jitter=[0,0,0,0.6]", "train_aff.color_jitter[3]"),
    ("train_cam.mean=[0.5,0.5,1.5]", "train_cam.mean[2]"),
    ("train_cam.mean=[-0.1,0.5,0.5]", "train_cam.mean[0]"),
    ("train_cam.std=[0.2,0,0.2]", "train_cam.std[1]"),
    ("train_cam.std=[0.2,0.2,.nan]", "train_cam.std[2]"),
    ("train_cam.seed=-1", "train_cam.seed"),
    ("train_aff.seed=4294967296", "train_aff.seed"),
    ("train_cam.num_workers=-1", "train_cam.num_workers"),
    ("train_cam.backbone=vgg16", "train_cam.backbone"),
    ("train_aff.backbone=ResNet38", "train_aff.backbone"),
    ("train_cam.weights=''", "train_cam.weights"),
    ("train_aff.widths=[8,0,8]", "train_aff.widths[1]"),
    ("train_aff.widths=[8,8,-1]", "train_aff.widths[2]"),
    # CAMs
    ("make_cam.scales=[1.0,4.5]", "make_cam.scales[1]"),
    ("make_cam.scales=[1.0,.nan]", "make_cam.scales[1]"),
    ("make_cam.scales=[1.0,0.5,1.0]", "make_cam.scales"),  # a duplicate
    # affinity labels
    ("aff_labels.low_alpha=0", "aff_labels.low_alpha"),
    ("aff_labels.high_alpha=.inf", "aff_labels.high_alpha"),
    ("aff_labels.crf_iterations=0", "aff_labels.crf_iterations"),
    ("aff_labels.crf_iterations=101", "aff_labels.crf_iterations"),
    ("aff_labels.crf_bilateral_sxy=0", "aff_labels.crf_bilateral_sxy"),
    # the walk
    ("label.alpha=0", "label.alpha"),
    ("label.alpha=.nan", "label.alpha"),
    ("label.beta=0", "label.beta"),
    ("label.beta=-.inf", "label.beta"),
    ("label.logt=-1", "label.logt"),
    ("label.logt=13", "label.logt"),
    ("label.radius=1", "label.radius"),
    ("label.radius=11", "label.radius"),
    ("train_aff.radius=0", "train_aff.radius"),
    ("label.pairs=dense", "label.pairs"),
    ("train_aff.pairs=PSA", "train_aff.pairs"),
    ("label.class_threshold=0", "label.class_threshold"),
    ("label.class_threshold=.nan", "label.class_threshold"),
    ("eval.bg_threshold=1.5", "eval.bg_threshold"),
    ("eval.bg_threshold=-0.1", "eval.bg_threshold"),
    # devices and split names
    ("train_cam.device=mps", "train_cam.device"),
    ("train_aff.device=gpu", "train_aff.device"),
    ("make_cam.device=cuda:-1", "make_cam.device"),
    ("label.device='cuda:'", "label.device"),
    ("label.device=''", "label.device"),
    ("train_cam.train_split=''", "train_cam.train_split"),
    ("train_cam.val_split=' '", "train_cam.val_split"),
    ("train_aff.train_split=''", "train_aff.train_split"),
    ("make_cam.split=''", "make_cam.split"),
    ("aff_labels.split=''", "aff_labels.split"),
    ("label.split=''", "label.split"),
    ("eval.split=''", "eval.split"),
    # the demo's data set
    ("demo.num_images=7", "demo.num_images"),
    ("demo.size=32", "demo.size"),
    ("demo.num_classes=0", "demo.num_classes"),
    ("demo.num_classes=21", "demo.num_classes"),
]


@pytest.mark.parametrize(("item", "key"), BAD, ids=[item for item, _ in BAD])
def test_values_out_of_range_are_errors_naming_the_key(item, key):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}: expected ") as e:
        load_config(sets=[item])
    assert "\n" not in str(e.value)


# Edge values that are in range, and YAML ints where floats are expected: (item, key, value)
GOOD = [
    ("train_cam.lr=1", "train_cam.lr", 1.0),
    ("label.alpha=16", "label.alpha", 16.0),
    ("train_cam.momentum=0", "train_cam.momentum", 0.0),
    ("train_cam.poly_power=0", "train_cam.poly_power", 0.0),
    ("train_aff.weight_decay=0", "train_aff.weight_decay", 0.0),
    ("train_cam.crop=8", "train_cam.crop", 8),
    ("train_cam.resize_long=[300,300]", "train_cam.resize_long", (300, 300)),
    ("train_cam.color_jitter=[1,1,1,0.5]", "train_cam.color_jitter", (1.0, 1.0, 1.0, 0.5)),
    ("train_cam.seed=4294967295", "train_cam.seed", 2**32 - 1),
    ("train_cam.device=cuda:3", "train_cam.device", "cuda:3"),
    ("train_aff.widths=null", "train_aff.widths", None),
    ("train_aff.widths=[1,2,3]", "train_aff.widths", (1, 2, 3)),
    ("train_aff.weights=null", "train_aff.weights", None),
    ("make_cam.scales=[4]", "make_cam.scales", (4.0,)),
    ("make_cam.scales=[0.25]", "make_cam.scales", (0.25,)),
    ("aff_labels.crf_iterations=100", "aff_labels.crf_iterations", 100),
    ("label.logt=0", "label.logt", 0),
    ("label.logt=12", "label.logt", 12),
    ("label.radius=2", "label.radius", 2),
    ("label.radius=10", "label.radius", 10),
    ("label.class_threshold=1.0", "label.class_threshold", 1.0),  # no class: all background
    ("eval.bg_threshold=0", "eval.bg_threshold", 0.0),
    ("eval.bg_threshold=1", "eval.bg_threshold", 1.0),
    ("demo.num_images=8", "demo.num_images", 8),
    ("demo.num_classes=20", "demo.num_classes", 20),
]


@pytest.mark.parametrize(("item", "key", "value"), GOOD, ids=[item for item, _, _ in GOOD])
def test_edge_values_in_range_are_taken(item, key, value):
    section, name = key.split(".")
    got = getattr(getattr(load_config(sets=[item]), section), name)
    assert got == value and type(got) is type(value)


def test_yaml_value_out_of_range_names_the_file_and_key(tmp_path):
    p = tmp_path / "recipe.yaml"
    p.write_text("label:\n  alpha: 16\n  logt: 40\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: label.logt: expected an integer in 0..12, got 40"


def test_low_alpha_must_be_below_high_alpha():
    both = "aff_labels.low_alpha, aff_labels.high_alpha: expected low_alpha < high_alpha"
    with pytest.raises(ConfigError, match=re.escape(f"{both}, got 32 and 32")):
        load_config(sets=["aff_labels.low_alpha=32"])
    with pytest.raises(ConfigError, match=re.escape(f"{both}, got 4 and 2")):
        load_config(sets=["aff_labels.high_alpha=2"])
    # the sets are applied together: both alphas can move past each other in one call
    cfg = load_config(sets=["aff_labels.low_alpha=40", "aff_labels.high_alpha=80"])
    assert (cfg.aff_labels.low_alpha, cfg.aff_labels.high_alpha) == (40.0, 80.0)
    # ... and a later set for the same key wins before anything is checked
    assert load_config(sets=["label.logt=40", "label.logt=4"]).label.logt == 4
    with pytest.raises(ConfigError, match=r"--set label.alpha=1: label is not a section"):
        load_config(sets=["label=5", "label.alpha=1"])


@pytest.mark.parametrize("pairs", ["psa", "full"])
@pytest.mark.parametrize("radius", [2, 5, 10])
def test_train_aff_crop_must_hold_pairs_as_the_walk_counts_them(radius, pairs):
    from psa_infer.randomwalk import pair_affinity

    def has_pairs(cells: int) -> bool:
        features = np.random.default_rng(0).random((4, cells, cells), dtype=np.float32)
        return bool(pair_affinity(features, radius=radius, pairs=pairs).any())

    def accepted(crop: int) -> bool:
        try:
            TrainAffConfig(crop=crop, radius=radius, pairs=pairs)
        except ConfigError as e:
            assert str(e).startswith("train_aff.crop, train_aff.radius: ")
            return False
        return True

    cells = range(1, 2 * radius + 2)
    assert [accepted(8 * g) for g in cells] == [has_pairs(g) for g in cells]
    assert not accepted(8) and accepted(8 * (2 * radius + 1))  # both kinds occur


def test_ranges_hold_however_a_stage_is_built():
    with pytest.raises(ConfigError, match=r"^label.logt: expected an integer in 0..12, got 40"):
        LabelConfig(logt=40)
    with pytest.raises(ConfigError, match=r"^make_cam.scales: expected at least one value"):
        dataclasses.replace(MakeCamConfig(), scales=())
    with pytest.raises(ConfigError, match=r"^aff_labels.low_alpha, aff_labels.high_alpha"):
        AffLabelsConfig(low_alpha=8, high_alpha=8)


def test_stage_from_dict_checks_ranges_and_names_the_source():
    saved = to_dict(load_config(sets=["train_aff.radius=4", "train_aff.widths=[8,8,8]"]).train_aff)
    cfg = stage_from_dict(TrainAffConfig, saved)
    assert (cfg.radius, cfg.widths) == (4, (8, 8, 8))
    with pytest.raises(ConfigError, match=r"^train_aff.radius: expected an integer in 2..10"):
        stage_from_dict(TrainAffConfig, {**saved, "radius": 0})
    with pytest.raises(ConfigError, match=r"^run/aff.json: label.logt: expected an integer"):
        stage_from_dict(LabelConfig, {"logt": 40}, source="run/aff.json")
    with pytest.raises(ConfigError, match=r"^label.steps: unknown key"):
        stage_from_dict(LabelConfig, {"steps": 256})


def test_there_are_recipes_to_check():
    names = {p.name for p in RECIPES}
    assert {"synthetic_demo.yaml", "voc12_resnet38.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load(path):
    cfg = load_config(path)
    assert cfg != Config()  # the recipe set something, and every value passed its range

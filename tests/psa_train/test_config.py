import pytest
import yaml

from psa_train.config import ConfigError, load_config, save_config


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
    p = tmp_path / "bad.yaml"
    p.write_text("nosuchstage:\n  x: 1\n")
    with pytest.raises(ConfigError, match="bad.yaml: nosuchstage: unknown key"):
        load_config(p)


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(None, ["train_cam.epochs=2", "train_cam.weights=null"])
    save_config(cfg, tmp_path / "c.yaml")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["train_cam"]["weights"] is None
    assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("path", ["configs/synthetic_demo.yaml", "configs/voc12_resnet38.yaml"])
def test_shipped_recipes_load(path):
    from tests.conftest import ROOT

    load_config(ROOT / path)

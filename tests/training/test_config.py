import dataclasses
from pathlib import Path

import pytest

from relaxplug.training.config import TrainConfig, apply_overrides, config_to_dict, load_config
from relaxplug.training.methods import METHODS, GloRoSection, list_methods

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def test_every_shipped_config_loads():
    configs = [p for p in sorted(CONFIG_DIR.glob("*.yaml")) if not p.name.endswith("_sets.yaml") and not p.name.startswith("groups")]
    assert configs
    for path in configs:
        config = load_config(path)
        assert isinstance(config, TrainConfig), path


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: digits\nepoch: 3\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['epoch'\]"):
        load_config(path)


def test_overrides_are_typed_and_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: digits\nepochs: 3\n")
    config = load_config(path, ["eps=0.5", "guarantee=rtk:2", "sets=[[0, 1]]"])
    assert config.eps == 0.5 and config.guarantee == "rtk:2" and config.sets == ((0, 1),)
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(config, ["lr_schedule=1"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(config, ["eps"])


@pytest.mark.parametrize("bad", [{"method_options": {"loss": "hinge"}}, {"epochs": 0}, {"norm": float("inf")}, {"lr": "soon"}, {"method": "magic"}])
def test_invalid_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_method_settings_live_in_the_method_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: gloro\ngloro: {loss: ce, power_iterations: 3}\noptimizer: {name: nadam, lookahead_k: 5}\n"
                    "ema: {decay: 0.99}\n")
    config = load_config(path, ["gloro.loss=trades", "optimizer.clip_grad_norm=2.5"])
    assert isinstance(config.method_options, GloRoSection)
    assert config.method_options == GloRoSection(loss="trades", power_iterations=3)
    assert config.optimizer.name == "nadam" and config.optimizer.lookahead_k == 5
    assert config.optimizer.clip_grad_norm == 2.5 and config.ema.decay == 0.99
    assert config_to_dict(config)["gloro"]["loss"] == "trades" and "method_options" not in config_to_dict(config)
    assert apply_overrides(config, []) == config  # round trip through the YAML form


@pytest.mark.parametrize("text, message", [
    ("loss: ce\n", r"'loss' is a setting of method gloro: write it in the section 'gloro:'"),
    ("method: natural\ngloro: {loss: ce}\n", "section 'gloro' is for method gloro, but the method is 'natural'"),
    ("gloro: {los: ce}\n", r"section 'gloro': unknown key\(s\) \['los'\]"),
    ("method: crown-ibp\nnorm: inf\ncrown-ibp: {warmup: 1}\n", r"section 'crown-ibp': unknown key\(s\) \['warmup'\]"),
    ("optimizer: {name: rmsprop}\n", "optimizer.name must be one of"),
    ("optimizer: {lookahead_alpha: 0}\n", "lookahead_alpha"),
    ("optimizer: {clip_grad_norm: -1}\n", "clip_grad_norm"),
    ("optimizer: {momentum: 0.9, nesterov: true}\n", r"section 'optimizer': unknown key\(s\) \['nesterov'\]"),
    ("ema: {decay: 1.0}\n", r"ema.decay must be in \(0, 1\)"),
    ("eps: 0.3\neps_min: 0.5\n", r"eps_min must be in \[0, eps"),
    ("gloro: [1, 2]\n", "must be a mapping"),
    ("method: magic\n", "unknown training method 'magic'; known: crown-ibp, gloro, natural"),
])
def test_section_errors_name_the_problem(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_every_registered_method_has_a_frozen_section_with_defaults():
    for name in list_methods():
        method = METHODS.get(name)
        section = method.Section()
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, "x", 1)
        TrainConfig(method=name, norm=2.0, method_options={})

from pathlib import Path

import pytest

from relaxplug.training.config import TrainConfig, apply_overrides, load_config

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


@pytest.mark.parametrize("bad", [{"loss": "hinge"}, {"epochs": 0}, {"norm": float("inf")}, {"lr": "soon"}, {"method": "magic"}])
def test_invalid_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)

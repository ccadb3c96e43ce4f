"""``relaxplug reproduce``: the shipped configs parse, a small run reports measured against target."""

from pathlib import Path

import pytest

from relaxplug.cli import main
from relaxplug.training.reproduce import load_reproduction

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(ROOT.glob("configs/*_liresnet*.yaml"))


def test_every_anchor_config_parses_and_states_its_target():
    names = {p.stem for p in CONFIGS}
    assert {"cifar10_liresnet", "cifar100_liresnet_standard", "cifar100_liresnet_rt5", "cifar100_liresnet_superclass",
            "tinyimagenet_liresnet_standard", "tinyimagenet_liresnet_rt5", "eurosat_liresnet_standard",
            "eurosat_liresnet_rt3"} <= names
    for path in CONFIGS:
        config, target = load_reproduction(path)
        assert config.method == "gloro" and config.method_options.loss == "emma"
        assert config.architecture.startswith("liresnet") and target.source
        assert 0 < target.vra <= 100 and abs(target.eps - 36 / 255) < 1e-12
        assert target.guarantee == config.guarantee


def test_reproduce_trains_certifies_and_prints_both_figures(tmp_path, capsys):
    config = tmp_path / "digits.yaml"
    config.write_text(f"""name: tiny
dataset: digits
architecture: liresnet_digits
guarantee: "rtk:2"
eps: 0.3
epochs: 1
batch_size: 128
limit_train: 256
device: cpu
out_dir: {tmp_path / 'run'}
gloro: {{loss: emma}}
target: {{vra: 12.5, eps: 0.3, source: "a made-up figure"}}
""")
    assert main(["reproduce", str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "rtk:2" in out and "12.5" in out and "a made-up figure" in out
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert main(["reproduce", str(config), "--quiet"]) == 0  # resumes: the finished run is not retrained


def test_missing_or_bad_target_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndataset: digits\ntarget: {vra: 120, eps: 0.1}\n")
    assert main(["reproduce", str(bad)]) == 2
    assert "target.vra is a percentage" in capsys.readouterr().err
    none = tmp_path / "none.yaml"
    none.write_text("name: x\ndataset: digits\n")
    assert main(["reproduce", str(none)]) == 2
    assert "needs a 'target' mapping" in capsys.readouterr().err
    assert main(["reproduce"]) == 2  # no config: a usage error

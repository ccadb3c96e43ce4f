"""One model-source loader: ``relaxplug attack`` takes the same sources as ``eval``
(``--checkpoint``, ``--robustbench``, ``--lirpa-model``), and loading returns one typed result."""

import importlib.util
import json

import numpy as np
import pytest
import torch

from relaxplug.cli import main
from relaxplug.evaluation.sources import ModelSource, load_model_source
from relaxplug.norms import Norm
from relaxplug.zoo import build_lirpa_model

from ..zoo.test_robustbench_models import model_dir  # noqa: F401  (the fixture writing local RobustBench files)

needs_lirpa = pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is None, reason="auto_LiRPA is not installed")
needs_robustbench = pytest.mark.skipif(importlib.util.find_spec("robustbench") is None,
                                       reason="robustbench is not installed")


def _lirpa_file(tmp_path):
    torch.manual_seed(0)
    net = build_lirpa_model("crown-ibp/cnn_2layer", (1, 8, 8), 10, width=2, linear_size=32)
    path = tmp_path / "cnn_2layer.pth"
    torch.save({"state_dict": [net.state_dict()], "epoch": 1}, path)
    return path


def test_load_model_source_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one model source"):
        load_model_source()
    with pytest.raises(ValueError, match="exactly one model source"):
        load_model_source(checkpoint="a.pt", robustbench="Standard")


@needs_lirpa
def test_lirpa_source_is_a_typed_result_and_attack_takes_it(tmp_path, capsys):
    path = _lirpa_file(tmp_path)
    source = load_model_source(lirpa_model="crown-ibp/cnn_2layer", lirpa_checkpoint=path, data="digits", eps=0.02,
                               guarantee="rtk:2", device="cpu")
    assert isinstance(source, ModelSource) and source.eps == 0.02 and source.norm == Norm(2)
    loaded, guarantee, spec, eps, dataset, device = source  # still unpacks as before
    assert spec == "rtk:2" and loaded.model is source.model and len(dataset) > 0
    code = main(["attack", "--lirpa-model", "crown-ibp/cnn_2layer", "--lirpa-checkpoint", str(path), "--data", "digits",
                 "--certifier", "ibp", "--norm", "inf", "--eps", "0.01", "--guarantee", "rtk:2", "--limit", "8",
                 "--steps", "5", "--restarts", "0", "--no-autoattack", "--quiet", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "crown-ibp crown-ibp/cnn_2layer" in out
    record = json.loads((tmp_path / "out" / "attack.json").read_text())
    assert record["points"] == 8 and record["certifier"] == "ibp" and record["norm"] == "inf"
    assert record["broken"] == 0 and record["attacked"] == record["certified"]
    assert record["checkpoint"] == str(path)


@needs_robustbench
def test_attack_takes_a_robustbench_model(model_dir, tmp_path, capsys):  # noqa: F811
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    y = np.array([0, 9])  # the npz class count is read from its largest label
    data = tmp_path / "test_images.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x, y_test=y)
    code = main(["attack", "--robustbench", "Sehwag2021Proxy_R18", "--dataset", "cifar10", "--threat-model", "L2",
                 "--model-dir", str(model_dir), "--data", str(data), "--certifier", "none", "--eps", "0.01",
                 "--steps", "1", "--restarts", "0", "--targets", "1", "--no-autoattack", "--quiet",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    assert "robustbench Sehwag2021Proxy_R18" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "attack.json").read_text())
    assert record["points"] == 2 and record["norm"] == "2"  # the threat model's norm
    assert record["checkpoint"].endswith("cifar10/L2/Sehwag2021Proxy_R18.pt")


@pytest.mark.parametrize("source, option, words", [
    ({"checkpoint": "a.pt"}, {"dataset": "cifar10"}, "--dataset applies to --robustbench only, not to --checkpoint"),
    ({"checkpoint": "a.pt"}, {"threat_model": "L2", "model_dir": "m"},
     "--model-dir, --threat-model apply to --robustbench only, not to --checkpoint"),
    ({"robustbench": "Standard"}, {"lirpa_checkpoint": "x.pth"}, "--lirpa-checkpoint applies to --lirpa-model only"),
    ({"lirpa_model": "crown-ibp/cnn_2layer"}, {"threat_model": "L2"}, "--threat-model applies to --robustbench only"),
])
def test_an_option_of_another_model_source_is_refused_not_ignored(source, option, words):
    with pytest.raises(ValueError, match=words):
        load_model_source(**source, **option)

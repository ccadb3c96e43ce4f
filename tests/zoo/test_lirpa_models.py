"""CROWN-IBP / auto_LiRPA model definitions and checkpoint formats; certificates that match what
auto_LiRPA computes on the projects' own set-up (normalization in the data loader)."""

import importlib.util
import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import relaxplug as rp
from relaxplug.zoo import (
    LIRPA_NORMALIZATIONS,
    ZooCheckpointError,
    build_lirpa_model,
    list_lirpa_architectures,
    load_lirpa_model,
    read_lirpa_checkpoint,
)

needs_lirpa = pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is None, reason="auto_LiRPA is not installed")

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
#: non-default hyperparameters per architecture (they must be read back from the weights)
PARAMS = {
    "crown-ibp/cnn_2layer": {"width": 2, "linear_size": 64},
    "crown-ibp/cnn_3layer_fixed": {"kernel_size": 5, "width": 2, "linear_size": 32},
    "crown-ibp/cnn_4layer": {"width": 2, "linear_size": 48},
    "crown-ibp/ibp_large": {"linear_size": 16},
    "auto-lirpa/cnn_4layer": {"width": 1, "linear_size": 40},
    "auto-lirpa/cnn_6layer": {"width": 4, "linear_size": 24},
    "auto-lirpa/cnn_7layer": {"width": 4, "linear_size": 24},
    "auto-lirpa/cnn_7layer_bn": {"width": 4, "linear_size": 24},
    "auto-lirpa/mlp_2layer": {"width": 1},
    "auto-lirpa/mlp_3layer": {"width": 2},
    "auto-lirpa/mlp_5layer": {"width": 1},
}


def test_every_architecture_is_listed_with_test_parameters():
    assert sorted(PARAMS) == list_lirpa_architectures()


def _randomize_batchnorm(net: nn.Module) -> nn.Module:
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["mnist", "cifar"])
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_roundtrip_reads_hyperparameters_from_the_weights(name, shape, tmp_path):
    torch.manual_seed(0)
    net = _randomize_batchnorm(build_lirpa_model(name, shape, 7, **PARAMS[name]))
    x = torch.rand(2, *shape)
    assert net(x).shape == (2, 7)
    path = tmp_path / "model.pth"
    torch.save({"state_dict": net.state_dict(), "epoch": 12}, path)
    zoo = load_lirpa_model(name, path, shape)
    assert zoo.n_classes == 7 and zoo.input_shape == shape and not zoo.model.training
    for key, value in PARAMS[name].items():
        assert zoo.details["params"][key] == value
    assert zoo.details["epoch"] == 12 and zoo.details["normalization"] is None
    with torch.no_grad():
        assert torch.equal(zoo.model(x), net(x))


def _small_state(name="crown-ibp/cnn_2layer", shape=MNIST):
    torch.manual_seed(1)
    net = build_lirpa_model(name, shape, 10, **PARAMS[name]).eval()
    return net, net.state_dict()


@pytest.mark.parametrize("layout", ["bare", "dict", "crown-ibp list", "module prefix", "model prefix"])
def test_checkpoint_formats(layout, tmp_path):
    net, state = _small_state()
    payload = {
        "bare": state,
        "dict": {"state_dict": state, "epoch": 3, "optimizer": torch.optim.Adam(net.parameters()).state_dict()},
        # CROWN-IBP's best-model files: a list of state dicts, numpy errors beside them
        "crown-ibp list": {"state_dict": [state], "robust_err": np.float64(0.25), "clean_err": np.float64(0.125),
                           "epoch": 7},
        "module prefix": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        "model prefix": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 1},
    }[layout]
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    read, extra = read_lirpa_checkpoint(path)
    assert sorted(read) == sorted(state) and all(torch.equal(read[k], state[k]) for k in state)
    assert "optimizer" not in extra
    zoo = load_lirpa_model("crown-ibp/cnn_2layer", path, MNIST)
    if layout == "crown-ibp list":
        assert zoo.details["robust_err"] == 0.25 and zoo.details["clean_err"] == 0.125
    x = torch.rand(3, *MNIST)
    with torch.no_grad():
        assert torch.equal(zoo.model(x), net(x))


def test_convex_adversarial_mnist_net_is_cnn_2layer(tmp_path):
    """auto_LiRPA's simple_verification.py net (pretrained mnist_a_adv.pth, a bare state dict)."""
    net = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10)).eval()
    torch.save(net.state_dict(), tmp_path / "mnist_a_adv.pth")
    zoo = load_lirpa_model("crown-ibp/cnn_2layer", tmp_path / "mnist_a_adv.pth", MNIST)
    assert zoo.details["params"] == {"width": 4, "linear_size": 100}
    x = torch.rand(2, *MNIST)
    assert torch.equal(zoo.model(x), net(x))


def test_crown_ibp_drops_prev_keys_as_its_loader_does(tmp_path):
    net, state = _small_state()
    torch.save({"state_dict": [{**state, "4.prev_lower": torch.zeros(3)}]}, tmp_path / "c.pth")
    zoo = load_lirpa_model("crown-ibp/cnn_2layer", tmp_path / "c.pth", MNIST)
    x = torch.rand(2, *MNIST)
    assert torch.equal(zoo.model(x), net(x))


def test_weights_of_another_architecture_are_rejected(tmp_path):
    _, state = _small_state("crown-ibp/cnn_4layer")
    torch.save({"state_dict": state}, tmp_path / "cnn4.pth")
    with pytest.raises(ZooCheckpointError, match="another architecture"):
        load_lirpa_model("crown-ibp/cnn_2layer", tmp_path / "cnn4.pth", MNIST)
    with pytest.raises(ZooCheckpointError, match="not a auto-lirpa/cnn_4layer checkpoint"):
        load_lirpa_model("auto-lirpa/cnn_4layer", tmp_path / "cnn4.pth", MNIST)
    with pytest.raises(ZooCheckpointError, match="1-channel inputs"):
        load_lirpa_model("crown-ibp/cnn_4layer", tmp_path / "cnn4.pth", CIFAR)
    with pytest.raises(ZooCheckpointError, match="shapes differ"):  # MNIST weights, 32x32 inputs
        load_lirpa_model("crown-ibp/cnn_4layer", tmp_path / "cnn4.pth", (1, 32, 32))
    _, mlp = _small_state("auto-lirpa/mlp_5layer")
    torch.save(mlp, tmp_path / "mlp5.pth")
    with pytest.raises(ZooCheckpointError, match="more than 2 dense layers"):
        load_lirpa_model("auto-lirpa/mlp_2layer", tmp_path / "mlp5.pth", MNIST)


def test_unreadable_checkpoints_are_rejected(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ZooCheckpointError, match="expected a state dict"):
        read_lirpa_checkpoint(tmp_path / "list.pth")
    torch.save({"state_dict": []}, tmp_path / "empty.pth")
    with pytest.raises(ZooCheckpointError, match="empty list"):
        read_lirpa_checkpoint(tmp_path / "empty.pth")
    with open(tmp_path / "object.pth", "wb") as handle:  # an arbitrary pickled object: never executed
        pickle.dump({"state_dict": nn.Linear(2, 2)}, handle)
    with pytest.raises((ZooCheckpointError, RuntimeError)):
        read_lirpa_checkpoint(tmp_path / "object.pth")
    with pytest.raises(FileNotFoundError):
        read_lirpa_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="unknown"):
        build_lirpa_model("crown-ibp/cnn_9layer", MNIST)
    with pytest.raises(ValueError, match="square"):
        build_lirpa_model("crown-ibp/cnn_2layer", (1, 28, 30))


def test_normalization_inside_the_model(tmp_path):
    net, state = _small_state("crown-ibp/cnn_2layer", CIFAR)
    torch.save({"state_dict": [state]}, tmp_path / "c.pth")
    zoo = load_lirpa_model("crown-ibp/cnn_2layer", tmp_path / "c.pth", CIFAR, normalize="cifar10")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in LIRPA_NORMALIZATIONS["cifar10"])
    x = torch.rand(2, *CIFAR)
    with torch.no_grad():
        assert torch.allclose(zoo.model(x), net((x - mean) / std), atol=1e-6)
    assert zoo.details["normalization"]["std"] == list(LIRPA_NORMALIZATIONS["cifar10"][1])
    with pytest.raises(ValueError, match="for 3 input channels"):
        load_lirpa_model("crown-ibp/cnn_2layer", tmp_path / "c.pth", CIFAR, normalize=((0.5,), (0.5,)))


@needs_lirpa
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_certificate_matches_auto_lirpa_on_the_projects_set_up(method, tmp_path):
    """The projects normalize CIFAR in the loader and bound ``x_L = (x - eps - mean) / std``,
    ``x_U = (x + eps - mean) / std``; relaxplug's model carries the normalization and takes eps in
    pixels: the same ball, so the same margins."""
    from relaxplug._compat import import_auto_lirpa

    lirpa = import_auto_lirpa()
    net, state = _small_state("crown-ibp/cnn_2layer", CIFAR)
    torch.save({"state_dict": [state]}, tmp_path / "c.pth")
    zoo = load_lirpa_model("crown-ibp/cnn_2layer", tmp_path / "c.pth", CIFAR, normalize="cifar10")
    torch.manual_seed(2)
    x = torch.rand(3, *CIFAR)
    eps = 2 / 255
    cert = rp.certify(zoo.model, x, eps, "inf", method, "standard", radius=False)

    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in LIRPA_NORMALIZATIONS["cifar10"])
    z = (x - mean) / std
    bounded = lirpa.BoundedModule(net, (z[:1],))
    with torch.no_grad():
        logits = net(z)
    top = logits.argmax(1)
    others = torch.stack([torch.tensor([i for i in range(10) if i != int(t)]) for t in top])
    c = torch.zeros(3, 9, 10)
    c.scatter_(2, top[:, None, None].expand(3, 9, 1), 1.0)
    c.scatter_(2, others[..., None], -1.0)
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps - mean) / std, x_U=(x + eps - mean) / std)
    lower, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(z, ptb),), C=c, method=method.upper())
    reference = lower.min(dim=1).values
    assert cert.pred.tolist() == top.tolist()
    assert torch.allclose(cert.margin, reference, rtol=1e-3, atol=1e-4)
    assert (cert.margin <= reference + 1e-6).all()  # the rounding allowance only lowers it


@needs_lirpa
def test_cli_eval_lirpa_model_on_digits(tmp_path, capsys):
    from relaxplug.cli import main

    torch.manual_seed(0)
    net = build_lirpa_model("crown-ibp/cnn_2layer", (1, 8, 8), 10, width=2, linear_size=32)
    torch.save({"state_dict": [net.state_dict()], "epoch": 1}, tmp_path / "cnn_2layer.pth")
    code = main(["eval", "--lirpa-model", "crown-ibp/cnn_2layer", "--lirpa-checkpoint", str(tmp_path / "cnn_2layer.pth"),
                 "--data", "digits", "--certifier", "ibp", "--norm", "inf", "--eps", "0", "--guarantee", "rtk:2",
                 "--limit", "8", "--quiet", "--out", str(tmp_path / "out")])
    assert code == 0
    assert "crown-ibp crown-ibp/cnn_2layer" in capsys.readouterr().out
    record = json.loads(next((tmp_path / "out").glob("eval_*.json")).read_text())
    assert record["points"] == 8 and record["rejection_rate"] == 0.0 and record["norm"] in ("inf", float("inf"))
    code = main(["eval", "--lirpa-model", "crown-ibp/cnn_2layer", "--lirpa-checkpoint", str(tmp_path / "cnn_2layer.pth"),
                 "--data", "digits", "--eps", "0.1"])
    assert code == 0  # the default certifier, gloro, on the same net
    code = main(["eval", "--lirpa-model", "crown-ibp/cnn_4layer", "--lirpa-checkpoint", str(tmp_path / "cnn_2layer.pth"),
                 "--data", "digits", "--eps", "0.1"])
    assert code == 2 and "not a crown-ibp/cnn_4layer checkpoint" in capsys.readouterr().err


class _ViewFlatten(nn.Module):
    """Flattens with ``x.view(x.size(0), -1)``, as the projects' and RobustBench's nets do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.fc(x.view(x.size(0), -1))


@needs_lirpa
@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
def test_view_by_batch_size_is_bounded_per_point(method):
    """auto_LiRPA converts from a batch-1 example; the batch size must not be frozen into the
    reshape (relaxplug._compat.onnx_shape_inference): batched and one-by-one bounds agree."""
    from relaxplug.certifiers.lirpa import clear_cache

    clear_cache()
    torch.manual_seed(3)
    model = _ViewFlatten().eval()
    x = torch.rand(3, 1, 8, 8)
    batched = rp.certify(model, x, 0.01, "inf", method, "rtk:2", radius=False)
    single = [rp.certify(model, x[i:i + 1], 0.01, "inf", method, "rtk:2", radius=False).margin for i in range(3)]
    assert torch.allclose(batched.margin, torch.cat(single), atol=1e-5)


def test_onnx_shape_inference_is_restored():
    from relaxplug._compat import _onnx_globals, onnx_shape_inference

    before = _onnx_globals().onnx_shape_inference
    with onnx_shape_inference(not before):
        assert _onnx_globals().onnx_shape_inference is (not before)
    assert _onnx_globals().onnx_shape_inference is before

import pytest
import torch

from relaxplug.lipschitz import split_head
from relaxplug.models.architectures import build_model, list_architectures


@pytest.mark.parametrize(
    "name, shape, n",
    [("cifar_cnn", (3, 32, 32), 100), ("cifar_cnn", (3, 64, 64), 10), ("tiny_imagenet_cnn", (3, 64, 64), 200),
     ("acas_dense", (5,), 5), ("digits_cnn", (1, 8, 8), 10), ("mlp", (2,), 4)],
)
def test_architectures_build_and_end_in_linear(name, shape, n):
    model = build_model(name, shape, n)
    assert model(torch.rand(2, *shape)).shape == (2, n)
    split_head(model)


def test_cifar_architecture_matches_section_f():
    model = build_model("cifar_cnn", (3, 32, 32), 100)
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    dense = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64]
    assert [d.out_features for d in dense] == [256, 256, 100]


def test_unknown_architecture():
    assert "cifar_cnn" in list_architectures()
    with pytest.raises(ValueError, match="known"):
        build_model("resnet9000", (3, 32, 32), 10)


USER_MODULE = '''
from torch import nn
from relaxplug.models.layers import MinMax

def make_net(input_shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), MinMax(), nn.Linear(32, n_classes))

not_callable = 3

def not_a_module(input_shape, n_classes):
    return "a string"
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mypkg.models"


def test_import_path_architecture_is_called_with_shape_and_classes(user_package):
    model = build_model(f"{user_package}:make_net", (1, 8, 8), 7)
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 7)


@pytest.mark.parametrize("path, message", [
    ("mypkg.models:missing", "has no attribute 'missing'"),
    ("mypkg.models:not_callable", "'not_callable' is not callable"),
    ("mypkg.models:not_a_module", "returned str, not an nn.Module"),
    ("nopkg.models:make_net", "cannot import module 'nopkg.models'"),
    ("mypkg.models:make_net()", "is not an import path"),
    ("mypkg/models.py:make_net", "is not an import path"),
])
def test_bad_import_paths_are_named(user_package, path, message):
    with pytest.raises(ValueError, match=message):
        build_model(path, (1, 8, 8), 10)


def test_relaxplug_train_takes_an_import_path_and_reports_bad_ones_in_one_line(user_package, tmp_path, capsys):
    from relaxplug.cli import main
    from relaxplug.models.checkpoint import load_checkpoint

    config = tmp_path / "c.yaml"
    config.write_text(f"architecture: {user_package}:make_net\nguarantee: rtk:2\nepochs: 1\nlimit_train: 64\n"
                      f"batch_size: 32\ndevice: cpu\nout_dir: {tmp_path / 'run'}\n")
    assert main(["train", str(config), "--quiet"]) == 0
    loaded = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert loaded.metadata["architecture"] == "mypkg.models:make_net"
    assert main(["train", str(config), "--quiet", "--set", "architecture=mypkg.models:nothing",
                 "--set", f"out_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: architecture 'mypkg.models:nothing': module 'mypkg.models' has no attribute 'nothing'"]

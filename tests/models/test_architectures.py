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

"""Architectures by name (Leino & Fredrikson 2021, supplement F), MinMax activations throughout.

Every architecture is an ``nn.Sequential`` ending in the ``nn.Linear`` logit layer, so GloRo
can split it into body and head, and every layer has an exact auto_LiRPA-friendly form
(:func:`relaxplug.models.layers.MinMax.lirpa_form`).
"""

from __future__ import annotations

import importlib
import math
import re
from typing import Callable, Sequence

import torch
from torch import nn

from relaxplug.models.layers import InvertibleDownsample, MinMax
from relaxplug.registry import Registry

__all__ = ["ARCHITECTURES", "build_model", "list_architectures", "register_architecture"]

ARCHITECTURES: Registry[nn.Module] = Registry("architecture")


def register_architecture(name: str) -> Callable:
    """Decorator registering ``constructor(input_shape, n_classes) -> nn.Sequential``."""
    return ARCHITECTURES.register(name)


def list_architectures() -> list[str]:
    return ARCHITECTURES.names()


_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def build_model(name: str, input_shape: Sequence[int], n_classes: int) -> nn.Module:
    """Build architecture ``name`` for inputs ``input_shape`` (without batch) and ``n_classes``.

    ``name`` is a registered architecture or an import path ``package.module:function`` (the
    module importable from ``sys.path``), called as ``function(input_shape, n_classes)``.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    shape = tuple(int(s) for s in input_shape)
    if ":" in name:
        return _build_from_import_path(name, shape, int(n_classes))
    return ARCHITECTURES.create(name, shape, int(n_classes))


def _build_from_import_path(path: str, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    if not _IMPORT_PATH.match(path):
        raise ValueError(f"architecture {path!r} is not an import path 'package.module:function'")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ValueError(f"architecture {path!r}: cannot import module {module_name!r} ({error}); "
                         "is it installed or on PYTHONPATH?") from None
    constructor = module.__dict__.get(attribute)
    if constructor is None:
        raise ValueError(f"architecture {path!r}: module {module_name!r} has no attribute {attribute!r}")
    if not callable(constructor):
        raise ValueError(f"architecture {path!r}: {attribute!r} is not callable")
    model = constructor(input_shape, n_classes)
    if not isinstance(model, nn.Module):
        raise ValueError(f"architecture {path!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _need_image(name: str, input_shape: tuple[int, ...], multiple: int) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs (C, H, W) inputs, got {input_shape}")
    c, h, w = input_shape
    if h % multiple or w % multiple:
        raise ValueError(f"{name} needs H and W divisible by {multiple}, got {h}x{w}")
    return c, h, w


def _dense_stack(features: int, widths: Sequence[int], n_classes: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(features, width), MinMax()]
        features = width
    layers.append(nn.Linear(features, n_classes))
    return layers


@register_architecture("cifar_cnn")
def cifar_cnn(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """CIFAR-100 / EuroSAT net: two blocks (conv 3x3 of width 32 then 64, each followed by
    invertible downsampling), then two dense layers of width 256."""
    c, h, w = _need_image("cifar_cnn", input_shape, 4)
    layers: list[nn.Module] = [
        nn.Conv2d(c, 32, 3, padding=1), MinMax(), InvertibleDownsample(2),
        nn.Conv2d(128, 64, 3, padding=1), MinMax(), InvertibleDownsample(2),
        nn.Flatten(),
    ]
    return nn.Sequential(*layers, *_dense_stack(256 * (h // 4) * (w // 4), (256, 256), n_classes))


@register_architecture("tiny_imagenet_cnn")
def tiny_imagenet_cnn(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """Tiny-ImageNet net (Lee et al. 2020; Leino et al. 2021): blocks of three 3x3 convs and a
    strided 4x4 conv at widths 64 and 128, then a 3x3 and a strided 4x4 conv at 256, then a
    dense layer of width 256."""
    c, h, w = _need_image("tiny_imagenet_cnn", input_shape, 8)
    layers: list[nn.Module] = []
    channels = c
    for width, n_3x3 in ((64, 3), (128, 3), (256, 1)):
        for _ in range(n_3x3):
            layers += [nn.Conv2d(channels, width, 3, padding=1), MinMax()]
            channels = width
        layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), MinMax()]
    layers.append(nn.Flatten())
    return nn.Sequential(*layers, *_dense_stack(256 * (h // 8) * (w // 8), (256,), n_classes))


@register_architecture("acas_dense")
def acas_dense(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """ACAS Xu net: three dense hidden layers of 1,000 neurons."""
    return nn.Sequential(nn.Flatten(), *_dense_stack(math.prod(input_shape), (1000, 1000, 1000), n_classes))


@register_architecture("digits_cnn")
def digits_cnn(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """Small net for the embedded 8x8 digits: the CIFAR design scaled down (conv 16 and 32
    with invertible downsampling, one dense layer of 128)."""
    c, h, w = _need_image("digits_cnn", input_shape, 4)
    layers: list[nn.Module] = [
        nn.Conv2d(c, 16, 3, padding=1), MinMax(), InvertibleDownsample(2),
        nn.Conv2d(64, 32, 3, padding=1), MinMax(), InvertibleDownsample(2),
        nn.Flatten(),
    ]
    return nn.Sequential(*layers, *_dense_stack(128 * (h // 4) * (w // 4), (128,), n_classes))


@register_architecture("mlp")
def mlp(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """Dense net with two hidden layers of 128 (synthetic 2-D data, tabular inputs)."""
    return nn.Sequential(nn.Flatten(), *_dense_stack(math.prod(input_shape), (128, 128), n_classes))

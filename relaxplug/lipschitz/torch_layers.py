"""Lipschitz rules of PyTorch's own weighted layers (``nn.Linear``, ``nn.Conv2d``), by the protocol.

Bounds (:mod:`relaxplug.lipschitz.spectral`): the exact spectral norm (SVD, float64) of a dense
weight; for a convolution the FFT bound, after the exact space-to-depth rewrite of strides. A
``reflect``/``replicate``/``circular`` ``padding_mode`` pads by copying input coordinates and then
convolves without padding, so ``Lip <= sqrt(c) * ||conv_valid||`` with ``c`` the largest number
of copies of one input coordinate (counted by running the padding on coordinate indices).

Estimates: one power-iteration step per call in training mode from a persistent buffer
(:func:`~relaxplug.lipschitz.protocol.power_vector`), none in eval mode; differentiable in the weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxplug.lipschitz import spectral
from relaxplug.lipschitz.protocol import power_vector, register_lipschitz

__all__ = ["copy_count", "conv2d_bound", "linear_bound"]


def copy_count(pad: tuple[int, ...], mode: str, shape: tuple[int, ...]) -> int:
    """Largest number of copies of one coordinate made by ``F.pad(., pad, mode)`` on ``(1, *shape)``."""
    n = math.prod(shape)
    index = torch.arange(n, dtype=torch.float64).reshape(1, *shape)
    out = F.pad(index, pad, mode=mode).flatten().long()
    return int(torch.bincount(out, minlength=n).max())


def _padded(conv: nn.Conv2d, shape: tuple[int, ...]) -> tuple[float, tuple[int, int], object]:
    """``(copy gain, spatial size the convolution sees, its zero padding)``."""
    if conv.padding_mode == "zeros":
        return 1.0, (int(shape[1]), int(shape[2])), conv.padding
    pad = tuple(conv._reversed_padding_repeated_twice)
    gain = math.sqrt(copy_count(pad, conv.padding_mode, tuple(shape)))
    return gain, (int(shape[1]) + pad[2] + pad[3], int(shape[2]) + pad[0] + pad[1]), 0


def _check_shape(module: nn.Module, shape: tuple[int, ...], rank: int) -> None:
    if len(shape) != rank:
        raise ValueError(f"{type(module).__name__} bound needs a per-example input of rank {rank}, got {shape}")


def linear_bound(layer: nn.Linear, input_shape: tuple[int, ...]) -> Tensor:
    """``sigma_max(W)`` (SVD, float64, inflated by ``1 + FLOAT_ALLOWANCE``); ``x W^T`` on the last dim."""
    return torch.tensor(spectral.dense_spectral_norm(layer.weight), dtype=torch.float64)


def linear_estimate(layer: nn.Linear, input_shape: tuple[int, ...]) -> Tensor:
    u = power_vector(layer, "in", (layer.in_features,), layer.weight.detach())
    sigma, new = spectral.power_iteration_dense(layer.weight, u, 1 if layer.training else 0)
    if layer.training:
        u.copy_(new)
    return sigma


def conv2d_bound(conv: nn.Conv2d, input_shape: tuple[int, ...]) -> Tensor:
    """FFT bound of the convolution (times the copy gain of a non-zero ``padding_mode``)."""
    _check_shape(conv, input_shape, 3)
    gain, hw, padding = _padded(conv, input_shape)
    value = spectral.conv_spectral_bound(
        conv.weight, hw, stride=conv.stride, padding=padding, dilation=conv.dilation, groups=conv.groups
    )
    return torch.tensor(gain * value, dtype=torch.float64)


def conv2d_estimate(conv: nn.Conv2d, input_shape: tuple[int, ...]) -> Tensor:
    _check_shape(conv, input_shape, 3)
    gain, hw, padding = _padded(conv, input_shape)
    shape = (int(input_shape[0]), *hw)
    u = power_vector(conv, "x".join(map(str, shape)), (1, *shape), conv.weight.detach())
    sigma, new = spectral.power_iteration_conv(
        conv.weight, shape, u, 1 if conv.training else 0, conv.stride, padding, conv.dilation, conv.groups
    )
    if conv.training:
        u.copy_(new)
    return gain * sigma


register_lipschitz(nn.Linear, bound=linear_bound, estimate=linear_estimate)
register_lipschitz(nn.Conv2d, bound=conv2d_bound, estimate=conv2d_estimate)

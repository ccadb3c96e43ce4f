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

__all__ = ["copy_count", "conv2d_bound", "linear_bound", "padding_plan"]


def copy_count(pad: tuple[int, ...], mode: str, shape: tuple[int, ...]) -> int:
    """Largest number of copies of one coordinate made by ``F.pad(., pad, mode)`` on ``(1, *shape)``."""
    n = math.prod(shape)
    index = torch.arange(n, dtype=torch.float64).reshape(1, *shape)
    out = F.pad(index, pad, mode=mode).flatten().long()
    return int(torch.bincount(out, minlength=n).max())


def padding_plan(mode: str, pad: tuple[int, ...], shape: tuple[int, ...], kernel: tuple[int, ...],
                 stride: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
    """How to bound a convolution after ``F.pad(x, pad, mode)`` (``shape`` per example, ``(C, *spatial)``).

    Returns ``(gain, spatial size)``: the operator is at most ``gain`` times the norm of an
    unpadded convolution on that size. Circular padding by at most ``k_eff - 1`` in total per
    dimension with stride 1 is a cyclic shift of the circular correlation on the input's own
    grid, cropped: gain 1 on the input size (the FFT bound on that grid). Otherwise the padding
    copies coordinates: gain ``sqrt(copies)`` on the padded size.
    """
    spatial = tuple(int(v) for v in shape[1:])
    dims = len(spatial)
    before_after = [(pad[2 * (dims - 1 - i)], pad[2 * (dims - 1 - i) + 1]) for i in range(dims)]
    effective = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    if mode == "circular" and all(s == 1 for s in stride) and all(
        lo + hi <= e - 1 and e <= n for (lo, hi), e, n in zip(before_after, effective, spatial)
    ):
        return 1.0, spatial
    gain = math.sqrt(copy_count(pad, mode, tuple(shape)))
    return gain, tuple(n + lo + hi for n, (lo, hi) in zip(spatial, before_after))


def _padded(conv: nn.Conv2d, shape: tuple[int, ...]) -> tuple[float, tuple[int, int], object]:
    """``(gain, spatial size the convolution sees, its zero padding)``."""
    if conv.padding_mode == "zeros":
        return 1.0, (int(shape[1]), int(shape[2])), conv.padding
    gain, hw = padding_plan(conv.padding_mode, tuple(conv._reversed_padding_repeated_twice), tuple(shape),
                            conv.kernel_size, conv.stride, conv.dilation)
    return gain, hw, 0


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

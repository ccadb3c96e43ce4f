"""Layers of the seeds' GloRo architectures (Leino & Fredrikson 2021, section F).

Each layer has a fast form for training and an exact rewrite that bound-propagation tools
(auto_LiRPA 0.3) can bound: ``lirpa_form(input_shape)`` returns a module computing the same
function with ``relu``, ``add`` and fixed linear maps or convolutions held as buffers.

Each also implements the Lipschitz protocol (:mod:`relaxplug.lipschitz.protocol`):
``lipschitz_bound`` (sound, float64), ``lipschitz_estimate`` (training) and
``lipschitz_rounding`` (its float error, :mod:`relaxplug.lipschitz.rounding`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxplug.lipschitz import spectral
from relaxplug.lipschitz.graph import estimator_for
from relaxplug.lipschitz.protocol import power_vector
from relaxplug.lipschitz.rounding import unit_roundoff

__all__ = ["MinMax", "InvertibleDownsample", "Residual", "Normalize"]


def _isometry_bound(self: nn.Module, input_shape: tuple[int, ...]) -> Tensor:
    """Lipschitz 1: the layer permutes coordinates or sorts pairs of them."""
    return torch.ones((), dtype=torch.float64)


def _exact_rounding(self: nn.Module, input_shape: tuple[int, ...]) -> tuple[float, float]:
    """No rounding: the outputs are copies of the inputs."""
    return 0.0, 0.0


class MinMax(nn.Module):
    """MinMax activation (Anil et al. 2019): split channels into halves ``a, b`` and return
    ``[max(a, b), min(a, b)]``. A permutation of sorted pairs, so 1-Lipschitz in L2.

    Shape: ``(B, C, ...)`` with ``C`` even, to the same shape.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % 2:
            raise ValueError(f"MinMax needs an even number of channels, got {x.shape[1]}")
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)

    lipschitz_bound = lipschitz_estimate = _isometry_bound
    lipschitz_rounding = _exact_rounding

    def lirpa_form(self, input_shape: Sequence[int]) -> nn.Module:
        return _MinMaxLinearForm(input_shape)


class _MinMaxLinearForm(nn.Module):
    """``swap(x) + up(relu(diff(x)))``: ``max(a,b) = b + relu(a-b)``, ``min(a,b) = a - relu(a-b)``.

    ``diff``, ``up`` and ``swap`` are fixed linear maps (1x1 convolutions on images), stored as
    buffers of their final shape so auto_LiRPA sees plain ``linear``/``conv`` + ``relu`` + ``add``.
    """

    def __init__(self, input_shape: Sequence[int]):
        super().__init__()
        channels = int(input_shape[0])
        if channels % 2:
            raise ValueError(f"MinMax needs an even number of channels, got {channels}")
        half = channels // 2
        eye = torch.eye(half)
        zero = torch.zeros(half, half)
        diff = torch.cat([eye, -eye], dim=1)  # (half, C): a - b
        up = torch.cat([eye, -eye], dim=0)  # (C, half): [z; -z]
        swap = torch.cat([torch.cat([zero, eye], 1), torch.cat([eye, zero], 1)], 0)  # (C, C)
        self.spatial = len(input_shape) == 3
        if self.spatial:
            diff, up, swap = (m[:, :, None, None] for m in (diff, up, swap))
        elif len(input_shape) != 1:
            raise ValueError(f"MinMax supports (C,) or (C, H, W) inputs, got {tuple(input_shape)}")
        self.register_buffer("diff", diff.contiguous())
        self.register_buffer("up", up.contiguous())
        self.register_buffer("swap", swap.contiguous())

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial:
            return F.conv2d(x, self.swap) + F.conv2d(F.relu(F.conv2d(x, self.diff)), self.up)
        return F.linear(x, self.swap) + F.linear(F.relu(F.linear(x, self.diff)), self.up)


class InvertibleDownsample(nn.Module):
    """Invertible downsampling (space-to-depth, Anil et al. 2019): ``(C, H, W) -> (C*s*s, H/s, W/s)``.

    A permutation of the coordinates, so it preserves the L2 norm (Lipschitz constant 1).
    """

    def __init__(self, scale: int = 2):
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_unshuffle(x, self.scale)

    lipschitz_bound = lipschitz_estimate = _isometry_bound
    lipschitz_rounding = _exact_rounding

    def lirpa_form(self, input_shape: Sequence[int]) -> nn.Module:
        return _DownsampleConvForm(int(input_shape[0]), self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class _DownsampleConvForm(nn.Module):
    """Space-to-depth as a fixed one-hot ``s x s`` stride-``s`` convolution (same channel order
    as ``pixel_unshuffle``: output channel ``c*s*s + a*s + b`` takes pixel offset ``(a, b)``)."""

    def __init__(self, channels: int, scale: int):
        super().__init__()
        s = scale
        weight = torch.zeros(channels * s * s, channels, s, s)
        for c in range(channels):
            for a in range(s):
                for b in range(s):
                    weight[c * s * s + a * s + b, c, a, b] = 1.0
        self.scale = s
        self.register_buffer("weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, stride=self.scale)


class Residual(nn.Module):
    """``x + block(x)``.

    Lipschitz bound: when ``block`` is one ``nn.Linear`` or stride-1 "same" zero-padded
    ``nn.Conv2d`` with as many outputs as inputs (LiResNet's ``x + conv(x)``), the block is one
    linear operator ``I + W`` and is bounded as that operator (the identity added to the kernel
    centre, then the FFT bound of :mod:`relaxplug.lipschitz.spectral`), which can be far below
    ``1 + ||W||``. Otherwise ``1 + L(block)``, with ``L(block)`` from the Lipschitz engine.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)

    def _operator(self, weight: Tensor) -> Tensor | None:
        """``I + W`` as one weight (differentiable in ``weight``), or ``None`` when the block is not one operator."""
        block = self.block
        if type(block) is nn.Linear and block.in_features == block.out_features:
            return weight + torch.eye(block.in_features, dtype=weight.dtype, device=weight.device)
        if type(block) is nn.Conv2d and _same_shape_conv(block):
            k1, k2 = block.kernel_size
            eye = torch.zeros_like(weight)
            index = torch.arange(block.in_channels, device=weight.device)
            eye[index, index, k1 // 2, k2 // 2] = 1.0
            return weight + eye
        return None

    def lipschitz_bound(self, input_shape: tuple[int, ...]) -> Tensor:
        operator = self._operator(self.block.weight.detach()) if hasattr(self.block, "weight") else None
        if operator is None:
            return 1.0 + torch.tensor(estimator_for(self.block, input_shape).total(), dtype=torch.float64)
        if operator.dim() == 2:
            return torch.tensor(spectral.dense_spectral_norm(operator), dtype=torch.float64)
        value = spectral.conv_spectral_bound(operator, tuple(input_shape[1:]), padding=self.block.padding)
        return torch.tensor(value, dtype=torch.float64)

    def lipschitz_estimate(self, input_shape: tuple[int, ...]) -> Tensor:
        operator = self._operator(self.block.weight) if hasattr(self.block, "weight") else None
        if operator is None:
            return 1.0 + estimator_for(self.block, input_shape).estimate(whole=True)
        shape = tuple(int(v) for v in input_shape)
        n_iter = 1 if self.training else 0
        if operator.dim() == 2:
            u = power_vector(self, "in", (operator.shape[1],), operator.detach())
            sigma, new = spectral.power_iteration_dense(operator, u, n_iter)
        else:
            u = power_vector(self, "x".join(map(str, shape)), (1, *shape), operator.detach())
            sigma, new = spectral.power_iteration_conv(operator, shape, u, n_iter, padding=self.block.padding)
        if self.training:
            u.copy_(new)
        return sigma

    def lipschitz_rounding(self, input_shape: tuple[int, ...]) -> tuple[float, float]:
        """``(c0, c1)`` with float error ``<= c0 + c1 ||x||`` (:mod:`relaxplug.lipschitz.rounding`)."""
        block = self.block
        estimator = estimator_for(block, input_shape)
        lip = estimator.total()
        ref = next(iter(block.parameters()), None)
        u, _ = unit_roundoff(ref.dtype if ref is not None else torch.float32, ref.device if ref is not None else "cpu")
        inner = estimator.forward_error()
        out0 = estimator.output_norm_at_zero()
        # block error E, then the addition fl(x + y~): u (||x|| + ||y~||) with the computed block output
        # ||y~|| <= ||y~(0)|| + E(0) (exact at 0) + lip ||x|| + E(||x||)
        e0, e1 = inner.e0, inner.e1
        return e0 + u * (out0 + 2 * e0), e1 + u * (1 + lip + e1)


def _same_shape_conv(conv: nn.Conv2d) -> bool:
    k1, k2 = conv.kernel_size
    same = conv.padding == "same" or tuple(conv.padding) == (k1 // 2, k2 // 2)
    return (
        conv.in_channels == conv.out_channels and conv.groups == 1 and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1) and conv.padding_mode == "zeros" and k1 % 2 == 1 and k2 % 2 == 1 and same
    )


class Normalize(nn.Module):
    """Per-channel input normalization ``(x - mean) / std``; Lipschitz constant ``max(1/std)``.

    Keeping normalization inside the model means ``eps`` is measured in the raw input space.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32)
        if mean_t.shape != std_t.shape or mean_t.ndim != 1:
            raise ValueError("mean and std must be 1-D sequences of the same length")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def _view(self, t: Tensor, x: Tensor) -> Tensor:
        return t.view(1, -1, *([1] * (x.ndim - 2)))

    def _checked_std(self) -> Tensor:
        """``std``, checked where it is used (it may have been loaded after ``__init__``)."""
        std = self.std
        if not bool((std > 0).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError(f"Normalize std must be positive and finite, got {std.tolist()}")
        return std

    def forward(self, x: Tensor) -> Tensor:
        return (x - self._view(self.mean, x)) / self._view(self._checked_std(), x)

    def lipschitz_bound(self, input_shape: tuple[int, ...]) -> Tensor:
        """``max_c 1 / std_c``: a per-channel scaling (float64, rounded up)."""
        std = self._checked_std().detach().to(torch.float64)
        return (1.0 / std).max() * (1.0 + spectral.FLOAT_ALLOWANCE)

    def lipschitz_estimate(self, input_shape: tuple[int, ...]) -> Tensor:
        return (1.0 / self._checked_std()).max()

    def lipschitz_rounding(self, input_shape: tuple[int, ...]) -> tuple[float, float]:
        """A subtraction and a division, each within half an ulp: ``<= 2u (|x| + |mean|) / std`` per coordinate."""
        u, _ = unit_roundoff(self.std.dtype, self.std.device)
        inv = float(self.lipschitz_bound(input_shape))
        spatial = math.prod(input_shape[1:]) if len(input_shape) > 1 else 1
        mean = float(self.mean.detach().to(torch.float64).norm()) * math.sqrt(spatial)
        return 2.5 * u * inv * mean, 2.5 * u * inv

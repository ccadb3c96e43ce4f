"""Layers of the seeds' GloRo architectures (Leino & Fredrikson 2021, section F).

Each layer has a fast form for training and an exact rewrite that bound-propagation tools
(auto_LiRPA 0.3) can bound: ``lirpa_form(input_shape)`` returns a module computing the same
function with ``relu``, ``add`` and fixed linear maps or convolutions held as buffers.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MinMax", "InvertibleDownsample", "Residual", "Normalize"]


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
    """``x + block(x)``; Lipschitz constant at most ``1 + L(block)``."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


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

    def forward(self, x: Tensor) -> Tensor:
        return (x - self._view(self.mean, x)) / self._view(self.std, x)

"""LiResNet (Hu et al., NeurIPS 2023; "A Recipe for Improved Certifiable Robustness", 2024) and
a BRO network (Lai et al., ICML 2025), as ``nn.Sequential`` layer stacks ending in the logit
``nn.Linear`` that GloRo splits off.

LiResNet: a strided convolution stem, ``depth`` linear residual blocks ``x -> MinMax(x + conv(x))``
of one ``width``, a neck (a Cholesky-orthogonalized ``4 x 4`` stride-4 convolution, a
Cholesky-orthogonalized dense layer to ``neck_features``, then ``mlp_depth`` residual
Cholesky-orthogonalized dense layers), and a head with last-layer normalization (its rows
scaled to unit norm). The residual block is bounded as **one** operator: ``x + conv(x)`` is the
convolution whose kernel has the identity added at its centre tap, and its FFT bound is taken on
that kernel (much tighter than ``1 + ||conv||``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from relaxplug.lipschitz import spectral
from relaxplug.lipschitz.protocol import power_vector
from relaxplug.models.architectures import register_architecture
from relaxplug.models.layers import InvertibleDownsample, MinMax
from relaxplug.models.orthogonal import BROConv2d, BROLinear, CholeskyLinear, CholeskyPatchConv2d, affine_rounding

__all__ = ["LiResConv2d", "RowNormalize", "normalize_rows", "build_liresnet", "build_bronet"]


class LiResConv2d(nn.Module):
    """Linear residual convolution ``x + conv(x, gamma * V / sqrt(depth)) + b`` (stride 1,
    ``k x k``, zero padding ``k // 2``), computed as one convolution with kernel
    ``I_centre + gamma * V / sqrt(depth)``.

    ``lipschitz_bound`` is the sound FFT bound of that one kernel
    (:func:`relaxplug.lipschitz.spectral.conv_spectral_bound`); ``lipschitz_estimate`` runs
    ``power_iterations`` power iterations (in training mode; none in eval mode) from a persistent
    buffer (:func:`~relaxplug.lipschitz.protocol.power_vector`): from below, differentiable.

    Shape: ``(B, width, H, W) -> (B, width, H, W)``.
    """

    def __init__(self, width: int, depth: int = 1, kernel_size: int = 3, power_iterations: int = 1):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"LiResConv2d needs an odd kernel_size, got {kernel_size}")
        self.width, self.kernel_size, self.power_iterations = width, kernel_size, power_iterations
        self.raw = nn.Parameter(torch.randn(width, width, kernel_size, kernel_size) / (width * kernel_size ** 2))
        self.gamma = nn.Parameter(torch.ones(width, 1, 1, 1))
        self.bias = nn.Parameter(torch.zeros(width))
        identity = torch.zeros(width, width, kernel_size, kernel_size)
        identity[:, :, kernel_size // 2, kernel_size // 2] = torch.eye(width)
        self.register_buffer("identity", identity, persistent=False)
        self.scale = depth ** -0.5

    def kernel(self) -> Tensor:
        """The one kernel the forward pass applies (identity at the centre tap included)."""
        return self.identity + self.gamma * self.raw * self.scale

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel(), self.bias, padding=self.kernel_size // 2)

    def lipschitz_bound(self, input_shape: Sequence[int]) -> Tensor:
        value = spectral.conv_spectral_bound(self.kernel().detach(), tuple(input_shape[1:]), padding=self.kernel_size // 2)
        return torch.tensor(value, dtype=torch.float64, device=self.raw.device)

    def lipschitz_estimate(self, input_shape: Sequence[int]) -> Tensor:
        shape = tuple(int(s) for s in input_shape)
        kernel = self.kernel()
        u = power_vector(self, "x".join(map(str, shape)), (1, *shape), kernel.detach())
        steps = self.power_iterations if self.training else 0
        sigma, new = spectral.power_iteration_conv(kernel, shape, u, steps, padding=self.kernel_size // 2)
        if self.training:
            u.copy_(new)
        return sigma

    def lipschitz_rounding(self, input_shape: Sequence[int]) -> tuple[float, float]:
        """``(c0, c1)`` of one convolution with bias (:func:`~relaxplug.models.orthogonal.affine_rounding`)."""
        positions = int(input_shape[1]) * int(input_shape[2])
        with torch.no_grad():
            return affine_rounding(self.kernel(), self.bias, positions)

    def extra_repr(self) -> str:
        return f"width={self.width}, kernel_size={self.kernel_size}"


class RowNormalize(nn.Module):
    """Parametrization ``W -> W / ||W_row||``: last-layer normalization as a parametrization of
    ``nn.Linear``'s ``weight``, so the forward pass *and* every reader of ``head.weight`` (GloRo's
    ``||w_j - w_i||``) see the same normalized rows."""

    def forward(self, weight: Tensor) -> Tensor:
        return weight / weight.norm(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)


def normalize_rows(head: nn.Linear) -> nn.Linear:
    """Register :class:`RowNormalize` on ``head.weight`` (in place); returns ``head``."""
    parametrize.register_parametrization(head, "weight", RowNormalize())
    return head


def _image(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs (C, H, W) inputs, got {tuple(input_shape)}")
    return tuple(int(s) for s in input_shape)  # type: ignore[return-value]


def build_liresnet(
    input_shape: Sequence[int],
    n_classes: int,
    *,
    depth: int = 12,
    width: int = 512,
    stem_kernel: int = 5,
    stem_stride: int = 2,
    neck_patch: int = 4,
    neck_features: int = 2048,
    mlp_depth: int = 8,
    last_layer_normalization: bool = True,
) -> nn.Sequential:
    """LiResNet (module docstring). Defaults: the Recipe's CIFAR model (depth 12, width 512).

    Spatial sizes: the stem maps ``H`` to ``ceil(H / stem_stride)``, which must be a multiple of
    ``neck_patch``.
    """
    c, h, w = _image("liresnet", input_shape)
    if width % 2:
        raise ValueError(f"MinMax needs an even width, got {width}")
    fh, fw = -(-h // stem_stride), -(-w // stem_stride)
    if fh % neck_patch or fw % neck_patch:
        raise ValueError(
            f"liresnet: the stem output {fh}x{fw} must be divisible by neck_patch={neck_patch}"
        )
    layers: list[nn.Module] = [nn.Conv2d(c, width, stem_kernel, stride=stem_stride, padding=stem_kernel // 2), MinMax()]
    for _ in range(depth):
        layers += [LiResConv2d(width, depth), MinMax()]
    neck_in = width * (fh // neck_patch) * (fw // neck_patch)
    layers += [CholeskyPatchConv2d(width, width, neck_patch), nn.Flatten(), CholeskyLinear(neck_in, neck_features), MinMax()]
    for _ in range(mlp_depth):
        layers += [CholeskyLinear(neck_features, neck_features, residual=True, depth=mlp_depth), MinMax()]
    head = nn.Linear(neck_features, n_classes)
    layers.append(normalize_rows(head) if last_layer_normalization else head)
    return nn.Sequential(*layers)


def build_bronet(
    input_shape: Sequence[int],
    n_classes: int,
    *,
    depth: int = 6,
    width: int = 64,
    rank: int | None = None,
    stem_stride: int = 2,
    neck_features: int = 256,
    mlp_depth: int = 2,
) -> nn.Sequential:
    """A BRO network: a strided stem convolution, ``depth`` BRO convolutions with MinMax, an
    invertible downsampling, BRO dense layers and a row-normalized head."""
    c, h, w = _image("bronet", input_shape)
    if width % 2 or neck_features % 2:
        raise ValueError("MinMax needs even widths")
    fh, fw = -(-h // stem_stride), -(-w // stem_stride)
    if fh % 2 or fw % 2:
        raise ValueError(f"bronet: the stem output {fh}x{fw} must be even (2x2 downsampling)")
    layers: list[nn.Module] = [nn.Conv2d(c, width, 3, stride=stem_stride, padding=1), MinMax()]
    for _ in range(depth):
        layers += [BROConv2d(width, width, rank), MinMax()]
    features = width * 4 * (fh // 2) * (fw // 2)
    layers += [InvertibleDownsample(2), nn.Flatten(), BROLinear(features, neck_features, rank=neck_features // 2), MinMax()]
    for _ in range(mlp_depth):
        layers += [BROLinear(neck_features, neck_features), MinMax()]
    layers.append(normalize_rows(nn.Linear(neck_features, n_classes)))
    return nn.Sequential(*layers)


@register_architecture("liresnet")
def liresnet(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """The Recipe's LiResNet: depth 12, width 512, neck 2048, 8 dense residual layers."""
    return build_liresnet(input_shape, n_classes)


@register_architecture("liresnet_w128")
def liresnet_w128(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """LiResNet of depth 12 and width 128 (the NeurIPS 2023 paper's smaller CIFAR model)."""
    return build_liresnet(input_shape, n_classes, width=128)


@register_architecture("liresnet_digits")
def liresnet_digits(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """LiResNet scaled to the embedded 8x8 digits: depth 4, width 32 at 8x8 (a stride-1 stem: the
    FFT bound of a strided stem and of 4x4 maps is several percent looser), neck 128, two dense
    residual layers; 105k parameters (``digits_cnn``: 86k)."""
    return build_liresnet(
        input_shape, n_classes, depth=4, width=32, stem_kernel=3, stem_stride=1, neck_features=128, mlp_depth=2
    )


@register_architecture("bronet_digits")
def bronet_digits(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """BRO network scaled to the embedded 8x8 digits."""
    return build_bronet(input_shape, n_classes, depth=3, width=32, neck_features=128, mlp_depth=1)

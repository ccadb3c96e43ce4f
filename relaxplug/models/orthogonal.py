"""Orthogonal layers of the state-of-the-art Lipschitz networks.

* **Cholesky orthogonalization** (Hu et al. 2024, "A Recipe for Improved Certifiable
  Robustness"): for ``V`` of shape ``(m, n)``, ``W = L^{-1} V`` with ``L L^T = V V^T + delta I``
  (``delta = rel_eps * mean(diag(V V^T))``). With ``V = U S Q^T``,
  ``W W^T = (VV^T + delta)^{-1/2}``-similar and the singular values of ``W`` are
  ``s / sqrt(s^2 + delta) < 1``: rows orthonormal up to ``delta`` for wide ``V``.
  :class:`CholeskyLinear` and the non-overlapping patch convolution :class:`CholeskyPatchConv2d`
  (the LiResNet neck) use it.
* **Block reflector** (BRO; Lai et al., ICML 2025): for ``V`` of shape ``(c, r)``, ``r < c``,
  ``W = I - 2 V (V^* V + delta I)^{-1} V^*``. On the range of ``V`` the eigenvalues are
  ``1 - 2 s^2 / (s^2 + delta)`` in ``(-1, 1]``, elsewhere 1: ``W`` is (up to ``delta``) a
  unitary reflection. :class:`BROLinear` applies it to a dense layer; :class:`BROConv2d` builds
  one per 2-D frequency from the FFT of a ``k x k`` kernel on the zero-padded grid
  ``N = H + 2 (k // 2)`` and computes ``y = crop(Re(ifft2(W(w) fft2(pad(x)))))``. With unitary
  (``norm="ortho"``) FFTs, ``pad`` (isometric embedding), ``Re`` (norm 1 as a real-linear map)
  and ``crop`` (a projection), the real operator has norm at most ``max_w sigma_max(W(w))``.

Every layer implements the Lipschitz protocol of :mod:`relaxplug.lipschitz`:
``lipschitz_bound(input_shape)`` is the sound float64 bound of the operator the forward pass
applies (SVDs of the very matrices the forward uses, inflated by
:data:`~relaxplug.lipschitz.spectral.FLOAT_ALLOWANCE`); ``lipschitz_estimate(input_shape)`` is 1,
the value these layers are built to have (the papers train with it).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxplug.lipschitz import spectral
from relaxplug.lipschitz.rounding import dot_gamma, unit_roundoff

__all__ = [
    "DerivedWeight",
    "affine_rounding",
    "cholesky_orthogonalize",
    "block_reflector",
    "CholeskyLinear",
    "CholeskyPatchConv2d",
    "BROLinear",
    "BROConv2d",
]

#: ``delta / mean(diag(V V^T))`` of the Cholesky orthogonalization (the Recipe's neck uses 1e-3)
CHOLESKY_REL_EPS = 1e-3
#: ``delta / mean(diag(V^* V))`` of the block reflector
BRO_REL_EPS = 1e-5
#: assumed relative L2 error of a unitary FFT of N points, in units of ``u * log2(N)``
FFT_ULPS = 8.0


def cholesky_orthogonalize(v: Tensor, rel_eps: float = CHOLESKY_REL_EPS) -> Tensor:
    """``W = L^{-1} V`` with ``L L^T = V V^T + delta I`` (module docstring). ``(m, n) -> (m, n)``."""
    if v.dim() != 2:
        raise ValueError(f"cholesky_orthogonalize needs a matrix, got shape {tuple(v.shape)}")
    gram = v @ v.T
    delta = gram.diagonal().mean().detach() * rel_eps
    gram = gram + delta * torch.eye(gram.shape[0], dtype=v.dtype, device=v.device)
    lower = torch.linalg.cholesky(gram)
    return torch.linalg.solve_triangular(lower, v, upper=False)


def block_reflector(v: Tensor, rel_eps: float = BRO_REL_EPS) -> Tensor:
    """``I - 2 V (V^* V + delta I)^{-1} V^*`` for ``V`` of shape ``(..., c, r)``, ``r < c``.

    Batched over leading dimensions (frequencies); real or complex. ``delta`` is per matrix.
    """
    c, r = v.shape[-2], v.shape[-1]
    if r >= c:
        raise ValueError(f"a block reflector needs rank r < c, got V of shape {tuple(v.shape)}")
    vh = v.transpose(-2, -1).conj()
    gram = vh @ v  # (..., r, r)
    delta = gram.diagonal(dim1=-2, dim2=-1).real.mean(-1).detach() * rel_eps  # (...)
    eye_r = torch.eye(r, dtype=v.dtype, device=v.device)
    gram = gram + delta[..., None, None] * eye_r
    eye_c = torch.eye(c, dtype=v.dtype, device=v.device)
    return eye_c - 2 * v @ torch.linalg.solve(gram, vh)


def affine_rounding(weight: Tensor, bias: Tensor | None, positions: int = 1) -> tuple[float, float]:
    """``(c0, c1)``: the float error of ``W x + b`` is at most ``c0 + c1 ||x||``
    (:mod:`relaxplug.lipschitz.rounding`), for a dense ``(out, n)`` weight or a stride-1
    convolution kernel ``(out, in, kh, kw)`` applied at ``positions`` output pixels.

    Each output is a dot product of length ``n`` plus a bias: its error is at most
    ``gamma_{n+1} (|W| |x| + |b|)`` entrywise (any summation order), so in norm
    ``gamma (|| |W| || ||x|| + sqrt(positions) ||b||)``, with ``|| |W| ||`` bounded by Schur's
    test ``sqrt(max row sum * max column sum)`` (no SVD; for a convolution a row sums ``|W[o]|``
    over all taps, and as an input coordinate meets each tap at most once per output channel, a
    column sums ``|W[:, c]|`` over all taps).
    """
    w = weight.detach().to(torch.float64).abs()
    u, u_in = unit_roundoff(weight.dtype, weight.device)
    gamma = dot_gamma(int(w[0].numel()) + 1, u, u_in)
    if w.dim() == 4:
        abs_norm = math.sqrt(float(w.sum((1, 2, 3)).max()) * float(w.sum((0, 2, 3)).max()))
    elif w.dim() == 2:
        abs_norm = math.sqrt(float(w.sum(1).max()) * float(w.sum(0).max()))
    else:
        raise ValueError(f"affine_rounding takes a dense or conv2d weight, got shape {tuple(weight.shape)}")
    abs_norm *= 1.0 + spectral.FLOAT_ALLOWANCE
    b = 0.0 if bias is None else float(bias.detach().to(torch.float64).norm()) * math.sqrt(positions)
    return gamma * b, gamma * abs_norm


class DerivedWeight:
    """The weight a layer derives from its parameters (an orthogonalization: ``O(n^3)``), cached
    for evaluation.

    In training mode with gradients enabled it is recomputed on every call (differentiable).
    Otherwise (eval mode, or under ``torch.no_grad``) the detached value is reused while every
    source tensor has exactly the value (and dtype, device, shape) it had when it was computed,
    and recomputed otherwise. The forward pass and the Lipschitz bound read the same cached
    matrix, so a certificate is always about the weight the forward pass applies.
    """

    def __init__(self) -> None:
        self.sources: tuple[Tensor, ...] | None = None
        self.value: Tensor | None = None

    def get(self, training: bool, sources: tuple[Tensor, ...], compute: Callable[[], Tensor]) -> Tensor:
        if training and torch.is_grad_enabled():
            return compute()
        if self.sources is None or not all(_same(a, b) for a, b in zip(self.sources, sources)):
            with torch.no_grad():
                self.value = compute().detach()
            self.sources = tuple(t.detach().clone() for t in sources)
        return self.value


def _same(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.device == b.device and torch.equal(a, b)


def _bound_tensor(value: float, ref: Tensor) -> Tensor:
    return torch.tensor(value, dtype=torch.float64, device=ref.device)


def _one(ref: Tensor) -> Tensor:
    return torch.ones((), dtype=ref.dtype, device=ref.device)


class _OrthogonalDense(nn.Module):
    """A dense layer ``W x + b`` whose ``W`` (``weight()``, from the trainable ``raw``) is
    orthogonal by construction: the forward pass and the Lipschitz protocol shared by
    :class:`CholeskyLinear` and :class:`BROLinear`."""

    raw: nn.Parameter
    bias: nn.Parameter | None

    def weight(self) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight(), self.bias)

    def lipschitz_bound(self, input_shape: Sequence[int]) -> Tensor:
        """Sound: ``(1 + FLOAT_ALLOWANCE) * sigma_max(W)`` by a float64 SVD of the weight the
        forward pass uses (orthogonality is not assumed)."""
        with torch.no_grad():
            w = self.weight()
        return _bound_tensor(spectral.dense_spectral_norm(w), w)

    def lipschitz_estimate(self, input_shape: Sequence[int]) -> Tensor:
        return _one(self.raw)

    def lipschitz_rounding(self, input_shape: Sequence[int]) -> tuple[float, float]:
        with torch.no_grad():
            return affine_rounding(self.weight(), self.bias)


class CholeskyLinear(_OrthogonalDense):
    """Dense layer ``x -> W x + b`` with ``W = cholesky_orthogonalize(V)``.

    With ``residual=True`` (square only) ``V = I + gamma * V0 / sqrt(depth)`` (the Recipe's
    LiResMLP layer: a quasi-residual start near the identity, per-row gains ``gamma``).

    Shape: ``(B, in_features) -> (B, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, *, residual: bool = False, depth: int = 1, bias: bool = True):
        super().__init__()
        if residual and in_features != out_features:
            raise ValueError(f"a residual CholeskyLinear is square, got {in_features} -> {out_features}")
        self.in_features, self.out_features, self.residual = in_features, out_features, residual
        if residual:
            self.raw = nn.Parameter(torch.randn(out_features, in_features) / in_features)
            self.gamma = nn.Parameter(torch.ones(out_features, 1))
            self.scale = depth ** -0.5
        else:
            self.raw = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._derived = DerivedWeight()

    def weight(self) -> Tensor:
        """The orthogonalized ``(out, in)`` matrix the forward pass applies (:class:`DerivedWeight`)."""
        sources = (self.raw, self.gamma) if self.residual else (self.raw,)
        return self._derived.get(self.training, sources, self._orthogonalize)

    def _orthogonalize(self) -> Tensor:
        if not self.residual:
            return cholesky_orthogonalize(self.raw)
        v = self.gamma * self.raw * self.scale
        v.diagonal().add_(1.0)  # I + gamma V0 / sqrt(depth), without an identity buffer to store and compare
        return cholesky_orthogonalize(v)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, residual={self.residual}"


class CholeskyPatchConv2d(nn.Module):
    """Non-overlapping ``p x p`` stride-``p`` convolution whose ``(out, in * p * p)`` kernel matrix
    is Cholesky-orthogonalized (the LiResNet neck's ``4 x 4`` convolution).

    Each output pixel is the matrix times one disjoint input patch, so the operator is
    block-diagonal with that block: its norm is exactly ``sigma_max`` of the matrix (pixels
    beyond the last full patch are dropped: a projection).

    Shape: ``(B, in, H, W) -> (B, out, H // p, W // p)``.
    """

    def __init__(self, in_channels: int, out_channels: int, patch: int = 4, bias: bool = True):
        super().__init__()
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        self.in_channels, self.out_channels, self.patch = in_channels, out_channels, patch
        fan_in = in_channels * patch * patch
        self.raw = nn.Parameter(torch.randn(out_channels, fan_in) / math.sqrt(fan_in))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._derived = DerivedWeight()

    def matrix(self) -> Tensor:
        """The orthogonalized ``(out, in * p * p)`` matrix (:class:`DerivedWeight`)."""
        return self._derived.get(self.training, (self.raw,), lambda: cholesky_orthogonalize(self.raw))

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch
        if x.shape[-1] < p or x.shape[-2] < p:
            raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than the {p}x{p} patch")
        kernel = self.matrix().reshape(self.out_channels, self.in_channels, p, p)
        return F.conv2d(x, kernel, self.bias, stride=p)

    def lipschitz_bound(self, input_shape: Sequence[int]) -> Tensor:
        with torch.no_grad():
            w = self.matrix()
        return _bound_tensor(spectral.dense_spectral_norm(w), w)

    def lipschitz_estimate(self, input_shape: Sequence[int]) -> Tensor:
        return _one(self.raw)

    def lipschitz_rounding(self, input_shape: Sequence[int]) -> tuple[float, float]:
        # one dense product per disjoint patch: the dense bound, the bias repeated per output pixel
        positions = (int(input_shape[1]) // self.patch) * (int(input_shape[2]) // self.patch)
        with torch.no_grad():
            c0, c1 = affine_rounding(self.matrix(), self.bias)
        return c0 * math.sqrt(positions), c1

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, patch={self.patch}"


class BROLinear(_OrthogonalDense):
    """Dense BRO layer ``x -> W[:out, :in] x + b`` with ``W = block_reflector(V)``, ``V`` of shape
    ``(max(in, out), rank)`` (a slice of a unitary matrix has norm <= 1).

    Shape: ``(B, in_features) -> (B, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, rank: int | None = None, bias: bool = True):
        super().__init__()
        width = max(in_features, out_features)
        rank = width // 2 if rank is None else rank
        if not 1 <= rank < width:
            raise ValueError(f"BRO rank must be in [1, {width}), got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.raw = nn.Parameter(torch.randn(width, rank) / math.sqrt(width))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._derived = DerivedWeight()

    def weight(self) -> Tensor:
        """The ``(out, in)`` slice of the reflector (:class:`DerivedWeight`)."""
        return self._derived.get(
            self.training, (self.raw,), lambda: block_reflector(self.raw)[: self.out_features, : self.in_features]
        )

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, rank={self.rank}"


class BROConv2d(nn.Module):
    """BRO convolution (module docstring): one block reflector per frequency of the zero-padded
    grid, sliced to ``(out_channels, in_channels)``; stride 1, output size = input size.

    Args:
        in_channels, out_channels: channel counts; the reflectors are ``max`` of the two wide.
        rank: columns of ``V`` (default half the width), ``1 <= rank < width``.
        kernel_size: odd size ``k`` of the parameter kernel ``V`` (padding ``k // 2``).

    Shape: ``(B, in, H, W) -> (B, out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, rank: int | None = None, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        width = max(in_channels, out_channels)
        rank = width // 2 if rank is None else rank
        if not 1 <= rank < width:
            raise ValueError(f"BRO rank must be in [1, {width}), got {rank}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"BRO kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels, self.rank, self.kernel_size = in_channels, out_channels, rank, kernel_size
        raw = torch.randn(width, rank, kernel_size, kernel_size) / math.sqrt(width * kernel_size ** 2)
        raw[:rank, :rank, kernel_size // 2, kernel_size // 2] += torch.eye(rank)
        self.raw = nn.Parameter(raw)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._derived: dict[tuple[int, int], DerivedWeight] = {}

    def symbols(self, grid: tuple[int, int]) -> Tensor:
        """``(N1, N2, out, in)`` complex matrices ``W(w)`` the forward pass applies on ``grid``
        (:class:`DerivedWeight`, one per grid)."""

        def compute() -> Tensor:
            v_hat = torch.fft.fft2(self.raw, s=grid).permute(2, 3, 0, 1)  # (N1, N2, width, rank)
            return block_reflector(v_hat)[..., : self.out_channels, : self.in_channels]

        return self._derived.setdefault(tuple(grid), DerivedWeight()).get(self.training, (self.raw,), compute)

    def _grid(self, hw: Sequence[int]) -> tuple[int, int]:
        pad = self.kernel_size // 2
        return (int(hw[0]) + 2 * pad, int(hw[1]) + 2 * pad)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"BROConv2d expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        pad = self.kernel_size // 2
        h, w = x.shape[-2:]
        grid = self._grid((h, w))
        x_hat = torch.fft.fft2(F.pad(x, (pad, pad, pad, pad)), norm="ortho")  # (B, in, N1, N2)
        symbols = self.symbols(grid)  # (N1, N2, out, in)
        y_hat = torch.einsum("hwoi,bihw->bohw", symbols, x_hat)
        y = torch.fft.ifft2(y_hat, norm="ortho").real[..., pad : pad + h, pad : pad + w]
        if self.bias is not None:
            y = y + self.bias[:, None, None]
        return y

    def lipschitz_bound(self, input_shape: Sequence[int]) -> Tensor:
        """Sound: ``(1 + FLOAT_ALLOWANCE) * max_w sigma_max(W(w))`` over the grid, in float64
        (:func:`~relaxplug.lipschitz.spectral.max_singular_value`)."""
        if len(input_shape) != 3:
            raise ValueError(f"BROConv2d takes (C, H, W) inputs, got {tuple(input_shape)}")
        with torch.no_grad():
            sigma = spectral.max_singular_value(self.symbols(self._grid(input_shape[1:])))
        return _bound_tensor(sigma * (1.0 + spectral.FLOAT_ALLOWANCE), self.raw)

    def lipschitz_estimate(self, input_shape: Sequence[int]) -> Tensor:
        return _one(self.raw)

    def lipschitz_rounding(self, input_shape: Sequence[int]) -> tuple[float, float]:
        """``(c0, c1)`` of the FFT pipeline, under the assumption (docs/sota.md) that a unitary FFT of
        ``N`` points has relative L2 error at most ``FFT_ULPS * u * log2(N)`` (Higham, Accuracy and
        Stability, Thm 24.2, gives ``~ (mu + sqrt(2) gamma_4) log2 N`` for radix 2; FFT_ULPS = 8
        leaves a margin for mixed radices). Pipeline: FFT (relative ``e_f``), per-frequency complex
        products of length ``in`` (``gamma_{2 in + 2} || |W(w)| || <= gamma sqrt(min(in, out))``,
        as ``||W(w)|| <= 1``), inverse FFT (``e_f``), real part and crop (exact), bias addition
        (``u (||y|| + ||b|| sqrt(HW))``); second-order terms are covered by a factor 2."""
        h, w = int(input_shape[1]), int(input_shape[2])
        grid = self._grid((h, w))
        u, u_in = unit_roundoff(self.raw.dtype, self.raw.device)
        e_fft = FFT_ULPS * u * math.log2(max(grid[0] * grid[1], 2))
        gamma = dot_gamma(2 * self.in_channels + 2, u, u_in)
        c1 = 2.0 * (2 * e_fft + gamma * math.sqrt(min(self.in_channels, self.out_channels)) + 2 * u)
        b = 0.0 if self.bias is None else float(self.bias.detach().to(torch.float64).norm()) * math.sqrt(h * w)
        return 2.0 * u * b, c1

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, rank={self.rank}, kernel_size={self.kernel_size}"

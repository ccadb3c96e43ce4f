"""Spectral norms (L2 operator norms) of linear layers, for Lipschitz certification.

Two kinds of functions:

* **sound** (:func:`dense_spectral_norm`, :func:`conv_spectral_bound`): *upper bounds* of the
  L2 operator norm, computed in float64 and inflated by ``1 + FLOAT_ALLOWANCE``. A certificate
  multiplies these, so they must never be estimates from below.
* **estimates** (:func:`power_iteration_dense`, :func:`power_iteration_conv`,
  :func:`converged_power_iteration`): power iteration. For a unit vector ``u``,
  ``||A u|| <= ||A||_2`` always, so these approach the norm *from below*; they are what GloRo
  training differentiates, and what tests compare the sound bounds against.

Convolution bound (stride 1). A zero-padded ``conv2d`` (a cross-correlation) on an ``H x W``
input is ``crop o C o pad``: ``pad`` embeds the input into an ``N1 x N2`` grid of zeros
(``N = H + pad_left + pad_right``, an isometry), ``C`` is the *circular* correlation with the
kernel on that grid, and ``crop`` keeps the ``valid`` outputs, which never wrap around (a
projection, norm <= 1). Hence ``||conv|| <= ||C||``. ``C`` is block-diagonalised by the 2-D DFT:

    ||C||_2 = max_{w1 < N1, w2 < N2} sigma_max(W_hat(w)),
    W_hat(w) = sum_{a,b} W[:, :, a, b] exp(-2 pi i (a w1 / N1 + b w2 / N2))   (Cout x Cin).

(The correlation's symbol is the complex conjugate of ``W_hat``: same singular values.) Because
``W`` is real, ``W_hat(-w) = conj(W_hat(w))``, so the half-spectrum of ``rfft2`` suffices.

Strides. With ``x_p`` the padded input, a stride-``s`` convolution is

    y[i] = sum_a W[a] x_p[s i + a] = sum_{r<s} sum_q W[s q + r] z_r[i + q],   z_r[m] = x_p[s m + r],

i.e. a stride-1 ``valid`` convolution of the space-to-depth input ``z`` (channels ``Cin*s*s``;
zero-extended to a multiple of ``s``: isometry + permutation) with the rearranged kernel
``W'[o, (c, r1, r2), q1, q2] = W[o, c, s q1 + r1, s q2 + r2]`` (kernel zero-padded to a multiple
of ``s``), cropped to the output size. This is an exact identity (:func:`space_to_depth`,
:func:`space_to_depth_conv`); the FFT bound is applied to the rearranged problem on a grid of
``ceil(N / s)``. It is tighter than bounding the stride-1 convolution and subsampling.

Dilation expands the kernel with zeros; ``groups`` make the operator block-diagonal (the norm
is the max over groups). Only ``padding_mode="zeros"`` is covered by the argument above.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FLOAT_ALLOWANCE",
    "CERTIFIED_RTOL",
    "max_singular_value",
    "dense_spectral_norm",
    "conv_spectral_bound",
    "space_to_depth",
    "space_to_depth_conv",
    "conv_operator_pair",
    "power_iteration_dense",
    "power_iteration_conv",
    "converged_power_iteration",
]

#: Relative inflation applied to every sound bound: ``bound = (1 + FLOAT_ALLOWANCE) * computed``.
#:
#: The bound is the norm of the real-arithmetic operator whose entries are the weight values
#: (float32 weights convert to float64 exactly). The float64 FFT and SVD that compute it have
#: relative errors of order ``n * 2**-53`` (about 1e-13 for any realistic layer), so 1e-5 covers
#: them with a margin of ~1e8. It also covers a relative perturbation of the weights of a few
#: float32 ulps (``2**-24 ~ 6e-8`` each). It does *not* model the rounding of the network's own
#: float32 forward pass; a certifier must budget for that separately in its margin.
FLOAT_ALLOWANCE: float = 1e-5

#: Target relative gap of :func:`max_singular_value` above the largest singular value: the
#: certified value is ``sigma_max * (1 + CERTIFIED_RTOL / 2)`` plus the rounding terms of its proof
#: (about ``1e-9`` relative for a 2048-wide matrix), unless a guess fails to converge (then it is
#: looser, never lower).
CERTIFIED_RTOL: float = 2e-7

_DEFAULT_MAX_BYTES = 1 << 30  # ~1 GB of complex128 per-frequency matrices before chunking

IntPair = Union[int, Sequence[int]]
Padding = Union[int, Sequence[int], str]


# ----------------------------------------------------------------------------- helpers


def _pair(value: IntPair, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, int):
        out = (value, value)
    else:
        out = tuple(int(v) for v in value)
        if len(out) == 1:
            out = (out[0], out[0])
        if len(out) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(out) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return out  # type: ignore[return-value]


def _check_conv_weight(weight: Tensor, groups: int) -> None:
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 4:
        raise ValueError(
            f"conv weight must have rank 4 (out_channels, in_channels/groups, kH, kW), "
            f"got shape {tuple(weight.shape)}"
        )
    if not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups={groups!r} must be a positive int dividing out_channels={weight.shape[0]}")
    if weight.is_complex():
        raise ValueError("complex weights are not supported")


def _check_padding_mode(padding_mode: str) -> None:
    if padding_mode != "zeros":
        raise ValueError(
            f"padding_mode={padding_mode!r} is not supported: the FFT bound is proven only for "
            "zero padding ('zeros'); reflect/replicate/circular padding need a different bound"
        )


def _resolve_padding(
    padding: Padding, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per-dimension ``(before, after)`` zero padding, with nn.Conv2d's rules for strings."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions (as in nn.Conv2d)")
            out = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))  # extra padding on the right, as PyTorch
            return out[0], out[1]
        raise ValueError(f"padding string must be 'same' or 'valid', got {padding!r}")
    p = _pair(padding, "padding", 0)
    return (p[0], p[0]), (p[1], p[1])


def _dilate_kernel(weight: Tensor, dilation: tuple[int, int]) -> Tensor:
    """Kernel with ``d - 1`` zeros between taps: conv with dilation d == conv with this kernel."""
    if dilation == (1, 1):
        return weight
    o, c, k1, k2 = weight.shape
    d1, d2 = dilation
    out = weight.new_zeros(o, c, d1 * (k1 - 1) + 1, d2 * (k2 - 1) + 1)
    out[:, :, ::d1, ::d2] = weight
    return out


# ----------------------------------------------------------------------------- certified sigma_max

_U64 = 2.0**-53
_SCREEN_STEPS = 4  # Lanczos steps for every matrix of a batch (a cheap guess of each lambda_max)
_REFINE_STEPS = 32  # Lanczos steps for the few matrices whose guess is largest
_REFINED = 8
_MAX_ROUNDS = 24


def _gamma(n: int) -> float:
    return n * _U64 / (1.0 - n * _U64)


def _ritz_values(gram: Tensor, steps: int) -> Tensor:
    """Largest Ritz value of ``steps`` Lanczos steps (full reorthogonalization) per Hermitian
    ``(B, k, k)`` matrix, returned as the Rayleigh quotient of its Ritz vector: ``<= lambda_max``
    in exact arithmetic. Only a guess: :func:`max_singular_value` proves its bound otherwise."""
    b, k, _ = gram.shape
    m = min(steps, k)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(b, k, 1, generator=gen, dtype=torch.float64).to(device=gram.device, dtype=gram.dtype)
    q = q / q.norm(dim=1, keepdim=True)
    basis = gram.new_zeros(b, k, m)
    for j in range(m):
        basis[..., j : j + 1] = q
        w = gram @ q
        done = basis[..., : j + 1]
        for _ in range(2):
            w = w - done @ (done.mH @ w)
        q = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
    small = basis.mH @ (gram @ basis)
    vec = basis @ torch.linalg.eigh((small + small.mH) / 2).eigenvectors[..., -1:]
    return ((vec.mH @ (gram @ vec)).real / (vec.mH @ vec).real.clamp_min(1e-300)).flatten()


def _below(gram: Tensor, c: float) -> Tensor:
    """``(B,)`` whether a float64 Cholesky factorization of ``c I - gram`` runs to completion."""
    shifted = -gram
    shifted.diagonal(dim1=-2, dim2=-1).add_(c)
    return torch.linalg.cholesky_ex(shifted).info == 0


def max_singular_value(matrices: Tensor) -> float:
    """Provable upper bound on ``max_b sigma_max(A_b)`` over a batch ``(..., m, n)`` of real or
    complex matrices (computed in float64), within a relative ``CERTIFIED_RTOL / 2`` of it.

    No SVD: with ``G = A^H A`` (of the smaller side, ``k x k``), ``sigma_max^2 = lambda_max(G)``
    and ``lambda_max(G) <= c`` iff ``c I - G`` is positive semidefinite. A Lanczos guess ``theta``
    of the largest ``lambda_max`` gives ``c = theta (1 + CERTIFIED_RTOL)``; a Cholesky
    factorization of the computed ``c I - G~`` that runs to completion proves (Higham, *Accuracy
    and Stability of Numerical Algorithms*, Thm 10.3: ``R^H R = A~ + dA``,
    ``|dA| <= g_c |R^H| |R|``, so ``||dA|| <= g_c / (1 - g_c) tr(A~)``)

        lambda_max(G) <= c + g_c / (1 - g_c) tr(c I - G~) + u max_i |c - G~_ii| + g_g ||A||_F^2,

    the last term the Gram's rounding (``|G~ - G| <= g_g |A|^H |A|``). ``g_c = gamma_{4(k+2)}``,
    ``g_g = gamma_{4(m+2)}`` (Higham's real constants ``gamma_{k+1}``, ``gamma_m`` times 4 for complex
    products, Lemma 3.5, and any blocked evaluation order). ``A`` is first scaled by a power of
    two (exact) when ``max |a_ij|`` is outside ``[2^-64, 2^64]``; an absolute ``k 2^-1000`` covers underflow.
    Where a Cholesky fails, the guess is refined (more Lanczos steps, then a wider ``c``) and
    retried: the result is never below ``sigma_max``.
    """
    a = matrices.detach()
    a = a.to(torch.complex128) if a.is_complex() else a.to(torch.float64)
    if a.numel() == 0:
        return 0.0
    a = a.reshape(-1, *a.shape[-2:])
    parts = torch.view_as_real(a) if a.is_complex() else a  # real views: complex abs is slow
    peak = float(parts.abs().max())
    if not math.isfinite(peak):
        raise ValueError("matrix has non-finite entries")
    if peak == 0.0:
        return 0.0
    exponent = math.frexp(peak)[1]
    scale = 2.0**-exponent if abs(exponent) > 64 else 1.0  # away from under/overflow: no copy
    if scale != 1.0:
        a = a * scale
        parts = torch.view_as_real(a) if a.is_complex() else a
    frobenius = float(parts.square().sum(tuple(range(1, parts.dim()))).max())  # max_b ||A_b||_F^2
    m, k = max(a.shape[-2:]), min(a.shape[-2:])
    gram = a @ a.mH if a.shape[-2] < a.shape[-1] else a.mH @ a  # (B, k, k): the smaller side
    theta = _ritz_values(gram, _SCREEN_STEPS)
    steps = min(k, _REFINE_STEPS)
    top = theta.topk(min(_REFINED, len(theta))).indices
    theta[top] = torch.maximum(theta[top], _ritz_values(gram[top], steps))
    rtol = CERTIFIED_RTOL
    floor = float(gram.diagonal(dim1=-2, dim2=-1).real.max())  # lambda_max >= max_i G_ii > 0
    c = max(float(theta.max()), floor) * (1.0 + rtol)
    pending = torch.arange(len(gram), device=gram.device)
    for _ in range(_MAX_ROUNDS):
        pending = pending[~_below(gram[pending], c)]
        if not len(pending):
            break
        if steps >= k:
            rtol *= 16.0
        steps = min(k, 2 * steps)
        c = max(c, float(_ritz_values(gram[pending], steps).max()) * (1.0 + rtol), c * (1.0 + rtol))
    else:
        raise RuntimeError("max_singular_value: no bound proven (non-finite or degenerate matrices?)")
    diag = c - gram.diagonal(dim1=-2, dim2=-1).real  # (B, k): the factorized diagonals, all > 0
    g_c, g_g = _gamma(4 * (k + 2)), _gamma(4 * (m + 2))
    err = (g_c / (1.0 - g_c) * float(diag.sum(-1).max()) + 2 * _U64 * float(diag.max())
           + g_g * frobenius * (1.0 + _gamma(2 * m * k)) + k * 2.0**-1000)
    return math.sqrt((c + err) * (1.0 + 64 * _U64)) * (1.0 + 4 * _U64) / scale


# ----------------------------------------------------------------------------- dense


def dense_spectral_norm(weight: Tensor) -> float:
    """``(1 + FLOAT_ALLOWANCE) * sigma_max(weight)`` for a ``(out, in)`` matrix, in float64
    (:func:`max_singular_value`: proven, within ``CERTIFIED_RTOL / 2`` of the exact value).

    ``sigma_max = max_{||x||=1} ||W x||_2`` is the L2 Lipschitz constant of ``x -> W x + b``.
    """
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"dense weight must have rank 2 (out_features, in_features), got shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        return 0.0
    w = weight.detach().to(torch.float64)
    if not torch.isfinite(w).all():
        raise ValueError("weight has non-finite entries")
    return max_singular_value(w) * (1.0 + FLOAT_ALLOWANCE)


# ----------------------------------------------------------------------------- space to depth


def space_to_depth(x: Tensor, stride: IntPair) -> Tensor:
    """Rearrange ``(B, C, H, W)`` into ``(B, C*s1*s2, ceil(H/s1), ceil(W/s2))``.

    ``out[:, c*s1*s2 + r1*s2 + r2, m1, m2] = x[:, c, s1*m1 + r1, s2*m2 + r2]`` (as
    ``F.pixel_unshuffle``), after zero-extending ``H, W`` at the end to multiples of the stride.
    Zero extension is an isometric embedding and the rearrangement a permutation: norm-preserving.
    """
    s1, s2 = _pair(stride, "stride", 1)
    if x.dim() != 4:
        raise ValueError(f"space_to_depth needs a rank-4 tensor, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    m1, m2 = -(-h // s1), -(-w // s2)
    x = F.pad(x, (0, m2 * s2 - w, 0, m1 * s1 - h))
    x = x.reshape(b, c, m1, s1, m2, s2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * s1 * s2, m1, m2)


def space_to_depth_conv(weight: Tensor, stride: IntPair) -> Tensor:
    """Kernel ``W'`` with ``conv2d(x_p, W, stride=s) == conv2d(space_to_depth(x_p, s), W')[..., :Ho, :Wo]``.

    ``W'[o, c*s1*s2 + r1*s2 + r2, q1, q2] = W[o, c, s1*q1 + r1, s2*q2 + r2]``, shape
    ``(Cout, Cin*s1*s2, ceil(k1/s1), ceil(k2/s2))`` (the kernel is zero-padded to a multiple of
    ``s``). ``x_p`` is the already zero-padded input; dilate the kernel first for dilated convs.
    Groups are preserved: channel ``c`` maps to the contiguous block ``c*s1*s2 ...``.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"conv weight must have rank 4 (out, in/groups, kH, kW), got {shape}")
    return space_to_depth(weight, stride)


# ----------------------------------------------------------------------------- FFT bound


def _circular_conv_norm(weight: Tensor, grid: tuple[int, int], groups: int, max_bytes: int) -> float:
    """Exact L2 norm of the circular (cross-)correlation with ``weight`` on an ``N1 x N2`` grid.

    ``max_{w} sigma_max(W_hat_g(w))`` over all frequencies and groups (float64; proven by
    :func:`max_singular_value`, within ``CERTIFIED_RTOL / 2`` above). Requires
    ``N >= kernel size`` so that the kernel is not aliased.
    """
    o, cg, k1, k2 = weight.shape
    n1, n2 = grid
    assert n1 >= k1 and n2 >= k2
    og = o // groups
    n2r = n2 // 2 + 1
    n_freq = n1 * n2r
    # complex128 per frequency, x2 for the SVD's copy / workspace
    per_freq = 2 * 16 * o * cg
    if n_freq * per_freq <= max_bytes:
        wh = torch.fft.rfft2(weight, s=(n1, n2))  # (O, Cg, N1, N2r)
        wh = wh.reshape(groups, og, cg, n_freq).permute(0, 3, 1, 2)  # (G, F, Og, Cg)
        return max_singular_value(wh)
    # Chunked direct DFT over the half-spectrum, with phases reduced mod N (exact integers).
    chunk = max(1, max_bytes // per_freq)
    dev = weight.device
    a = torch.arange(k1, device=dev, dtype=torch.int64)
    b = torch.arange(k2, device=dev, dtype=torch.int64)
    w1_all = torch.arange(n1, device=dev, dtype=torch.int64).repeat_interleave(n2r)
    w2_all = torch.arange(n2r, device=dev, dtype=torch.int64).repeat(n1)
    w_flat = weight.reshape(o * cg, k1 * k2).to(torch.complex128)
    best = 0.0
    for start in range(0, n_freq, chunk):
        w1 = w1_all[start : start + chunk]
        w2 = w2_all[start : start + chunk]
        ph1 = (a[:, None] * w1[None, :]) % n1  # (k1, f)
        ph2 = (b[:, None] * w2[None, :]) % n2  # (k2, f)
        phase = ph1[:, None, :].double() / n1 + ph2[None, :, :].double() / n2  # (k1, k2, f)
        e = torch.polar(torch.ones_like(phase), -2 * math.pi * phase).reshape(k1 * k2, -1)
        wh = (w_flat @ e).reshape(groups, og, cg, -1).permute(0, 3, 1, 2)
        best = max(best, max_singular_value(wh))
    return best


def conv_spectral_bound(
    weight: Tensor,
    input_hw: tuple[int, int],
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    *,
    max_bytes: int = _DEFAULT_MAX_BYTES,
) -> float:
    """Upper bound on ``||F.conv2d(., weight, None, stride, padding, dilation, groups)||_2``.

    For inputs of spatial size ``input_hw`` (any number of images: the norm is per image).
    Returns ``(1 + FLOAT_ALLOWANCE) * max_w sigma_max(W'_hat(w))`` where ``W'`` is the dilated,
    space-to-depth rearranged kernel on the grid ``max(ceil((H + pad) / s), k')`` (see the module
    docstring for the proof). ``max_bytes`` caps the per-chunk memory of the frequency matrices.
    """
    _check_padding_mode(padding_mode)
    _check_conv_weight(weight, groups)
    hw = _pair(tuple(input_hw), "input_hw", 1)
    s = _pair(stride, "stride", 1)
    d = _pair(dilation, "dilation", 1)
    k = (int(weight.shape[2]), int(weight.shape[3]))
    pads = _resolve_padding(padding, k, s, d)
    w = weight.detach().to(torch.float64)
    if not torch.isfinite(w).all():
        raise ValueError("weight has non-finite entries")
    if w.numel() == 0:
        return 0.0
    w = _dilate_kernel(w, d)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(hw, pads))
    if s != (1, 1):
        w = space_to_depth_conv(w, s)
        padded = tuple(-(-n // si) for n, si in zip(padded, s))
    grid = (max(padded[0], w.shape[2]), max(padded[1], w.shape[3]))
    sigma = _circular_conv_norm(w, grid, groups, max_bytes)
    return sigma * (1.0 + FLOAT_ALLOWANCE)


# ----------------------------------------------------------------------------- power iteration


def _normalize(x: Tensor) -> Tensor:
    return x / x.norm().clamp_min(torch.finfo(x.dtype).tiny)


def power_iteration_dense(weight: Tensor, u: Tensor | None, n_iter: int) -> tuple[Tensor, Tensor]:
    """``n_iter`` steps of ``u <- W^T W u / ||W^T W u||`` (no grad), then ``sigma = ||W u||``.

    ``u`` lives in the input space (shape ``(in,)``); ``None`` starts from a seeded random vector.
    ``sigma <= sigma_max(W)`` for every unit ``u`` (an estimate from below) and is differentiable
    w.r.t. ``weight`` (``d sigma / dW = v u^T``, ``v = W u / ||W u||``). Returns ``(sigma, u)``
    with ``u`` detached, to be passed back next time.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"dense weight must have rank 2 (out_features, in_features), got {shape}")
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    n_in = weight.shape[1]
    if u is None:
        gen = torch.Generator().manual_seed(0)
        u = torch.randn(n_in, generator=gen, dtype=torch.float64)
    if tuple(u.shape) != (n_in,):
        raise ValueError(f"persistent vector must have shape ({n_in},), got {tuple(u.shape)}")
    with torch.no_grad():
        w = weight.detach()
        u = _normalize(u.detach().to(device=w.device, dtype=w.dtype))
        for _ in range(n_iter):
            u = _normalize(w.T @ _normalize(w @ u))
    sigma = (weight @ u).norm()
    return sigma, u.detach()


def conv_operator_pair(
    weight: Tensor,
    input_hw: tuple[int, int],
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``(A, A^T)`` for ``A = F.conv2d(., weight, None, stride, padding, dilation, groups)``.

    ``A^T`` is ``conv_transpose2d`` with ``output_padding = P - ((Ho - 1) s + d (k - 1) + 1)``
    (``P`` the padded size) so that it maps back to exactly ``input_hw``; asymmetric ('same')
    padding is handled by explicit zero padding and cropping. Both use ``weight`` as given, so
    gradients flow through them.
    """
    _check_conv_weight(weight, groups)
    h, w_ = _pair(tuple(input_hw), "input_hw", 1)
    s = _pair(stride, "stride", 1)
    d = _pair(dilation, "dilation", 1)
    k = (int(weight.shape[2]), int(weight.shape[3]))
    (t, bo), (le, ri) = _resolve_padding(padding, k, s, d)
    p1, p2 = h + t + bo, w_ + le + ri
    ho = (p1 - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (p2 - d[1] * (k[1] - 1) - 1) // s[1] + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {k} with dilation {d} is larger than the padded input {(p1, p2)}")
    op = (p1 - ((ho - 1) * s[0] + d[0] * (k[0] - 1) + 1), p2 - ((wo - 1) * s[1] + d[1] * (k[1] - 1) + 1))
    symmetric = t == bo and le == ri

    if symmetric:
        pad = (t, le)

        def forward(x: Tensor) -> Tensor:
            return F.conv2d(x, weight, None, s, pad, d, groups)

        def adjoint(y: Tensor) -> Tensor:
            return F.conv_transpose2d(y, weight, None, s, pad, op, groups, d)

    else:

        def forward(x: Tensor) -> Tensor:
            return F.conv2d(F.pad(x, (le, ri, t, bo)), weight, None, s, 0, d, groups)

        def adjoint(y: Tensor) -> Tensor:
            full = F.conv_transpose2d(y, weight, None, s, 0, op, groups, d)
            return full[..., t : t + h, le : le + w_]

    return forward, adjoint


def power_iteration_conv(
    weight: Tensor,
    input_shape: tuple[int, int, int],
    u: Tensor | None,
    n_iter: int,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> tuple[Tensor, Tensor]:
    """Power iteration for ``A = conv2d(., weight, stride, padding, dilation, groups)``.

    ``u`` has shape ``(1, C, H, W)`` (input space, ``input_shape = (C, H, W)``); ``None`` starts
    from a seeded random vector. ``n_iter`` steps of ``u <- A^T A u / ||A^T A u||`` without
    grad, then ``sigma = ||A u||`` with ``u`` detached: ``sigma <= ||A||_2``, differentiable
    w.r.t. ``weight``. Returns ``(sigma, u)`` with ``u`` detached.
    """
    _check_padding_mode(padding_mode)
    _check_conv_weight(weight, groups)
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}")
    if shape[0] != weight.shape[1] * groups:
        raise ValueError(
            f"input has {shape[0]} channels but the weight expects {weight.shape[1] * groups} "
            f"(in_channels/groups={weight.shape[1]}, groups={groups})"
        )
    if u is None:
        gen = torch.Generator().manual_seed(0)
        u = torch.randn((1, *shape), generator=gen, dtype=torch.float64)
    if tuple(u.shape) != (1, *shape):
        raise ValueError(f"persistent vector must have shape {(1, *shape)}, got {tuple(u.shape)}")
    forward, adjoint = conv_operator_pair(weight, shape[1:], stride, padding, dilation, groups)
    w_det = weight.detach()
    fwd_det, adj_det = conv_operator_pair(w_det, shape[1:], stride, padding, dilation, groups)
    with torch.no_grad():
        u = _normalize(u.detach().to(device=w_det.device, dtype=w_det.dtype))
        for _ in range(n_iter):
            u = _normalize(adj_det(_normalize(fwd_det(u))))
    sigma = forward(u).norm()
    return sigma, u.detach()


def converged_power_iteration(
    layer_fn: Callable[[Tensor], Tensor],
    adjoint_fn: Callable[[Tensor], Tensor],
    input_shape: Sequence[int],
    tol: float = 1e-7,
    max_iter: int = 5000,
    device: torch.device | str = "cpu",
) -> float:
    """Power iteration on ``A^T A`` in float64 until ``||A u||`` changes by < ``tol`` (relative).

    ``input_shape`` is the full shape ``layer_fn`` takes (e.g. ``(1, C, H, W)``); both functions
    must accept float64. The result ``||A u||`` (unit ``u``) is a lower bound of ``||A||_2`` and,
    for PSD ``A^T A``, nondecreasing over iterations; it can stop short of the norm when the top
    singular values are clustered. Used to check sound bounds from below.
    """
    gen = torch.Generator().manual_seed(0)
    u = _normalize(torch.randn(tuple(input_shape), generator=gen, dtype=torch.float64).to(device))
    sigma = 0.0
    with torch.no_grad():
        for _ in range(max_iter):
            y = layer_fn(u)
            new = float(y.norm())
            u = _normalize(adjoint_fn(y))
            if abs(new - sigma) <= tol * max(new, 1e-300):
                return max(new, sigma)
            sigma = max(sigma, new)
    return sigma

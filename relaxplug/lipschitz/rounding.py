"""Floating-point error model of a network's forward pass (what a certificate allows for).

A certificate compares computed logits ``f~(x)`` with the margin the exact function keeps on the
ball; ``|f~(x) - f(x)|`` must be covered. Rounding error grows with the *intermediate* magnitudes
(a hidden activation of 1e4 that cancels in the head leaves an error of ~1e4 * u in logits of
order 1), so the model bounds every node's magnitude and error along the same graph as the
Lipschitz analysis. The bound is *deterministic* (a worst case over every rounding and every
summation order; Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., Lemma 3.1 and
Eq. (3.5)). With ``r = ||x||_2`` (reference point 0):

* magnitude: ``||v(x)|| <= A_v(r) = ||v~(0)|| + E_v(0) + L_v r`` (``v~(0)`` computed once,
  ``L_v`` the sound bound of node ``v`` as a function of the input); a computed value is at most
  ``A_v + E_v``;
* error: ``E_v(r)``, affine in ``r``, by ``E_v = G_v E_in + local_v`` with ``G_v`` the op's
  Lipschitz constant (errors propagate like input perturbations) and ``local_v`` the rounding of
  the op itself, bounded with ``gamma_k(u) = k u / (1 - k u)`` (``k`` roundings of relative size
  at most ``u`` each, in any order: ``|prod (1 + d_i)^{+-1} - 1| <= gamma_k``):

  - dense/convolution ``W x + b`` with fan-in ``n``: ``local <= g_n || |W| |x~| + |b| ||`` with
    ``g_n = (1 + u_in)^2 (1 + gamma_{n+2}(u_acc)) - 1`` (:func:`dot_gamma`): both operands rounded
    to the matmul/convolution input precision (``u_in``, 0 when inputs are used as they are), then
    ``n`` products and ``n + 1`` additions (bias and one spare) accumulated with unit roundoff
    ``u_acc``. ``|| |W||x~| + |b| || <= || |W| || (A_in + E_in) + ||b||``, and
    ``||b|| <= A_out + ||W|| A_in``;
  - sums/averages of ``k`` terms (pooling, ``mean``): ``gamma_{k+2}(u) G (A_in + E_in)``;
    additions ``a + c b``: ``gamma_2(u) (||a~|| + |c| ||b~||)``; scalings by a constant:
    ``gamma_2(u) G (A_in + E_in)``; BatchNorm ``s (x - m) + b``: ``gamma_10(u) (G (A_in + E_in) +
    || |s m| + |b| ||)`` (the statistics enter, not only the output: a large mean cancelled by
    the bias is rounded at its own size); library elementwise functions (activations):
    ``gamma_8(u) (G (A_in + E_in) + A_out + G E_in)``, i.e. within 4 ulps of the exact value at
    the computed input, measured relative to ``G |x| + |f(x)|``; copies, permutations, max
    pooling, ReLU, MinMax: exact;
  - a protocol layer may declare ``lipschitz_rounding(input_shape) -> (c0, c1)`` (error at most
    ``c0 + c1 ||x||``); otherwise ``gamma_16(u) (L A_in + A_out)`` is assumed.

``u`` is the unit roundoff of the dtype (float32: ``2**-24``). Reduced-precision matmul inputs:
float32 on CUDA rounds convolution inputs to TF32 when ``torch.backends.cudnn.allow_tf32`` is set
(PyTorch's default) and matmul inputs when ``torch.backends.cuda.matmul.allow_tf32`` is;
``float32_matmul_precision`` other than ``"highest"`` may use bfloat16 inputs on any device. Such
inputs are counted as rounded by up to one unit in their last place (``u_in = 2**-10`` for TF32,
``2**-7`` for bfloat16: truncation allowed), and their products accumulated with ``u_acc = 2 u``
(tensor cores may align and truncate instead of rounding to nearest: Fasi, Higham, Mikaitis and
Pranesh, PeerJ Comput. Sci. 7:e330, 2021).

The pair-margin allowance is ``2 E_logits`` (``|e_j - e_i| <= 2 ||e||``). Assumptions
(docs/soundness.md): IEEE binary floating point without underflow to subnormals mattering (an
absolute ``~1e-38`` per op is ignored) and without fast-math; every elementary operation rounds
with relative error at most ``u`` (``2 u`` on tensor-core paths as above); a dot product or
convolution is evaluated as a sum of its products in *some* order (blocked, split, tree, fused
multiply-add: all covered), not by Winograd or FFT algorithms whose error is not of that form;
library elementwise functions are within 4 ulps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ForwardError", "unit_roundoff", "gamma", "dot_gamma", "LIBRARY_ULPS", "DEFAULT_LAYER_ULPS",
           "BATCHNORM_ROUNDINGS"]

#: roundings charged to a library elementwise function (4 ulps = 8 u)
LIBRARY_ULPS = 8.0
#: roundings charged to a protocol layer that declares no ``lipschitz_rounding``
DEFAULT_LAYER_ULPS = 16.0
#: roundings of an eval-mode batch normalisation ``(x - m) / sqrt(v + eps) * w + b`` along any path
#: (eps added, square root, reciprocal or rsqrt within 2 ulps, products, sums)
BATCHNORM_ROUNDINGS = 10.0

_EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def unit_roundoff(dtype: torch.dtype, device: torch.device | str) -> tuple[float, float]:
    """``(u, u_in)``: unit roundoff of the dtype, and the relative rounding of matmul/convolution
    inputs (0 when they are used as they are; ``2**-10`` for TF32, ``2**-7`` for bfloat16, one
    unit in the last place each so that truncation is covered).

    float32 on CUDA rounds conv inputs to TF32 when ``torch.backends.cudnn.allow_tf32`` is set
    (PyTorch's default), matmul inputs when ``torch.backends.cuda.matmul.allow_tf32`` is;
    ``float32_matmul_precision`` other than ``"highest"`` may use bfloat16 inputs, on any device.
    """
    if dtype not in _EPS:
        raise ValueError(f"no floating-point error model for dtype {dtype}")
    u = _EPS[dtype]
    u_in = 0.0
    if dtype == torch.float32:
        if torch.get_float32_matmul_precision() != "highest":
            u_in = 2.0**-7
        elif torch.device(device).type == "cuda" and (
            torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
        ):
            u_in = 2.0**-10
    return u, u_in


def gamma(k: float, u: float) -> float:
    """``gamma_k = k u / (1 - k u)``: bound on ``|prod_{i<=k} (1 + d_i)^{+-1} - 1|`` for ``|d_i| <= u``
    (Higham, Lemma 3.1). ``ValueError`` when ``k u >= 1/2`` (no useful bound)."""
    ku = k * u
    if ku >= 0.5:
        raise ValueError(f"{k:g} roundings at unit roundoff {u:g}: too many for a rounding-error bound")
    return ku / (1.0 - ku)


def dot_gamma(n: int, u: float, u_in: float) -> float:
    """Relative error of a length-``n`` dot product plus bias, relative to ``sum |w_i x_i| + |b|``,
    in any summation order: ``(1 + u_in)^2 (1 + gamma_{n+2}(u_acc)) - 1`` with ``u_acc = u``, or
    ``2 u`` when the inputs are rounded (tensor cores; see the module docstring)."""
    u_acc = u if u_in == 0.0 else 2.0 * u
    return (1.0 + u_in) ** 2 * (1.0 + gamma(n + 2, u_acc)) - 1.0


@dataclass(frozen=True)
class ForwardError:
    """``||f~(x) - f(x)||_2 <= e0 + e1 ||x||_2`` for the computed output ``f~``."""

    e0: float
    e1: float

    def __call__(self, x: Tensor) -> Tensor:
        """Per-example bound ``(B,)`` for a batch ``x``."""
        norms = x.detach().flatten(1).to(torch.float64).norm(dim=1)
        return self.e0 + self.e1 * norms

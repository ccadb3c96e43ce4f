"""Floating-point error model of a network's forward pass (what a certificate allows for).

A certificate compares computed logits ``f~(x)`` with the margin the exact function keeps on the
ball; ``|f~(x) - f(x)|`` must be covered. Rounding error grows with the *intermediate* magnitudes
(a hidden activation of 1e4 that cancels in the head leaves an error of ~1e4 * u in logits of
order 1), so the model bounds every node's magnitude and error along the same graph as the
Lipschitz analysis. With ``r = ||x||_2`` (reference point 0):

* magnitude: ``||v(x)|| <= A_v(r) = ||v(0)|| + L_v r`` (``v(0)`` computed once, ``L_v`` the sound
  bound of node ``v`` as a function of the input);
* error: ``E_v(r)``, affine in ``r``, by ``E_v = G_v E_in + local_v`` with ``G_v`` the op's
  Lipschitz constant (errors propagate like input perturbations) and

  - dense/convolution ``W x + b`` with fan-in ``n``: ``local <= gamma_n (||  |W| || A_in + A_out + ||W|| A_in)``
    (``| |W||x| + |b| |`` is at most ``|| |W| || ||x|| + ||b||`` and ``||b|| <= A_out + ||W|| A_in``),
    ``gamma_n = 2 (min(n + 2, LAMBDA sqrt(n + 2)) u + 2 u_in)``. ``(n + 2) u`` is the classical
    worst case of a dot product of length ``n`` plus a bias in any summation order;
    ``LAMBDA sqrt(n) u`` is Higham and Mary's probabilistic bound (SIAM J. Sci. Comput. 41(5),
    2019, Theorem 2.4): with rounding errors independent and mean zero it holds with probability
    at least ``1 - 2n exp(-LAMBDA^2 (1 - u)^2 / 2)`` per dot product (``LAMBDA = 10``: failure
    below ``1e-17`` for ``n <= 1e4``). ``u_in`` is the rounding of the inputs to the matmul/conv
    precision (TF32 on CUDA when allowed). A factor 2 of margin on top.
  - sums/averages of ``k`` terms (pooling, ``mean``): ``gamma_k G A_in``; elementwise ops
    (activations, scalings, additions): ``c u (G A_in + A_out)`` with ``c`` ulps (4 for library
    functions); copies, permutations, max pooling, MinMax: exact;
  - a protocol layer may declare ``lipschitz_rounding(input_shape) -> (c0, c1)`` (error at most
    ``c0 + c1 ||x||``); otherwise ``16 u (L A_in + A_out)`` is assumed.

The pair-margin allowance is ``2 E_logits(||x||)`` (``|e_j - e_i| <= 2 ||e||``). Assumptions
(docs/soundness.md): IEEE arithmetic with round-to-nearest, library elementwise functions within 4
ulps, no fast-math / Winograd-style convolution algorithms whose error is not of the dot-product form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ForwardError", "unit_roundoff", "dot_gamma", "LAMBDA", "LIBRARY_ULPS", "DEFAULT_LAYER_ULPS"]

LIBRARY_ULPS = 4.0
#: confidence parameter of the probabilistic dot-product bound (see the module docstring)
LAMBDA = 10.0
DEFAULT_LAYER_ULPS = 16.0

_EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def unit_roundoff(dtype: torch.dtype, device: torch.device | str) -> tuple[float, float]:
    """``(u, u_in)``: unit roundoff of accumulation and of matmul/conv inputs for this dtype and device.

    float32 on CUDA rounds conv inputs to TF32 (``u_in = 2**-11``) when
    ``torch.backends.cudnn.allow_tf32`` is set (PyTorch's default), matmul inputs when
    ``torch.backends.cuda.matmul.allow_tf32`` is; ``float32_matmul_precision`` other than
    ``"highest"`` may use bfloat16 inputs (``2**-8``), on any device.
    """
    if dtype not in _EPS:
        raise ValueError(f"no floating-point error model for dtype {dtype}")
    u = _EPS[dtype]
    u_in = u
    if dtype == torch.float32:
        if torch.get_float32_matmul_precision() != "highest":
            u_in = 2.0**-8
        elif torch.device(device).type == "cuda" and (
            torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
        ):
            u_in = 2.0**-11
    return u, u_in


def dot_gamma(n: int, u: float, u_in: float) -> float:
    """``2 (min(n + 2, LAMBDA sqrt(n + 2)) u + 2 u_in)``: relative error of a length-``n`` dot product
    plus bias (relative to ``sum |w_i x_i| + |b|``), with a factor 2 of margin."""
    terms = n + 2
    return 2.0 * (min(terms, LAMBDA * math.sqrt(terms)) * u + 2.0 * u_in)


@dataclass(frozen=True)
class ForwardError:
    """``||f~(x) - f(x)||_2 <= e0 + e1 ||x||_2`` for the computed output ``f~``."""

    e0: float
    e1: float

    def __call__(self, x: Tensor) -> Tensor:
        """Per-example bound ``(B,)`` for a batch ``x``."""
        norms = x.detach().flatten(1).to(torch.float64).norm(dim=1)
        return self.e0 + self.e1 * norms

"""GloRo certification (Leino et al. 2021): Lipschitz margins in one forward pass."""

from __future__ import annotations

import weakref
from typing import Sequence

import torch
from torch import Tensor, nn

from relaxplug.adapters import Guarantee, MarginRequest
from relaxplug.lipschitz import LIPSCHITZ_MODES, ForwardError, estimator_for

from relaxplug.certifiers.base import Certifier, register_certifier, rounding_allowance

__all__ = ["GloRoCertifier", "gloro_lower_bounds", "rank_pairs"]


def rank_pairs(matrix: Tensor, order: Tensor, n_candidates: int) -> Tensor:
    """Gather ``matrix[o_r, o_s]`` for ranks ``r < K``, all ``s``: ``(n, n) -> (B, K, n)``."""
    rows = matrix[order[:, :n_candidates]]  # (B, K, n) indexed by class
    return rows.gather(2, order[:, None, :].expand(-1, n_candidates, -1))


def gloro_lower_bounds(
    logits: Tensor,
    order: Tensor,
    pair_lipschitz: Tensor,
    eps: float,
    n_candidates: int,
    *,
    forward_error: Tensor | None = None,
    chunk: int = 64,
) -> Tensor:
    """``lower[b, r, s] = f_{o_r} - f_{o_s} - eps * K_{o_r o_s}`` (Equation C5). For certification
    ``forward_error`` (``(B, 1, 1)``, the rounding error of the computed logits) is given and the
    allowance ``rounding_allowance(logits, eps * K_{o_r o_s}) + forward_error`` is subtracted as
    well; training leaves both out.

    Computed ``chunk`` points at a time so the ``(chunk, K, n)`` intermediates stay in cache;
    each point's value does not depend on the chunking.

    Args:
        logits: ``(B, n)``; order: ``(B, n)`` rank order; pair_lipschitz: ``(n, n)`` ``K_ji``.
    Returns: ``(B, K, n)`` rank-form lower bounds.
    """
    ranked = logits.gather(1, order)  # (B, n)
    parts = []
    for start in range(0, max(logits.shape[0], 1), chunk):
        rows = slice(start, start + chunk)
        lower = ranked[rows, :n_candidates, None] - ranked[rows, None, :]  # (b, K, n)
        scaled = rank_pairs(pair_lipschitz, order[rows], n_candidates).mul_(eps)  # eps * K_{o_r o_s}
        lower = lower.sub_(scaled)
        if forward_error is not None:
            lower = lower.sub_(rounding_allowance(logits[rows], scaled) + forward_error[rows])
        parts.append(lower)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@register_certifier("gloro")
class GloRoCertifier(Certifier):
    """Lipschitz-margin certifier, L2 only.

    The model is traced with torch.fx and bounded by :mod:`relaxplug.lipschitz.graph` (layers
    with the Lipschitz protocol are leaves; other ops by an allow-list of proven constants).
    Every margin bound at ``eps > 0`` subtracts the forward pass's rounding error at ``x`` and in
    the ball (``2 E_x + 2 E_ball``, the deterministic model of :mod:`relaxplug.lipschitz.rounding`,
    which follows intermediate magnitudes) and the rounding of the bound's own arithmetic
    (``rounding_allowance``). The logits are computed by the model's traced graph (the same
    operations, :meth:`logits`), which measures every node's norm at ``x`` on the way, so the
    magnitudes over the ball are ``||v~(x)|| + E_v + L_v eps``; the bound from the reference point 0
    (``||v~(0)|| + E_v + L_v (||x|| + eps)``) is used where it is smaller.

    Args:
        lipschitz: ``"sound"`` (provable bounds, default) or ``"power"`` (converged power
            iteration for every linear layer: an estimate from below, for comparison with the
            papers' numbers).
    """

    name = "gloro"
    norms = (2.0,)

    def __init__(self, lipschitz: str = "sound"):
        if lipschitz not in LIPSCHITZ_MODES:
            raise ValueError(f"lipschitz must be one of {LIPSCHITZ_MODES}, got {lipschitz!r}")
        self.lipschitz = lipschitz
        self._measured: tuple | None = None  # (model, x, x version, analysis token, e0, e1) of :meth:`logits`

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """The logits by the model's traced graph (the same operations as ``model(x)``), measuring each
        node's norm for the rounding model of :meth:`forward_error` (no second forward pass)."""
        estimator = estimator_for(model, x.shape[1:])
        logits, e0, e1 = estimator.measured_forward(x)
        self._measured = (weakref.ref(model), weakref.ref(x), x._version, estimator.forward_error(), e0, e1)
        return logits

    def _rounding(self, model: nn.Module, x: Tensor) -> tuple[ForwardError, Tensor, float]:
        """``(E from 0, e0, e1)``: the reference-0 error model and the measured one at ``x``
        (:meth:`~relaxplug.lipschitz.LipschitzEstimator.measured_forward`), reused from :meth:`logits`
        only for the same model, analysis and unchanged ``x``."""
        estimator = estimator_for(model, x.shape[1:])
        reference = estimator.forward_error()
        m = self._measured
        if m is not None and m[0]() is model and m[1]() is x and m[2] == x._version and m[3] is reference:
            return reference, m[4], m[5]
        _, e0, e1 = estimator.measured_forward(x)
        return reference, e0, e1

    def pair_lipschitz(self, model: nn.Module, input_shape: Sequence[int]) -> Tensor:
        """``(n, n)`` matrix ``K_ji`` (``L_body * ||w_j - w_i||`` for a linear head), computed in float64,
        in the model's dtype on the model's device: the estimator's cached copy, shared between calls
        (read it, do not write to it)."""
        estimator = estimator_for(model, input_shape)
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        return estimator.cast_pair_lipschitz(estimator.dtype, device, self.lipschitz)

    def forward_error(self, model: nn.Module, x: Tensor, eps: float) -> Tensor:
        """``(B, 1, 1)`` allowance for rounding in the computed logits, at ``x`` and at any ``x'`` of the ball:
        ``2 E_x + 2 E_ball`` (a margin moves by at most twice the logits' error), the smaller of
        ``4 e0 + 2 e1 eps`` (magnitudes measured at ``x``) and ``4 E(||x||) + 2 E.e1 eps`` (from the
        reference point 0), inflated by ``1e-6`` for its conversion to the logits' dtype. ``eps = 0``
        claims the ranking computed at ``x`` itself: no allowance."""
        if eps == 0:
            return torch.zeros(len(x), 1, 1, dtype=torch.float64, device=x.device)
        reference, e0, e1 = self._rounding(model, x)
        allowance = torch.minimum(4.0 * e0 + 2.0 * e1 * eps, 4.0 * reference(x) + 2.0 * reference.e1 * eps)
        return (allowance * (1.0 + 1e-6))[:, None, None]

    def bounds(self, model: nn.Module, x: Tensor, logits: Tensor, requests: Sequence[MarginRequest], norm: float) -> list[Tensor]:
        self.check_norm(norm)
        pair_k = self.pair_lipschitz(model, x.shape[1:]).to(logits.device)
        out = []
        for request in requests:
            forward = self.forward_error(model, x, request.eps).to(logits)  # (B, 1, 1), depends on eps
            out.append(gloro_lower_bounds(logits, request.order, pair_k, request.eps, request.n_candidates,
                                          forward_error=forward))
        return out

    def radius(self, model: nn.Module, x: Tensor, logits: Tensor, guarantee: Guarantee, norm: float) -> Tensor | None:
        """Closed form: ``max_{acceptable k} min_{r<k<=s} (gap_rs - slack_rs) / K_rs``.

        Per pair the bound ``gap - eps K`` is positive iff ``eps < gap / K``, and ``min``/``max``
        commute with this monotone map, so Equation B1 applied to ``gap / K`` gives the radius.
        """
        if guarantee.carries_radii:
            return None
        self.check_norm(norm)
        pair_k = self.pair_lipschitz(model, x.shape[1:]).to(logits.device)
        request = guarantee.requests(logits, 0.0)[0]
        k = request.n_candidates
        ranked = logits.gather(1, request.order)
        gaps = ranked[:, :k, None] - ranked[:, None, :]
        lipschitz = rank_pairs(pair_k, request.order, k)
        # allowance at radius r > 0: rtol (2 max|f| + r K) + 4 e0 + 2 e1 r for either rounding model (the
        # smaller allowance certifies a pair up to the larger ratio); solve gap - allowance - r K > 0
        reference, e0, e1 = self._rounding(model, x)
        rtol = rounding_allowance(logits, 1.0) - rounding_allowance(logits, 0.0)
        ratio = None
        for c0, c1 in ((e0, e1), (reference(x), reference.e1)):
            rtol_scale = rounding_allowance(logits, 0.0) + (4.0 * c0 * (1.0 + 1e-6)).to(logits)[:, None, None]
            slope = lipschitz * (1 + rtol) + 2.0 * c1 * (1.0 + 1e-6)
            part = (gaps - rtol_scale) / slope.clamp_min(torch.finfo(logits.dtype).tiny)
            ratio = part if ratio is None else torch.maximum(ratio, part)
        result = guarantee.evaluate(request.order, [ratio])
        return result.margin.clamp_min(0.0)

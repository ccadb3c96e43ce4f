"""Bound-propagation certifiers through auto_LiRPA (Xu et al. 2020): ``ibp``, ``crown-ibp``, ``crown``,
``alpha-crown``.

Every certifier bounds the logit margins a guarantee asks for: the lower bound of ``C @ f(x')``
over the ``norm``-ball, where each row of the spec matrix ``C`` is ``e_{o_r} - e_{o_s}`` for a
candidate rank ``r`` and an opponent rank ``s > r`` (:mod:`relaxplug.lirpa.spec`). Only the rows a
request needs are built, padded to the batch's largest count, and bounded in chunks of rows (one
``compute_bounds`` per chunk; CROWN's intermediate-layer bounds are computed once and reused by
the later chunks), so memory stays bounded for 100-200 classes.

``spec="logit"`` instead bounds logits one at a time (lower bounds of the ``K`` candidates, upper
bounds of the ``n - 1`` others: ``K + n - 1`` one-sided rows) and combines ``lower_j - upper_i``:
looser, but much cheaper when ``K n`` pair rows outnumber them.

The model is converted by :func:`relaxplug.lirpa.bounded_module` (exact lowering, the L2 input
guard, a cache valid only for the exact computation, refusal of data-dependent control flow and
batch mixing); every batch is checked against the converted copy. Bounds are computed in float64
on a float64 copy of the conversion (:meth:`relaxplug.lirpa.Bounded.wide`), and every bound is
lowered by the deterministic floating-point allowance of the float32 forward pass
(:mod:`relaxplug.lirpa.tolerance`, intermediate magnitudes) and
:func:`relaxplug.certifiers.base.rounding_allowance`, then rounded down to the logits' dtype. Both auto_LiRPA 0.3 and 0.7.x work; their API
differences live in :mod:`relaxplug.lirpa.api`.

Importing this module registers the certifiers when auto_LiRPA is installed and raises
``ImportError`` (with the install command) otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from relaxplug import lirpa as glue
from relaxplug.adapters import Guarantee, MarginRequest
from relaxplug.lirpa import api
from relaxplug.lirpa.cache import Bounded
from relaxplug.lirpa.forms import forward_tolerance
from relaxplug.lirpa.spec import spec_matrix, spec_rows
from relaxplug.lirpa.tolerance import error_model

from relaxplug.certifiers.base import Certifier, register_certifier, rounding_allowance

if not glue.available():  # checked without importing it
    raise ImportError(f"auto_LiRPA is not installed: {glue.AUTO_LIRPA_INSTALL_HINT}", name="auto_LiRPA")

__all__ = [
    "LirpaCertifier",
    "IBPCertifier",
    "CrownIBPCertifier",
    "CrownCertifier",
    "AlphaCrownCertifier",
    "DEFAULT_CHUNK_ELEMENTS",
]

#: default budget of one ``compute_bounds`` call, in tensor elements: spec rows per call are
#: ``budget // (batch * widest activation)`` (IBP: ``batch * width of the last layer's input``).
#: Measured on 2 CPU cores (CROWN-IBP, CIFAR net, patches mode): calls of 64-256 point-rows are
#: fastest; much larger ones are several times slower. CUDA devices get 8x the budget.
DEFAULT_CHUNK_ELEMENTS = 2**23
CUDA_CHUNK_FACTOR = 8

SPEC_MODES = ("pairwise", "anchor", "logit")
CONV_MODES = ("patches", "matrix")


# ----------------------------------------------------------------------------- certifiers


class LirpaCertifier(Certifier):
    """auto_LiRPA bound propagation with method ``method`` (set by the registered subclasses).

    Args:
        spec: ``"pairwise"`` (default): one spec row ``e_j - e_i`` per needed pair, the tightest;
            ``"anchor"``: bound the top-1 margins ``f_{o_0} - f_{o_s}`` and ``f_{o_r} - f_{o_0}``
            (``n - 1 + K - 1`` rows, about the cost of top-1) and combine them as
            ``lower(o_r, o_s) >= lower(o_r - o_0) + lower(o_0 - o_s)``: exact for ``k = 1``, looser
            for larger sets;
            ``"logit"``: bound each logit once and use ``lower_j - upper_i`` (looser; ``K + n - 1``
            one-sided rows instead of up to ``K n - K(K+1)/2`` pair rows).
        radius_bisection: number of bisection steps of :meth:`radius`; 0 (default) computes no
            radius (``rp.certify`` then reports NaN).
        chunk_rows: spec rows per ``compute_bounds`` call; default from a memory budget of
            :data:`DEFAULT_CHUNK_ELEMENTS` tensor elements.
        conv_mode: auto_LiRPA's convolution mode, ``"patches"`` (default) or ``"matrix"`` (far more
            memory on images).
    """

    name = "lirpa"
    method = "backward"
    norms = (2.0, float("inf"))
    #: methods whose intermediate-layer bounds are expensive and reused across spec chunks
    reuse_intermediate = False
    #: run ``compute_bounds`` under ``torch.no_grad`` (a subclass optimizing bounds with
    #: gradients, such as alpha-CROWN, sets it to False)
    no_grad = True
    #: the options :meth:`__init__` accepts (named in the error for an unknown one)
    option_names: tuple[str, ...] = ("spec", "radius_bisection", "chunk_rows", "conv_mode")

    def __init__(self, spec: str = "pairwise", radius_bisection: int = 0, chunk_rows: int | None = None,
                 conv_mode: str = "patches", **unknown: Any):
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for certifier {self.name!r}; known: "
                             f"{', '.join(self.option_names)}")
        if spec not in SPEC_MODES:
            raise ValueError(f"spec must be one of {SPEC_MODES}, got {spec!r}")
        if isinstance(radius_bisection, bool) or not isinstance(radius_bisection, int) or radius_bisection < 0:
            raise ValueError(f"radius_bisection must be an integer >= 0, got {radius_bisection!r}")
        if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
            raise ValueError(f"chunk_rows must be a positive integer or None, got {chunk_rows!r}")
        if conv_mode not in CONV_MODES:
            raise ValueError(f"conv_mode must be one of {CONV_MODES}, got {conv_mode!r}")
        self.spec = spec
        self.radius_bisection = radius_bisection
        self.chunk_rows = chunk_rows
        self.conv_mode = conv_mode
        #: spec rows bounded per point by the last :meth:`bounds` call (per request; diagnostics)
        self.last_rows: list[int] = []
        self._device_type = "cpu"

    @property
    def label(self) -> str:
        """Name for tables: ``crown``, or ``crown[logit]`` in logit spec mode."""
        return self.name if self.spec == "pairwise" else f"{self.name}[{self.spec}]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, radius_bisection={self.radius_bisection})"

    # -- bound computation

    def _rows_per_call(self, entry: Bounded, batch: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        width = entry.head_width if self.method == "IBP" else entry.width
        budget = DEFAULT_CHUNK_ELEMENTS * (CUDA_CHUNK_FACTOR if self._device_type == "cuda" else 1)
        return max(1, budget // max(1, batch * width))

    def _compute(self, entry: Bounded, x: Tensor, eps: float, norm: float, specs):
        """For each ``(C, lower, upper)`` of ``specs`` (one spec chunk and the sides it needs),
        yield ``(lower bound or None, upper bound or None)``; one ``compute_bounds`` call each."""
        bounded = entry.wide()
        interm = None
        for c, lower, upper in specs:
            inputs = (api.bounded_tensor(x, eps, norm),)
            lb, ub = self._bound(bounded, inputs, c, lower, upper, interm)
            if self.reuse_intermediate and interm is None:
                interm = _intermediate_bounds(bounded)
            yield (lb.detach() if lower else None), (ub.detach() if upper else None)

    def _bound(self, bounded, inputs, c: Tensor, lower: bool, upper: bool, interm, method: str | None = None):
        """One ``compute_bounds`` call with ``method`` (default :attr:`method`): ``(lower bound,
        upper bound)`` of ``c @ f`` (``None`` for a side not asked for)."""
        with torch.no_grad() if self.no_grad else torch.enable_grad():
            return api.compute_bounds(bounded, inputs, C=c, method=method or self.method, bound_lower=lower,
                                      bound_upper=upper, interm=interm)

    def _pairwise(self, entry: Bounded, x: Tensor, request: MarginRequest, norm: float, dtype) -> Tensor:
        order = request.order
        batch, n = order.shape
        k = request.n_candidates
        rows = spec_rows(request, n)
        self.last_rows.append(rows.rows)
        flat = torch.full((batch, k * n + 1), math.inf, dtype=dtype, device=order.device)
        if rows.rows == 0:
            return flat[:, :-1].view(batch, k, n)
        step = self._rows_per_call(entry, batch)
        starts = list(range(0, rows.rows, step))
        specs = ((spec_matrix(order, rows, a, min(a + step, rows.rows), x.dtype), True, False) for a in starts)
        for a, (lb, _) in zip(starts, self._compute(entry, x, request.eps, norm, specs)):
            b = a + lb.shape[1]
            index = rows.rank_row[:, a:b] * n + rows.rank_col[:, a:b]
            index = torch.where(rows.valid[:, a:b], index, torch.full_like(index, k * n))
            flat.scatter_(1, index, lb.to(dtype))
        return flat[:, :-1].view(batch, k, n)

    def _anchor(self, entry: Bounded, x: Tensor, request: MarginRequest, norm: float, dtype) -> Tensor:
        """Rows ``e_{o_0} - e_{o_s}`` (``s >= 1``) and ``e_{o_r} - e_{o_0}`` (``1 <= r < K``, only
        where needed), all lower-bounded; since ``f_{o_r} - f_{o_s} = (f_{o_r} - f_{o_0}) +
        (f_{o_0} - f_{o_s})``, ``lower[r, s] = A_r + B_s`` with ``A_0 = 0`` is a sound bound."""
        order = request.order
        batch, n = order.shape
        k = request.n_candidates
        needed = request.needed_rows()
        extra = k - 1 if bool(needed[:, 1:].any()) else 0
        total = n - 1 + extra
        self.last_rows.append(total)
        top = order[:, :1].expand(-1, total)
        others = torch.cat([order[:, 1:], order[:, 1:k][:, :extra]], dim=1)
        sign = torch.cat([torch.ones(n - 1), -torch.ones(extra)]).to(x.dtype).to(order.device)
        step = self._rows_per_call(entry, batch)
        specs = []
        for a in range(0, total, step):
            b = min(a + step, total)
            c = torch.zeros(batch, b - a, n, dtype=x.dtype, device=order.device)
            c.scatter_(2, top[:, a:b, None], sign[None, a:b, None].expand(batch, -1, -1).contiguous())
            c.scatter_(2, others[:, a:b, None], -sign[None, a:b, None].expand(batch, -1, -1).contiguous())
            specs.append((c, True, False))
        low = torch.empty(batch, total, dtype=dtype, device=order.device)
        a = 0
        for lb, _ in self._compute(entry, x, request.eps, norm, specs):
            low[:, a:a + lb.shape[1]] = lb.to(dtype)
            a += lb.shape[1]
        from_top = torch.cat([low.new_full((batch, 1), math.inf), low[:, : n - 1]], dim=1)  # B_s, s = 0..n-1
        to_top = torch.cat([low.new_zeros(batch, 1), low[:, n - 1:]], dim=1)  # A_r, r = 0..K-1
        if to_top.shape[1] < k:
            to_top = torch.cat([to_top, low.new_full((batch, k - to_top.shape[1]), -math.inf)], dim=1)
        lower = to_top[:, :, None] + from_top[:, None, :]
        ranks_n = torch.arange(n, device=order.device)
        wanted = (ranks_n[None, :] > ranks_n[:k, None])[None] & needed[:, :, None]
        return torch.where(wanted, lower, lower.new_full((), math.inf))

    def _logit(self, entry: Bounded, x: Tensor, request: MarginRequest, norm: float, dtype) -> Tensor:
        """Lower bounds of the ``K`` candidate logits and upper bounds of the ``n - 1`` others
        (``K + n - 1`` one-sided rows), combined as ``lower_j - upper_i``."""
        order = request.order
        batch, n = order.shape
        k = request.n_candidates
        self.last_rows.append(k + n - 1)
        step = self._rows_per_call(entry, batch)
        ranks = torch.cat([order[:, :k], order[:, 1:]], dim=1)  # lower rows, then upper rows
        specs = []
        for a in range(0, k + n - 1, step):
            b = min(a + step, k + n - 1)
            c = torch.nn.functional.one_hot(ranks[:, a:b], n).to(x.dtype)
            specs.append((c, a < k, b > k))
        low = torch.full((batch, k + n - 1), -math.inf, dtype=dtype, device=order.device)
        up = torch.full((batch, k + n - 1), math.inf, dtype=dtype, device=order.device)
        a = 0
        for lb, ub in self._compute(entry, x, request.eps, norm, specs):
            width = (lb if lb is not None else ub).shape[1]
            if lb is not None:
                low[:, a:a + width] = lb.to(dtype)
            if ub is not None:
                up[:, a:a + width] = ub.to(dtype)
            a += width
        cand_low = low[:, :k]  # lower bound of f_{o_r}, r < K
        opp_up = torch.cat([up.new_full((batch, 1), math.inf), up[:, k:]], dim=1)  # upper of f_{o_s}
        lower = cand_low[:, :, None] - opp_up[:, None, :]
        ranks_n = torch.arange(n, device=order.device)
        wanted = (ranks_n[None, :] > ranks_n[:k, None])[None] & request.needed_rows()[:, :, None]
        return torch.where(wanted, lower, lower.new_full((), math.inf))

    def bounds(self, model: nn.Module, x: Tensor, logits: Tensor, requests: Sequence[MarginRequest], norm: float) -> list[Tensor]:
        self.check_norm(norm)
        self.last_rows = []
        if not requests:
            return []
        if x.shape[0] == 0:
            raise ValueError(f"certifier {self.name!r} needs a non-empty batch, got input shape {tuple(x.shape)}")
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"logits must be (B, n) with n >= 2, got {tuple(logits.shape)}")
        entry = glue.bounded_module(model, x, self.conv_mode, norm, self.options())
        if not entry.agrees(x, logits):
            glue.clear_cache()
            entry = glue.bounded_module(model, x, self.conv_mode, norm, self.options())
            if not entry.agrees(x, logits):
                raise glue.LirpaError("the model's logits on this batch differ from its converted copy's (a "
                                      "forward pass that is random, in training mode, or reads state outside "
                                      "the model); it cannot be certified")
        self._device_type = x.device.type
        wide = entry.wide()
        x_wide = x.detach().to(torch.float64)  # bounds in float64 (an exact widening of the inputs)
        out = []
        for request in requests:
            if request.eps == 0:  # the ranking computed at x itself is the claim: exact, nothing to bound
                ranked = logits.gather(1, request.order)  # (B, n)
                out.append(ranked[:, :request.n_candidates, None] - ranked[:, None, :])  # (B, K, n)
                continue
            if self.spec == "pairwise":
                lower = self._pairwise(entry, x_wide, request, norm, x_wide.dtype)
            elif self.spec == "anchor":
                lower = self._anchor(entry, x_wide, request, norm, x_wide.dtype)
            else:
                lower = self._logit(entry, x_wide, request, norm, x_wide.dtype)
            known = _intermediate_bounds(wide)  # this ball's bounds (CROWN's are tighter than IBP's)
            errors = error_model(wide, x_wide, request.eps, norm, forward_dtype=x.dtype, known=known)
            allowance = errors.margin_allowance(request.order, request.n_candidates).to(lower.dtype)
            checked = _check_contains_center(_with_allowance(lower, logits, request) - allowance, logits, request,
                                             self.name)
            out.append(_round_down(checked, logits.dtype))
        return out

    def options(self) -> tuple[tuple[str, Any], ...]:
        """Extra ``bound_opts`` of this method's ``BoundedModule`` (part of the cache key)."""
        return ()

    # -- radius

    def _certified_at(self, model, x, logits, guarantee: Guarantee, norm: float, eps: float) -> Tensor:
        requests = guarantee.requests(logits, eps)
        lowers = self.bounds(model, x, logits, requests, norm)
        return guarantee.evaluate(requests[0].order, lowers).certified

    def radius(self, model: nn.Module, x: Tensor, logits: Tensor, guarantee: Guarantee, norm: float) -> Tensor | None:
        """Certified radius by bisection on ``eps`` (only with ``radius_bisection > 0``).

        Per point: from ``eps = 1/8``, double while certified and halve while not (at most 24
        times each way) to bracket the certifier's threshold between a certified ``lo`` and a
        rejected ``hi = 2 lo``, then ``radius_bisection`` bisection steps. Points sharing a probe
        value are bounded together in one batch, so a step costs about one certification of the
        batch. Returns ``lo``, the largest probed radius at which the guarantee was certified (0
        if none): a sound certified radius, within ``hi - lo = lo 2^-steps`` of the threshold when
        the bounds are monotone in ``eps``. ``None`` without bisection steps or for guarantees
        taking several radii.
        """
        if self.radius_bisection <= 0 or guarantee.carries_radii:
            return None
        self.check_norm(norm)
        batch = x.shape[0]
        dtype = torch.float64
        lo = torch.zeros(batch, dtype=dtype)
        hi = torch.full((batch,), math.inf, dtype=dtype)
        probe = torch.zeros(batch, dtype=dtype)
        start = 0.125
        tiny = start * 2.0**-24

        def evaluate(active: Tensor) -> None:
            values = probe[active]
            for value in torch.unique(values).tolist():
                idx = active.nonzero().flatten()[values == value]
                dev_idx = idx.to(x.device)
                ok = self._certified_at(model, x[dev_idx], logits[dev_idx], guarantee, norm, value).cpu()
                lo[idx[ok]] = torch.maximum(lo[idx[ok]], torch.tensor(value, dtype=dtype))
                hi[idx[~ok]] = torch.minimum(hi[idx[~ok]], torch.tensor(value, dtype=dtype))

        # a bar on terminals (disable=None): each step costs about one certification of the batch
        with tqdm(total=25 + self.radius_bisection, desc=f"{self.name} radius", unit="step", leave=False,
                  disable=None) as bar:
            for _ in range(25):  # bracket: double while certified, halve while rejected
                active = torch.isinf(hi) | ((lo == 0) & (hi > tiny))
                if not bool(active.any()):
                    break
                probe = torch.where(torch.isinf(hi), torch.where(lo > 0, 2 * lo, torch.full_like(lo, start)), hi / 2)
                evaluate(active)
                bar.update()
            bar.total = bar.n + self.radius_bisection
            for _ in range(self.radius_bisection):
                active = torch.isfinite(hi) & (hi > lo)
                if not bool(active.any()):
                    break
                probe = torch.where(active, (lo + hi) / 2, probe)
                evaluate(active)
                bar.update()
        radius = lo.to(logits.dtype)
        # never round a certified radius up when narrowing the dtype
        radius = torch.where(radius.double() > lo, torch.nextafter(radius, torch.zeros_like(radius)), radius)
        return radius.to(logits.device)


def _intermediate_bounds(bounded) -> dict[str, tuple[Tensor, Tensor]]:
    """``{node: (lower, upper)}`` of the intermediate nodes bounded by the last call (not the
    inputs, parameters or the final node, whose bounds depend on ``C``)."""
    final = bounded.final_node()
    out = {}
    for node in bounded._modules.values():
        if node is final or type(node).__name__ in ("BoundInput", "BoundParams", "BoundBuffers"):
            continue
        lower, upper = getattr(node, "lower", None), getattr(node, "upper", None)
        if isinstance(lower, Tensor) and isinstance(upper, Tensor):
            out[node.name] = (lower.detach(), upper.detach())
    return out


def _check_contains_center(lower: Tensor, logits: Tensor, request: MarginRequest, method: str) -> Tensor:
    """``lower`` (the final bounds, rounding allowance subtracted), checked: a lower bound on the
    ball is at most the margin at its centre ``x``; bounds that exceed it (beyond ten times
    :func:`~relaxplug.lirpa.forms.forward_tolerance`) come from a graph auto_LiRPA handles wrongly
    (as 0.3 does a weight computed inside ``forward``): refuse."""
    k = request.n_candidates
    ranked = logits.detach().gather(1, request.order)
    gaps = (ranked[:, :k, None] - ranked[:, None, :]).to(lower.dtype)
    excess = torch.where(torch.isfinite(lower), lower - gaps, torch.zeros_like(lower))
    if bool((excess > 10.0 * forward_tolerance(logits)).any()):
        raise api.LirpaError(
            f"{method}: auto_LiRPA {api.version_string()} returned a margin bound above the margin at the ball's "
            f"centre (by {float(excess.max()):.3g}); it bounds this model wrongly (a weight computed inside "
            "forward?), so it cannot be certified"
        )
    return lower


def _round_down(value: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` in ``dtype``, never rounded up (a lower bound stays a lower bound)."""
    narrow = value.to(dtype)
    return torch.where(narrow.to(value.dtype) > value, torch.nextafter(narrow, narrow.new_full((), -math.inf)), narrow)


def _with_allowance(lower: Tensor, logits: Tensor, request: MarginRequest) -> Tensor:
    """Subtract the rounding allowance, scaled by the size of each bound's perturbation term
    ``|f_j(x) - f_i(x) - lower|``; NaN bounds become ``-inf`` (never certified)."""
    k = request.n_candidates
    ranked = logits.detach().gather(1, request.order)
    gaps = ranked[:, :k, None] - ranked[:, None, :]
    lower = torch.nan_to_num(lower, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    finite = torch.isfinite(lower)
    extra = torch.where(finite, (gaps - lower).abs(), torch.zeros_like(lower))
    return lower - rounding_allowance(logits, extra)


@register_certifier("ibp")
class IBPCertifier(LirpaCertifier):
    """Interval bound propagation (Gowal et al. 2018): the cheapest, loosest bounds."""

    name = "ibp"
    method = "IBP"


@register_certifier("crown-ibp")
class CrownIBPCertifier(LirpaCertifier):
    """CROWN-IBP (Zhang et al. 2020): IBP for intermediate layers, CROWN for the margins."""

    name = "crown-ibp"
    method = "CROWN-IBP"


@register_certifier("crown")
class CrownCertifier(LirpaCertifier):
    """CROWN (Zhang et al. 2018): linear relaxations backward through every layer."""

    name = "crown"
    method = "CROWN"
    reuse_intermediate = True


@register_certifier("alpha-crown")
class AlphaCrownCertifier(LirpaCertifier):
    """alpha-CROWN (Xu et al. 2021, "Fast and Complete"): CROWN whose lower ReLU relaxation slopes
    ``alpha in [0, 1]`` are optimised by projected gradient ascent on the bounds themselves
    (auto_LiRPA's ``CROWN-Optimized``, intermediate layers included). Every ``alpha`` gives a valid
    relaxation, so every iterate is a sound bound; auto_LiRPA keeps the best one per spec row, which
    is never looser than CROWN's.

    Args:
        iterations: gradient steps per ``compute_bounds`` call (auto_LiRPA's ``iteration``).
        lr: step size of the slopes (auto_LiRPA's ``lr_alpha``).

    auto_LiRPA 0.3 needs two things for it on current torch: its sparse-alpha bookkeeping off
    (it fails with a shape mismatch even on dense ReLU nets), and the ReLU-slope gradient shim of
    :mod:`relaxplug._compat` (without it no slope moves and the result is CROWN's). 0.7.x runs
    natively (:func:`relaxplug.lirpa.api.alpha_bound_options`). Each iteration costs about 1.5
    CROWN passes (measured: 30x CROWN at 20 iterations on the digits nets, 0.3).
    """

    name = "alpha-crown"
    method = "CROWN-Optimized"
    no_grad = False
    reuse_intermediate = False
    option_names = LirpaCertifier.option_names + ("iterations", "lr")

    def __init__(self, iterations: int = 20, lr: float = 0.5, **options: Any):
        super().__init__(**options)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.iterations = iterations
        self.lr = float(lr)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(spec={self.spec!r}, radius_bisection={self.radius_bisection}, "
                f"iterations={self.iterations}, lr={self.lr:g})")

    def options(self) -> tuple[tuple[str, Any], ...]:
        return api.alpha_bound_options()

    def _bound(self, bounded, inputs, c: Tensor, lower: bool, upper: bool, interm, method: str | None = None):
        """auto_LiRPA optimises one side per call: lower and upper bounds are two calls. A model
        with no activation to relax (a linear model) has nothing to optimise: that is CROWN."""
        if not getattr(bounded, "optimizable_activations", None):
            return super()._bound(bounded, inputs, c, lower, upper, interm, method="CROWN")
        return (api.optimized_bound(bounded, inputs, c, True, self.iterations, self.lr) if lower else None,
                api.optimized_bound(bounded, inputs, c, False, self.iterations, self.lr) if upper else None)

"""Bound-propagation certifiers through auto_LiRPA (Xu et al. 2020): ``ibp``, ``crown-ibp``, ``crown``,
``alpha-crown``.

Every certifier bounds the logit margins a guarantee asks for (DESIGN.md): the lower bound of
``C @ f(x')`` over the ``norm``-ball, where each row of the spec matrix ``C`` is
``e_{o_r} - e_{o_s}`` for a candidate rank ``r`` and an opponent rank ``s > r``. Only the rows a
request needs are built (``MarginRequest.needed_rows``: at most ``K n - K(K+1)/2`` per point, fewer
for affinity guarantees), padded with zero rows to the batch's largest count, and bounded in
chunks of rows (one ``compute_bounds`` per chunk; CROWN's intermediate-layer bounds are computed
once and reused by the later chunks), so memory stays bounded for 100-200 classes.

``spec="logit"`` instead bounds logits one at a time (lower bounds of the ``K`` candidates, upper
bounds of the ``n - 1`` others: ``K + n - 1`` one-sided rows) and combines ``lower_j - upper_i``:
looser, but much cheaper when ``K n`` pair rows outnumber them.

Before bounding, the model is *lowered*: every submodule with a ``lirpa_form(input_shape)``
(:class:`relaxplug.models.layers.MinMax`, :class:`relaxplug.models.layers.InvertibleDownsample`) is replaced by
that exact rewrite in a private deep copy, which is checked against the original on an example
input. The ``BoundedModule`` is cached per (model, input shape, device, dtype, conv mode) and
rebuilt whenever the model's parameters or buffers differ from the copy it was built from, so
it is never stale. Bounds are computed in the model's dtype; the allowance of
:func:`relaxplug.certifiers.base.rounding_allowance` (scaled by the size of the bound's
perturbation term) is subtracted from each of them.

L2 balls: auto_LiRPA 0.3 represents an L2 input as the point interval ``(x, x)`` tagged with the
perturbation, and only linear and convolution layers read the tag. A model whose input first
meets any other layer (an activation, a residual ``add``, ``sub``/``div``) would be bounded as if
the ball were a point: attacks break such certificates, for IBP, CROWN-IBP and CROWN alike. Such
models are bounded behind a fixed identity linear layer instead (sound; IBP slightly looser);
see :func:`_l2_input_is_safe`. :class:`relaxplug.models.layers.Normalize` (no ``lirpa_form``) is
lowered to a diagonal affine map, on which auto_LiRPA's CROWN also works.

Importing this module registers the certifiers when auto_LiRPA is installed and raises
``ImportError`` (with the install command) otherwise; auto_LiRPA itself, with the shims of
:mod:`relaxplug._compat`, is imported on first use.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import logging
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxplug._compat import AUTO_LIRPA_INSTALL_HINT, import_auto_lirpa, onnx_shape_inference
from relaxplug.adapters import Guarantee, MarginRequest
from relaxplug.models.layers import Normalize

from relaxplug.certifiers.base import Certifier, register_certifier, rounding_allowance

if importlib.util.find_spec("auto_LiRPA") is None:  # checked without importing it
    raise ImportError(f"auto_LiRPA is not installed: {AUTO_LIRPA_INSTALL_HINT}", name="auto_LiRPA")

logger = logging.getLogger(__name__)

__all__ = [
    "LirpaCertifier",
    "IBPCertifier",
    "CrownIBPCertifier",
    "CrownCertifier",
    "AlphaCrownCertifier",
    "SpecRows",
    "spec_rows",
    "spec_matrix",
    "lower_for_lirpa",
    "bounded_module",
    "clear_cache",
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


# ----------------------------------------------------------------------------- spec rows


@dataclass(frozen=True)
class SpecRows:
    """The pairs a request needs, per point: row ``t`` of point ``b`` bounds
    ``f_{o_r} - f_{o_s}`` with ``r = rank_row[b, t]``, ``s = rank_col[b, t]``; rows with
    ``valid[b, t] = False`` pad the batch to a common row count and are ignored.

    Shape: all ``(B, R)`` with ``R`` the largest per-point count of needed pairs.
    """

    rank_row: Tensor
    rank_col: Tensor
    valid: Tensor

    @property
    def rows(self) -> int:
        return int(self.rank_row.shape[1])


def spec_rows(request: MarginRequest, n_classes: int) -> SpecRows:
    """Needed pairs ``(r, s)``: ``s > r`` and ``request.needed_rows()[b, r]``, compacted per point."""
    needed = request.needed_rows()
    k = request.n_candidates
    device = needed.device
    r, s = torch.triu_indices(k, n_classes, offset=1, device=device)  # every r < K, s > r
    valid = needed[:, r]  # (B, P)
    if valid.shape[0] == 0:
        empty = torch.zeros(0, 0, dtype=torch.long, device=device)
        return SpecRows(empty, empty, empty.bool())
    width = int(valid.sum(dim=1).max())
    # needed pairs first, in (r, s) order; then padding
    perm = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :width]
    return SpecRows(r[perm], s[perm], valid.gather(1, perm))


def spec_matrix(order: Tensor, rows: SpecRows, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """``(B, stop - start, n)`` spec matrix of rows ``start:stop``: ``e_{o_r} - e_{o_s}``, zero rows
    for padding."""
    batch, n = order.shape
    j = order.gather(1, rows.rank_row[:, start:stop])
    i = order.gather(1, rows.rank_col[:, start:stop])
    value = rows.valid[:, start:stop].to(dtype)[..., None]
    c = torch.zeros(batch, stop - start, n, dtype=dtype, device=order.device)
    c.scatter_(2, j[..., None], value)
    c.scatter_(2, i[..., None], -value)
    return c


# ----------------------------------------------------------------------------- lowering and cache


def _norm_value(norm: float) -> float:
    return math.inf if float(norm) == math.inf else float(norm)


class _AffineForm(nn.Module):
    """``x * scale + shift`` per channel (dim 1) as a fixed diagonal linear map or 1x1 convolution,
    so auto_LiRPA sees a plain ``linear``/``conv`` (used for :class:`relaxplug.models.layers.Normalize`,
    which has no ``lirpa_form``, and, with ``scale = 1``, as the identity prefix of the L2 guard)."""

    def __init__(self, input_shape: Sequence[int], scale: Tensor, shift: Tensor | None):
        super().__init__()
        channels = int(input_shape[0])
        scale = scale.detach().reshape(-1).expand(channels)
        weight = torch.diag(scale.clone())
        self.spatial = len(input_shape) == 3
        if self.spatial:
            weight = weight[:, :, None, None]
        elif len(input_shape) != 1:
            raise ValueError(f"supports (C,) or (C, H, W) inputs, got {tuple(input_shape)}")
        self.register_buffer("weight", weight.contiguous())
        # a (zero) bias keeps dense maps a ``Gemm``/BoundLinear node (a bias-free one traces to MatMul)
        bias = torch.zeros(channels, dtype=weight.dtype) if shift is None else shift.detach().reshape(-1).expand(channels)
        self.register_buffer("bias", bias.clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial:
            return F.conv2d(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def _fallback_form(module: nn.Module, input_shape: Sequence[int]) -> nn.Module | None:
    """Exact rewrites for relaxplug layers without a ``lirpa_form`` (auto_LiRPA 0.3's CROWN fails
    on Normalize's broadcast ``sub``/``div``)."""
    if isinstance(module, Normalize) and len(input_shape) in (1, 3):
        return _AffineForm(input_shape, 1.0 / module.std, -module.mean / module.std)
    return None


def lower_for_lirpa(model: nn.Module, example: Tensor) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every submodule that has ``lirpa_form`` replaced
    by ``lirpa_form(input_shape)`` (its exact auto_LiRPA-friendly rewrite; ``Normalize`` becomes
    a diagonal affine map).

    Input shapes come from a forward-hook pass on ``example`` (``(B, ...)``). The copy is checked
    against ``model`` on ``example``; a mismatch raises ``RuntimeError``.
    """
    lowered, _, _ = _lower(model, example)
    return lowered


def _lower(model: nn.Module, example: Tensor) -> tuple[nn.Module, int, int]:
    """Returns ``(lowered copy, widest activation per point, input width of the last module)``."""
    shapes: dict[str, tuple[int, ...]] = {}
    widths: list[int] = []
    last_input = [0]
    handles = []

    def record_shape(name: str):
        def hook(module, inputs):
            shape = tuple(int(d) for d in inputs[0].shape[1:])
            if shapes.setdefault(name, shape) != shape:
                raise ValueError(f"module {name or type(module).__name__} is called on inputs of shapes "
                                 f"{shapes[name]} and {shape}; its lirpa_form needs one shape")
        return hook

    def record_width(module, inputs, output):
        if isinstance(output, Tensor):
            widths.append(output[0].numel())
        if inputs and isinstance(inputs[0], Tensor):
            last_input[0] = inputs[0][0].numel()

    was_training = model.training
    model.eval()
    try:
        for name, module in model.named_modules():
            if callable(getattr(module, "lirpa_form", None)) or isinstance(module, Normalize):
                handles.append(module.register_forward_pre_hook(record_shape(name)))
            if not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(record_width))
        with torch.no_grad():
            reference = model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    lowered = copy.deepcopy(model).eval()
    done: list[str] = []
    for name in sorted(shapes, key=lambda name: name.count(".") if name else -1):  # outermost first
        if any(d == "" or name == d or name.startswith(d + ".") for d in done):
            continue  # inside a module that was already rewritten
        module = lowered.get_submodule(name)
        form = module.lirpa_form(shapes[name]) if callable(getattr(module, "lirpa_form", None)) \
            else _fallback_form(module, shapes[name])
        if form is None:
            continue
        form = form.to(device=example.device, dtype=example.dtype).eval()
        if name == "":
            lowered = form
        else:
            parent, _, child = name.rpartition(".")
            setattr(lowered.get_submodule(parent), child, form)
        done.append(name)

    with torch.no_grad():
        out = lowered(example)
    scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
    tol = (1e-9 if example.dtype == torch.float64 else 1e-4) * (1.0 + scale)
    if out.shape != reference.shape or not torch.allclose(out, reference, rtol=0.0, atol=tol):
        raise RuntimeError("the auto_LiRPA form of the model (lirpa_form rewrites) does not reproduce its "
                           "output; a layer's lirpa_form is not exact")
    width = max(widths, default=int(example[0].numel()))
    return lowered, max(width, int(example[0].numel())), max(last_input[0], 1)


class _IdentityPrefix(nn.Module):
    """``model(I x)`` with ``I`` a fixed identity linear map (1x1 convolution on images)."""

    def __init__(self, input_shape: Sequence[int], model: nn.Module, like: Tensor):
        super().__init__()
        shape = tuple(input_shape)
        if len(shape) not in (1, 3):
            raise ValueError(f"cannot guard L2 inputs of shape {shape}: only (d,) and (C, H, W) are supported")
        self.identity = _AffineForm(shape, torch.ones(shape[0], dtype=like.dtype), None).to(like)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.identity(x))


#: auto_LiRPA node types that read an L2 input perturbation correctly (first argument only) and
#: shape-only nodes that pass it on unchanged (norm preserving)
_L2_READERS = frozenset({"BoundLinear", "BoundConv"})
_L2_PASSERS = frozenset({"BoundFlatten", "BoundReshape"})


def _l2_input_is_safe(bounded) -> bool:
    """Whether every use of the perturbed input reads it through a linear or convolution layer.

    auto_LiRPA 0.3 represents an L2 input as the degenerate interval ``(x, x)`` tagged with the
    perturbation; only ``linear``/``conv`` read the tag. Any other node fed by the input (an
    activation, ``add`` of a residual, ``sub``/``div``, ...) bounds it as if the ball were a point,
    which is unsound. Such models are bounded behind a fixed identity layer instead.
    """
    nodes = list(bounded._modules.values())
    users: dict[int, list[tuple[Any, int]]] = {}
    for node in nodes:
        for index, parent in enumerate(getattr(node, "inputs", []) or []):
            users.setdefault(id(parent), []).append((node, index))
    stack = [n for n in nodes if type(n).__name__ == "BoundInput"]
    while stack:
        node = stack.pop()
        for user, index in users.get(id(node), []):
            kind = type(user).__name__
            if kind in _L2_READERS and index == 0:
                continue
            if kind in _L2_PASSERS and index == 0:
                stack.append(user)
                continue
            return False
    return True


@dataclass
class _Bounded:
    bounded: Any  # auto_LiRPA.BoundedModule
    lowered: nn.Module
    snapshot: dict[str, Tensor]  # the original's state when the copy was made
    width: int
    head_width: int
    l2_safe: bool  # see _l2_input_is_safe

    def matches(self, model: nn.Module) -> bool:
        state = model.state_dict()
        if state.keys() != self.snapshot.keys():
            return False
        for key, value in state.items():
            saved = self.snapshot[key]
            if value.shape != saved.shape or value.dtype != saved.dtype or value.device != saved.device:
                return False
            if not torch.equal(value, saved):
                return False
        return True


#: model -> {(input shape, device, dtype, conv mode, identity prefix): _Bounded}; entries die with
#: their model
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Bounded]]" = weakref.WeakKeyDictionary()
_CACHE_PER_MODEL = 4


def clear_cache() -> None:
    """Forget every cached ``BoundedModule``."""
    _CACHE.clear()


def _build(model: nn.Module, x: Tensor, conv_mode: str, identity_prefix: bool,
           options: tuple[tuple[str, Any], ...] = ()) -> _Bounded:
    lirpa = import_auto_lirpa()
    bound_opts = {"conv_mode": conv_mode, **dict(options)}
    example = x[:1].detach()
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lowered, width, head_width = _lower(model, example)
    if identity_prefix:
        lowered = _IdentityPrefix(example.shape[1:], lowered, example).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            bounded = lirpa.BoundedModule(lowered, (example,), bound_opts=dict(bound_opts), device=x.device)
            if not _batch_independent(bounded, lowered, example):
                # x.view(x.size(0), -1) was converted for batch 1: convert with dynamic shapes
                with onnx_shape_inference(False):
                    bounded = lirpa.BoundedModule(lowered, (example,), bound_opts=dict(bound_opts), device=x.device)
        except Exception as error:
            raise RuntimeError(f"auto_LiRPA cannot convert the model ({type(error).__name__}: {error}); "
                               "only layers with auto_LiRPA support (or a lirpa_form rewrite) can be bounded") from error
    if not _batch_independent(bounded, lowered, example):
        raise RuntimeError("auto_LiRPA's form of the model does not reproduce it on a batch of two inputs "
                           "(a shape fixed at conversion time?); it cannot be bounded")
    bounded.eval()
    return _Bounded(bounded, lowered, snapshot, width, head_width, _l2_input_is_safe(bounded))


def _batch_independent(bounded, lowered: nn.Module, example: Tensor) -> bool:
    """Whether the converted ``bounded`` reproduces ``lowered`` on a batch of two (``example`` and
    a shifted copy): a model flattening with ``x.view(x.size(0), -1)`` can be converted with the
    example's batch size 1 fixed into the reshape (:func:`relaxplug._compat.onnx_shape_inference`)."""
    probe = torch.cat([example, example + 0.5 * (example.detach().abs().amax() + 1.0)])
    try:
        with torch.no_grad():
            out = bounded(probe)
            reference = lowered(probe)
    except Exception:  # auto_LiRPA's forward fails on a frozen shape (RuntimeError, IndexError, ...)
        return False
    if not isinstance(out, Tensor) or out.shape != reference.shape:
        return False
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    tol = (1e-9 if example.dtype == torch.float64 else 1e-4) * (1.0 + scale)
    return bool(torch.allclose(out, reference, rtol=0.0, atol=tol))


def bounded_module(model: nn.Module, x: Tensor, conv_mode: str = "patches", norm: float = math.inf,
                   options: tuple[tuple[str, Any], ...] = ()) -> _Bounded:
    """The cached auto_LiRPA form of ``model`` for inputs shaped like ``x``, rebuilt when the
    model's state (parameters and buffers) differs from the one it was built from. For L2 balls,
    a model whose input is not read by a linear layer first is bounded behind an identity layer
    (:func:`_l2_input_is_safe`). ``options``: extra top-level ``bound_opts`` (flat values), part
    of the cache key."""
    entry = _cached(model, x, conv_mode, identity_prefix=False, options=options)
    if float(norm) != math.inf and not entry.l2_safe:
        entry = _cached(model, x, conv_mode, identity_prefix=True, options=options)
        if not entry.l2_safe:  # pragma: no cover - the prefix is a linear layer
            raise RuntimeError("cannot make the L2 input perturbation sound for auto_LiRPA")
    return entry


def _cached(model: nn.Module, x: Tensor, conv_mode: str, identity_prefix: bool,
            options: tuple[tuple[str, Any], ...] = ()) -> _Bounded:
    key = (tuple(x.shape[1:]), str(x.device), x.dtype, conv_mode, identity_prefix, options)
    entries = _CACHE.get(model)
    if entries is None:
        entries = {}
        _CACHE[model] = entries
    entry = entries.get(key)
    if entry is None or not entry.matches(model):
        entries.pop(key, None)
        entry = _build(model, x, conv_mode, identity_prefix, options)
        while len(entries) >= _CACHE_PER_MODEL:
            entries.pop(next(iter(entries)))
        entries[key] = entry
    return entry


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
    #: extra flat auto_LiRPA ``bound_opts`` the method's ``BoundedModule`` is built with
    bound_options: tuple[tuple[str, Any], ...] = ()
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

    def _rows_per_call(self, entry: _Bounded, batch: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        width = entry.head_width if self.method == "IBP" else entry.width
        budget = DEFAULT_CHUNK_ELEMENTS * (CUDA_CHUNK_FACTOR if self._device_type == "cuda" else 1)
        return max(1, budget // max(1, batch * width))

    def _compute(self, entry: _Bounded, x: Tensor, eps: float, norm: float, specs):
        """For each ``(C, lower, upper)`` of ``specs`` (one spec chunk and the sides it needs),
        yield ``(lower bound or None, upper bound or None)``; one ``compute_bounds`` call each."""
        lirpa = import_auto_lirpa()
        bounded = entry.bounded
        interm = None
        final = None
        for c, lower, upper in specs:
            ptb = lirpa.PerturbationLpNorm(norm=_norm_value(norm), eps=float(eps))
            inputs = (lirpa.BoundedTensor(x, ptb),)
            lb, ub = self._bound(bounded, inputs, c, lower, upper, interm)
            if self.reuse_intermediate and interm is None:
                final = bounded.final_node() if final is None else final
                interm = _intermediate_bounds(bounded, final)
            yield (lb.detach() if lower else None), (ub.detach() if upper else None)

    def _bound(self, bounded, inputs, c: Tensor, lower: bool, upper: bool, interm, method: str | None = None):
        """One ``compute_bounds`` call with ``method`` (default :attr:`method`): ``(lower bound,
        upper bound)`` of ``c @ f`` (``None`` for a side not asked for)."""
        with torch.no_grad() if self.no_grad else torch.enable_grad():
            return bounded.compute_bounds(x=inputs, C=c, method=method or self.method, bound_lower=lower,
                                          bound_upper=upper, intermediate_layer_bounds=interm)

    def _pairwise(self, entry: _Bounded, x: Tensor, request: MarginRequest, norm: float, dtype) -> Tensor:
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

    def _anchor(self, entry: _Bounded, x: Tensor, request: MarginRequest, norm: float, dtype) -> Tensor:
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

    def _logit(self, entry: _Bounded, x: Tensor, request: MarginRequest, norm: float, dtype) -> Tensor:
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
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise ValueError(f"logits must be (B, n) with n >= 2, got {tuple(logits.shape)}")
        entry = bounded_module(model, x, self.conv_mode, norm, self.bound_options)
        self._device_type = x.device.type
        out = []
        for request in requests:
            if self.spec == "pairwise":
                lower = self._pairwise(entry, x.detach(), request, norm, logits.dtype)
            elif self.spec == "anchor":
                lower = self._anchor(entry, x.detach(), request, norm, logits.dtype)
            else:
                lower = self._logit(entry, x.detach(), request, norm, logits.dtype)
            out.append(_with_allowance(lower, logits, request))
        return out

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
        if self.radius_bisection <= 0 or len(guarantee.radii(1.0)) != 1:
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

        for _ in range(25):  # bracket: double while certified, halve while rejected
            active = torch.isinf(hi) | ((lo == 0) & (hi > tiny))
            if not bool(active.any()):
                break
            probe = torch.where(torch.isinf(hi), torch.where(lo > 0, 2 * lo, torch.full_like(lo, start)), hi / 2)
            evaluate(active)
        for _ in range(self.radius_bisection):
            active = torch.isfinite(hi) & (hi > lo)
            if not bool(active.any()):
                break
            probe = torch.where(active, (lo + hi) / 2, probe)
            evaluate(active)
        radius = lo.to(logits.dtype)
        # never round a certified radius up when narrowing the dtype
        radius = torch.where(radius.double() > lo, torch.nextafter(radius, torch.zeros_like(radius)), radius)
        return radius.to(logits.device)


def _intermediate_bounds(bounded, final) -> dict[str, tuple[Tensor, Tensor]]:
    """``{node: (lower, upper)}`` of the intermediate nodes bounded by the last call (not the
    inputs, parameters or the final node, whose bounds depend on ``C``)."""
    out = {}
    for node in bounded._modules.values():
        if node is final or type(node).__name__ in ("BoundInput", "BoundParams", "BoundBuffers"):
            continue
        lower, upper = getattr(node, "lower", None), getattr(node, "upper", None)
        if isinstance(lower, Tensor) and isinstance(upper, Tensor):
            out[node.name] = (lower.detach(), upper.detach())
    return out


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
    (it fails with a shape mismatch even on dense ReLU nets), and
    :func:`relaxplug._compat.shim_relu_alpha_gradient` (without it no slope ever moves and the
    result is CROWN's). Each iteration costs about 1.5 CROWN passes (measured: 30x CROWN at 20
iterations on the digits nets).
    """

    name = "alpha-crown"
    method = "CROWN-Optimized"
    no_grad = False
    reuse_intermediate = False
    bound_options = (("sparse_intermediate_bounds", False), ("sparse_features_alpha", False),
                     ("sparse_spec_alpha", False))
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

    def _bound(self, bounded, inputs, c: Tensor, lower: bool, upper: bool, interm, method: str | None = None):
        """auto_LiRPA optimises one side per call: lower and upper bounds are two calls. A model
        with no activation to relax (a linear model) has nothing to optimise: that is CROWN."""
        if not getattr(bounded, "optimizable_activations", None):
            return super()._bound(bounded, inputs, c, lower, upper, interm, method="CROWN")
        bounded.set_bound_opts({"optimize_bound_args": {"iteration": self.iterations, "lr_alpha": self.lr}})
        return (self._optimised(bounded, inputs, c, lower=True) if lower else None,
                self._optimised(bounded, inputs, c, lower=False) if upper else None)

    def _optimised(self, bounded, inputs, c: Tensor, lower: bool) -> Tensor:
        """The optimised lower (or upper) bound of ``c @ f``."""
        # auto_LiRPA 0.3 prints a line whenever its early stopping triggers
        with contextlib.redirect_stdout(io.StringIO()) as printed, torch.enable_grad():
            lb, ub = bounded.compute_bounds(x=inputs, C=c, method=self.method, bound_lower=lower, bound_upper=not lower)
        if printed.getvalue():
            logger.debug("auto_LiRPA: %s", printed.getvalue().strip())
        return lb if lower else ub

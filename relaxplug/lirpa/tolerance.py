"""Floating-point error model for bound propagation (docs/lirpa.md, "Floating point").

A certificate is about the float computation that runs: the model's forward pass in its own dtype
(float32), which differs from the exact network by rounding that grows with the *intermediate*
magnitudes, not only the logits (a hidden activation of 1e4 that cancels in the head leaves
logits of size 1 with rounding errors of size ``1e4 u``). The bounds themselves are computed by
auto_LiRPA in float64 on a float64 copy of the model (:mod:`relaxplug.lirpa.cache`), so they bound
the *exact* network up to float64 rounding.

Model (deterministic worst case, any summation order; Higham ch. 3; the constants of
:mod:`relaxplug.lipschitz.rounding`): a dot product of length ``d`` plus bias, computed with unit
roundoff ``u`` (and matmul/convolution inputs rounded by ``u_in``: TF32 on CUDA), is off by at most
``g_d (|W| |h~| + |b|)``, ``g_d = dot_gamma(d, u, u_in)``, where ``h~`` is the *computed* input.
Every node ``n`` of the graph commits a *local* error ``eps_n <= g_{d_n} (|W_n| (m_{n-1} + e_{n-1})
+ |b_n|)`` (elementwise ops: ``gamma_k`` of their computed values), where ``m`` bounds the exact
node's magnitude over the whole ball (``max(|lower|, |upper|)`` of the node's interval: IBP, or the
tighter CROWN bounds where the certifier computed them) and ``e`` the accumulated error, so
``m + e`` bounds the computed value. Errors arriving from the inputs of a node propagate as
through a perturbation: ``|W| e`` through linear maps and convolutions, unchanged through
1-Lipschitz elementwise ops (ReLU, max-pool, reshapes), ``m_a e_b + m_b e_a + e_a e_b`` through
products. So the accumulated error of node ``n`` is at most ``e_n = prop_n(e_inputs) + eps_n``, and
of a logit margin ``f_j - f_i`` at most ``e_j + e_i``: that is the allowance subtracted from every
margin bound (:meth:`ErrorModel.margin_allowance`).

The float64 bound computation's own rounding (relative ``~1e-16`` per operation) is covered by the
logit-scaled allowance of :func:`relaxplug.certifiers.base.rounding_allowance` that every
certifier applies: ``1e-5`` (float32 logits) times the size of the bound's perturbation term and of
the logits, that is the float64 computation may lose up to about ``1e-5 / (d 1e-16) ~ 1e8`` to
cancellation before the allowance is exceeded. A model that runs in float64 has no wider type for
its bounds: there the bound computation is assumed to round within the forward-error bound, and
the allowance doubles (``2 (e_j + e_i)``), as documented. Ops without a rule are refused
(:class:`~relaxplug.lirpa.api.LirpaError`): no error model, no certificate.

Assumptions: those of :mod:`relaxplug.lipschitz.rounding` (IEEE arithmetic, dot products and
convolutions evaluated as sums of products in some order, no Winograd/FFT convolution, library
functions within 4 ulps).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from relaxplug.lipschitz.rounding import BATCHNORM_ROUNDINGS, LIBRARY_ULPS, dot_gamma, gamma
from relaxplug.lipschitz.rounding import unit_roundoff as device_unit_roundoff
from relaxplug.lirpa.api import LirpaError, bounded_tensor, compute_bounds

__all__ = ["ERROR_RULES", "ErrorModel", "error_model", "unit_roundoff"]


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = 2^-p`` for a float type with ``p`` significand bits (float32: ``2^-24``)."""
    return float(torch.finfo(dtype).eps) / 2.0


class _Precision:
    """The forward pass's arithmetic: unit roundoff ``u`` and matmul/convolution input rounding ``u_in``."""

    def __init__(self, dtype: torch.dtype, device: torch.device | str):
        self.u, self.u_in = device_unit_roundoff(dtype, device)

    def dot(self, d: int) -> float:
        try:
            return dot_gamma(d, self.u, self.u_in)
        except ValueError as error:
            raise LirpaError(f"a sum of {d} terms is too long for a rounding-error bound ({error})") from error

    def gamma(self, k: float) -> float:
        return gamma(k, self.u)


def _linear(node, values, mags, errors, u):
    w = mags[1]
    d = int(w.shape[-1]) if type(node).__name__ != "BoundMatMul" else int(w.shape[-2])
    propagated = node.forward(errors[0], w) if len(mags) < 3 else node.forward(errors[0], w, torch.zeros_like(mags[2]))
    local = node.forward(mags[0] + errors[0], *mags[1:])  # |W| |h~| + |b|, h~ the computed input
    return propagated + u.dot(d) * local


def _conv(node, values, mags, errors, u):
    w = mags[1]
    rest = [torch.zeros_like(m) for m in mags[2:]]
    return node.forward(errors[0], w, *rest) + u.dot(int(w[0].numel())) * node.forward(mags[0] + errors[0], *mags[1:])


def _same(node, values, mags, errors, u):  # exact, 1-Lipschitz elementwise ops, reshapes, concat
    return node.forward(*[e if v is None else (e if isinstance(v, Tensor) and v.is_floating_point() and i == 0 else v)
                          for i, (v, e) in enumerate(zip(values, errors))])


def _sum_of(node, values, mags, errors, u, out):  # add, sub
    total = errors[0]
    for e in errors[1:]:
        total = total + e
    return total + u.gamma(1) * (out + total)  # |a~ + b~| <= |a + b| + e_a + e_b


def _neg(node, values, mags, errors, u):
    return errors[0]


def _mul(node, values, mags, errors, u, out):
    a, b = mags
    ea, eb = errors
    propagated = a * eb + b * ea + ea * eb
    return propagated + u.gamma(1) * (out + propagated)


def _div(node, values, mags, errors, u, out):
    if values[1] is None:
        raise LirpaError("no floating-point error model for a division by a perturbed value")
    denominator = values[1].abs()
    if bool((denominator == 0).any()):
        raise LirpaError("division by zero in the model")
    propagated = errors[0] / denominator
    return propagated + u.gamma(1) * (out + propagated)


def _avgpool(node, values, mags, errors, u, out):
    kernel = getattr(node, "kernel_size", None)
    terms = int(math.prod(kernel)) if isinstance(kernel, (list, tuple)) else int(math.prod(mags[0].shape[2:]))
    propagated = node.forward(errors[0])
    return propagated + u.gamma(terms + 2) * node.forward(mags[0] + errors[0])  # averaging |x~|


def _batchnorm(node, values, mags, errors, u, out):
    if any(t is None for t in values[1:5]):
        raise LirpaError("no floating-point error model for a batch normalization with perturbed statistics")
    x = errors[0]
    weight, bias, mean, var = (t.to(x.dtype) for t in values[1:5])
    scale = (weight / torch.sqrt(var + float(getattr(node, "eps", 1e-5)))).abs()
    view = (1, -1) + (1,) * (x.ndim - 2)
    local = (mags[0] + x + mean.abs().reshape(view)) * scale.reshape(view) + bias.abs().reshape(view)
    return x * scale.reshape(view) + u.gamma(BATCHNORM_ROUNDINGS) * local


def _smooth(node, values, mags, errors, u, out):  # tanh, sigmoid: 1-Lipschitz, within 4 ulps of f(x~)
    return errors[0] + u.gamma(LIBRARY_ULPS) * (out + errors[0] + mags[0] + errors[0])


#: auto_LiRPA node type -> rule computing the node's accumulated error bound from its inputs'
#: values (``None`` when perturbed), magnitudes and errors (rules taking ``out`` also get the
#: node's own magnitude)
ERROR_RULES: dict[str, Callable[..., Tensor]] = {
    "BoundLinear": _linear, "BoundMatMul": _linear, "BoundConv": _conv,
    "BoundRelu": _same, "BoundMaxPool": _same, "BoundFlatten": _same, "BoundReshape": _same,
    "BoundTranspose": _same, "BoundConcat": _same, "BoundUnsqueeze": _same, "BoundSqueeze": _same,
    "BoundSlice": _same, "BoundPad": _same, "BoundIdentity": _same, "BoundDropout": _same,
    "BoundNeg": _neg, "BoundAdd": _sum_of, "BoundSub": _sum_of, "BoundMul": _mul, "BoundDiv": _div,
    "BoundAveragePool": _avgpool, "BoundBatchNormalization": _batchnorm, "BoundTanh": _smooth,
    "BoundSigmoid": _smooth,
}
_NEEDS_OUT = frozenset({"BoundAdd", "BoundSub", "BoundMul", "BoundDiv", "BoundAveragePool",
                        "BoundBatchNormalization", "BoundTanh", "BoundSigmoid"})


#: nodes whose value does not depend on the input
_CONSTANT_KINDS = frozenset({"BoundParams", "BoundBuffers", "BoundConstant", "BoundPrimConstant"})
#: shape bookkeeping nodes evaluated on their exact values (auto_LiRPA 0.3 traces ``x.size(0)``)
_SHAPE_KINDS = frozenset({"BoundShape", "BoundGather", "BoundConstantOfShape"})


class ErrorModel:
    """``logit_error (B, n)``: a bound on the rounding error of every logit of the forward pass
    over a ball (module docstring); ``factor``: 1 when the bounds were computed in a wider type
    than the forward pass, 2 when in the same type (its rounding assumed within the same bound)."""

    def __init__(self, logit_error: Tensor, factor: float = 1.0):
        self.logit_error = logit_error
        self.factor = factor

    def margin_allowance(self, order: Tensor, k: int) -> Tensor:
        """``factor (e_{o_r} + e_{o_s})`` in rank form ``(B, k, n)``."""
        ranked = self.logit_error.gather(1, order)
        return self.factor * (ranked[:, :k, None] + ranked[:, None, :])


def error_model(bounded: Any, x: Tensor, eps: float, norm: float = math.inf, *,
                forward_dtype: torch.dtype | None = None, known: dict[str, tuple[Tensor, Tensor]] | None = None
                ) -> ErrorModel:
    """Bound the rounding error of every logit of the forward pass over the ``norm``-ball of radius
    ``eps`` around ``x``, for a model that runs in ``forward_dtype`` (default: ``x``'s) on ``x``'s
    device. ``bounded`` is the ``BoundedModule`` (of any float type, float64 for certification)
    whose IBP intervals bound the node magnitudes; ``known``: ``{node: (lower, upper)}`` bounds of
    the same ball computed by the certifier (CROWN), used where tighter."""
    forward_dtype = forward_dtype or x.dtype
    u = _Precision(forward_dtype, x.device)
    factor = 1.0 if torch.finfo(x.dtype).bits > torch.finfo(forward_dtype).bits else 2.0
    known = known or {}
    with torch.no_grad():
        compute_bounds(bounded, (bounded_tensor(x.detach(), eps, norm),), method="IBP")
    values: dict[str, Any] = {}  # exact values of nodes that do not depend on the input
    mags: dict[str, Any] = {}  # magnitude bounds over the ball (or exact values: shapes, indices)
    errors: dict[str, Tensor] = {}
    dynamic: set[str] = set()
    slack = 1.0 + 64 * unit_roundoff(x.dtype)  # the intervals are float: widen them by their own rounding

    def store(name: str, value: Any) -> None:
        if isinstance(value, torch.Size):  # 0.7's Shape returns a Size; its graph passes tensors on
            value = torch.tensor(value)
        if isinstance(value, Tensor) and value.is_floating_point():
            value = value.detach().double()
            mags[name] = value.abs()
        else:
            mags[name] = value
        values[name] = value

    def magnitude(node) -> Tensor:
        interval = getattr(node, "interval", None)
        if not interval or not isinstance(interval[0], Tensor):
            raise LirpaError(f"auto_LiRPA computed no interval for {type(node).__name__[len('Bound'):]} node "
                             f"{node.name}; no floating-point error model")
        mag = torch.maximum(interval[0].detach().double().abs(), interval[1].detach().double().abs())
        other = known.get(node.name)
        if other is not None and other[0].shape == mag.shape:
            mag = torch.minimum(mag, torch.maximum(other[0].detach().double().abs(), other[1].detach().double().abs()))
        return mag * slack

    def visit(node) -> None:
        name = node.name
        if name in mags:
            return
        kind = type(node).__name__
        if kind == "BoundInput":
            mags[name] = x.detach().double().abs() + float(eps)
            errors[name] = torch.zeros_like(mags[name])
            dynamic.add(name)
            return
        if kind in _CONSTANT_KINDS:
            store(name, node.forward())
            return
        parents = list(getattr(node, "inputs", []) or [])
        for parent in parents:
            visit(parent)
        if kind in _SHAPE_KINDS or not any(p.name in dynamic for p in parents):
            # shape bookkeeping reads only shapes: a magnitude has its node's shape
            store(name, node.forward(*[values.get(p.name, mags[p.name]) for p in parents]))
            return
        rule = ERROR_RULES.get(kind)
        if rule is None:
            raise LirpaError(f"no floating-point error model for the op {kind[len('Bound'):]} (relaxplug certifies "
                             f"only ops with one: {', '.join(sorted(k[len('Bound'):] for k in ERROR_RULES))})")
        in_values = [values.get(p.name) for p in parents]
        in_mags = [mags[p.name] for p in parents]
        in_errors = [errors.get(p.name, torch.zeros_like(mags[p.name]) if isinstance(mags[p.name], Tensor) else 0.0)
                     for p in parents]
        out = magnitude(node)
        error = rule(node, in_values, in_mags, in_errors, u, out) if kind in _NEEDS_OUT \
            else rule(node, in_values, in_mags, in_errors, u)
        mags[name] = out
        errors[name] = error
        dynamic.add(name)

    final = bounded.final_node()
    with torch.no_grad():
        visit(final)
    if final.name not in errors:
        raise LirpaError("the model's output does not depend on its input")
    error = errors[final.name]
    return ErrorModel(error.reshape(error.shape[0], -1), factor)

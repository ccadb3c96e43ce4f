"""Floating-point error model for bound propagation (docs/lirpa.md, "Floating point").

A certificate is about the float computation that runs, while auto_LiRPA bounds the same
network evaluated in float arithmetic of its own. Both differ from the exact network by rounding
that grows with the *intermediate* magnitudes, not only the logits: a hidden activation of 1e4
that cancels in the head leaves logits of size 1 with errors of size ``1e4 u``.

Model (standard forward error analysis, Higham ch. 3): a dot product of length ``d`` computed in
a float type with unit roundoff ``u`` is off by at most ``gamma_d |W| |h|`` with
``gamma_d = d u / (1 - d u)``. Let ``a`` be the *magnitude network*: every node evaluated on
magnitudes, ``a_input = |x| + eps`` (a bound on ``|x'|`` over the ball for every p-norm),
parameters replaced by ``|W|``, ``|b|``, subtraction by addition and each op by a monotone
upper bound of ``|op|``. Then ``|h_n(x')| <= a_n`` for every node ``n`` and every ``x'`` in the
ball, and by induction over the graph the accumulated error of node ``n`` is at most
``Gamma_n a_n`` with ``Gamma_n = max over inputs Gamma + gamma(n)`` (``Gamma`` of a product: the
sum of its factors'). The error of logit ``i`` is at most ``Gamma a_i``, of a margin
``f_j - f_i`` at most ``Gamma (a_j + a_i)``.

The allowance subtracted from every margin bound is twice that (once for the forward pass that
runs, once for the bound computation, whose interval/linear-relaxation arithmetic sums the same
products with coefficients bounded by the same magnitudes), plus the logit-scaled allowance of
:func:`relaxplug.certifiers.base.rounding_allowance` that every certifier applies. Ops without a
magnitude rule are refused (:class:`~relaxplug.lirpa.api.LirpaError`): no error model, no
certificate.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from relaxplug.lirpa.api import LirpaError

__all__ = ["ErrorModel", "error_model", "unit_roundoff", "MAGNITUDE_RULES"]


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = 2^-p`` for a float type with ``p`` significand bits (float32: ``2^-24``)."""
    return float(torch.finfo(dtype).eps) / 2.0


def _gamma(d: int, u: float) -> float:
    du = d * u
    if du >= 0.5:
        raise LirpaError(f"a sum of {d} terms is too long for a rounding-error bound at unit roundoff {u:g}")
    return du / (1.0 - du)


def _value(node) -> Tensor:
    return node.forward()


def _linear(node, inputs, mags, u):
    x, w = mags[0], mags[1]
    b = mags[2] if len(mags) > 2 else None
    d = int(w.shape[-1]) if type(node).__name__ != "BoundMatMul" else int(w.shape[-2])
    return node.forward(*[m for m in (x, w, b) if m is not None]), _gamma(d + 1, u)


def _conv(node, inputs, mags, u):
    return node.forward(*mags), _gamma(int(mags[1][0].numel()) + 1, u)


def _same(node, inputs, mags, u):  # exact ops, monotone on magnitudes (relu, max-pool, reshapes)
    return node.forward(*mags), 0.0


def _sum_of(node, inputs, mags, u):  # add; sub as add of magnitudes
    out = mags[0]
    for m in mags[1:]:
        out = out + m
    return out, _gamma(len(mags), u)


def _neg(node, inputs, mags, u):
    return mags[0], 0.0


def _mul(node, inputs, mags, u):
    return mags[0] * mags[1], _gamma(1, u)


def _div(node, inputs, mags, u):
    if inputs[1] is None:
        raise LirpaError("no floating-point error model for a division by a perturbed value")
    denominator = inputs[1].abs()
    if bool((denominator == 0).any()):
        raise LirpaError("division by zero in the model")
    return mags[0] / denominator, _gamma(1, u)


def _avgpool(node, inputs, mags, u):
    k = node.kernel_size if hasattr(node, "kernel_size") else None
    terms = int(math.prod(k)) if isinstance(k, (list, tuple)) else 9
    return node.forward(*mags), _gamma(terms + 1, u)


def _batchnorm(node, inputs, mags, u):
    x = mags[0]
    if any(t is None for t in inputs[1:5]):
        raise LirpaError("no floating-point error model for a batch normalization with perturbed statistics")
    weight, bias, mean, var = (t.to(x.dtype) for t in inputs[1:5])
    eps = float(getattr(node, "eps", 1e-5))
    scale = (weight / torch.sqrt(var + eps)).abs()
    view = (1, -1) + (1,) * (x.ndim - 2)
    out = (x + mean.abs().reshape(view)) * scale.reshape(view) + bias.abs().reshape(view)
    return out, _gamma(6, u)


def _tanh(node, inputs, mags, u):
    return torch.tanh(mags[0]), _gamma(4, u)


def _sigmoid(node, inputs, mags, u):
    return torch.ones_like(mags[0]), _gamma(4, u)


#: auto_LiRPA node type -> rule ``(node, input values, input magnitudes, u) -> (magnitude, gamma)``
MAGNITUDE_RULES: dict[str, Callable[..., tuple[Tensor, float]]] = {
    "BoundLinear": _linear, "BoundMatMul": _linear, "BoundConv": _conv,
    "BoundRelu": _same, "BoundMaxPool": _same, "BoundFlatten": _same, "BoundReshape": _same,
    "BoundTranspose": _same, "BoundConcat": _same, "BoundUnsqueeze": _same, "BoundSqueeze": _same,
    "BoundSlice": _same, "BoundPad": _same, "BoundIdentity": _same, "BoundDropout": _same,
    "BoundAdd": _sum_of, "BoundSub": _sum_of, "BoundNeg": _neg, "BoundMul": _mul, "BoundDiv": _div,
    "BoundAveragePool": _avgpool, "BoundBatchNormalization": _batchnorm,
    "BoundTanh": _tanh, "BoundSigmoid": _sigmoid,
}

#: nodes whose value does not depend on the input
_CONSTANT_KINDS = frozenset({"BoundParams", "BoundBuffers", "BoundConstant", "BoundPrimConstant"})
#: shape bookkeeping nodes evaluated on their exact values (auto_LiRPA 0.3 traces ``x.size(0)``)
_SHAPE_KINDS = frozenset({"BoundShape", "BoundGather", "BoundConstantOfShape"})


class ErrorModel:
    """``Gamma`` and the per-point magnitudes ``a`` of the logits over a ball (module docstring)."""

    def __init__(self, gamma: float, magnitude: Tensor):
        self.gamma = gamma
        self.magnitude = magnitude  # (B, n)

    def margin_allowance(self, order: Tensor, k: int) -> Tensor:
        """``2 Gamma (a_{o_r} + a_{o_s})`` in rank form ``(B, k, n)``."""
        ranked = self.magnitude.gather(1, order)
        return 2.0 * self.gamma * (ranked[:, :k, None] + ranked[:, None, :])


def error_model(bounded: Any, x: Tensor, eps: float) -> ErrorModel:
    """Evaluate the magnitude network of the ``BoundedModule`` ``bounded`` on ``|x| + eps``, in
    float64, with the unit roundoff of ``x``'s dtype."""
    u = unit_roundoff(x.dtype)
    values: dict[str, Any] = {}  # exact values of nodes that do not depend on the input (and of it)
    mags: dict[str, Any] = {}  # magnitudes (float tensors), or exact values (shapes, indices)
    gammas: dict[str, float] = {}
    dynamic: set[str] = set()

    def store(name: str, value: Any) -> None:
        if isinstance(value, Tensor) and value.is_floating_point():
            value = value.detach().double()
            mags[name] = value.abs()
        else:
            mags[name] = value
        values[name] = value

    def visit(node) -> None:
        name = node.name
        if name in mags:
            return
        kind = type(node).__name__
        if kind == "BoundInput":
            values[name] = x.detach().double()
            mags[name] = values[name].abs() + float(eps)
            gammas[name] = 0.0
            dynamic.add(name)
            return
        if kind in _CONSTANT_KINDS:
            store(name, _value(node))
            return
        parents = list(getattr(node, "inputs", []) or [])
        for parent in parents:
            visit(parent)
        if kind in _SHAPE_KINDS or not any(p.name in dynamic for p in parents):
            # shape bookkeeping reads only shapes: a magnitude has its node's shape
            store(name, node.forward(*[values.get(p.name, mags[p.name]) for p in parents]))
            return
        rule = MAGNITUDE_RULES.get(kind)
        if rule is None:
            raise LirpaError(f"no floating-point error model for the op {kind[len('Bound'):]} (relaxplug certifies "
                             f"only ops with one: {', '.join(sorted(k[len('Bound'):] for k in MAGNITUDE_RULES))})")
        inputs = [values.get(p.name) for p in parents]
        mag, gamma = rule(node, inputs, [mags[p.name] for p in parents], u)
        mags[name] = mag
        dynamic.add(name)
        previous = [gammas[p.name] for p in parents if p.name in gammas]
        gammas[name] = (sum(previous) if kind == "BoundMul" else max(previous, default=0.0)) + gamma

    final = bounded.final_node()
    with torch.no_grad():
        visit(final)
    if final.name not in mags:
        raise LirpaError("the model's output does not depend on its input")
    magnitude = mags[final.name]
    if magnitude.ndim != 2:
        magnitude = magnitude.reshape(magnitude.shape[0], -1)
    return ErrorModel(gammas[final.name], magnitude)

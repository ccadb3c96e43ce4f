"""The Lipschitz engine: L2 bounds of a network by walking its ``torch.fx`` graph.

One engine certifies and trains. The model is traced with ``torch.fx`` (modules with a
Lipschitz rule, :mod:`relaxplug.lipschitz.protocol`, are leaves), the traced graph is run once
on an example batch (shapes, constants, checks that the graph reproduces the model and never
mixes examples of the batch), and an upper bound ``L[v]`` on the L2 Lipschitz constant of every
node ``v`` *as a function of the model input* is propagated:

* composition multiplies: ``L[g(u)] <= Lip(g) * L[u]``;
* ``a + b`` / ``a - b`` add: ``L <= L[a] + L[b]`` (times ``sqrt(r)`` for an operand broadcast to
  ``r`` times its size: broadcasting copies each coordinate ``r`` times);
* ``cat`` / ``stack`` of ``f_1(x), ..., f_m(x)``: ``||[Df_1; ...; Df_m]||^2 <= sum_i L_i^2``;
* constants (parameters, buffers, shapes) have ``L = 0``; ``c * a`` and ``a / c`` for a
  constant ``c`` scale by ``max |c|`` and ``1 / min |c|``.

Per-operation constants (each a true upper bound; see :data:`ACTIVATION_LIPSCHITZ`):

* ``Linear`` / ``Conv1d`` / ``Conv2d`` (modules or ``F.linear`` / ``F.conv*d``): the sound
  spectral bounds of :mod:`relaxplug.lipschitz.spectral` (exact SVD; FFT bound for convolutions, with the
  space-to-depth identity for strides), on the input size recorded by the example run
  (a reflect/replicate/circular ``padding_mode`` multiplies by that padding's copy bound);
* BatchNorm in eval mode and other per-coordinate scalings ``s * x + t`` (relaxplug
  ``Normalize``, ``(x - mu) / sigma``): ``max |s|``. *Folding*: ``||D_out W D_in||`` is never
  more than ``max|s_out| ||W|| max|s_in|``, so where a scaling sits next to a linear layer the
  analysis also bounds the folded operator: a BatchNorm right after a conv/linear layer is
  folded into its output channels, and a scaling followed by elementwise activations, shifts,
  reshapes and per-channel pooling is folded into the input channels of the next linear layer
  or of the GloRo head (``W a(s * z + t)``: the activation's difference quotients form a
  diagonal matrix that commutes with ``diag(s)``, so the composite is
  ``Lip(a) * ||W diag(s)||``-Lipschitz). Every alternative is a sound bound of the same node,
  and the analysis keeps the smallest (a dynamic programme over where each scaling goes);
* activations: ``Lip = sup |f'|`` (ReLU 1, LeakyReLU ``max(1, |slope|)``, Sigmoid 1/4, ...);
* max pooling: ``sqrt(m)``, ``m`` the largest number of windows that contain one input
  coordinate (``sum_o max_{i in w_o} d_i^2 <= sum_i m_i d_i^2``), 1 without overlap;
* average pooling, ``mean``/``sum`` over dimensions: nonnegative linear maps bounded by Schur's
  test ``||P||_2 <= sqrt(||P||_1 ||P||_inf)`` (exact for global and non-overlapping pooling:
  ``1 / sqrt(HW)``, ``1 / k``);
* reshapes, permutations, ``Flatten``, ``Identity``, eval-mode dropout, zero padding: 1;
  indexing, ``expand``, ``repeat``, reflect/replicate padding (copies of coordinates):
  ``sqrt(max copies of one coordinate)``, counted by running the op on coordinate indices.

The bound is sound but loose: it is a product of per-layer norms along paths, so it ignores
that consecutive layers' worst directions do not align. ``benchmarks/graph_lipschitz.py``
measured 20x to 350x the largest Jacobian norm found by sampling and gradient ascent on small
PreAct-ResNet, ResNet, WideResNet and CROWN-IBP CNNs (about 100x on a PreAct-ResNet trained on
digits), and about 5e7x on a randomly initialised torchvision ResNet-18 (17 convolutions deep).

Head. GloRo needs ``K_ji``, a Lipschitz bound of ``f_j - f_i``. When the graph's output is a
linear layer ``W h + b`` (module or ``F.linear``), ``K_ji = L[h] * ||w_j - w_i||`` (and, with a
scaling folded into the head, ``g * L[b] * ||(w_j - w_i) * s||``; the smaller is kept). Otherwise
``K_ji = sqrt(2) * L[f]``, sound since ``||(e_j - e_i)^T J|| <= ||e_j - e_i|| ||J||``.

Floating point: bounds computed from float32 weights in float64 are inflated by
``1 + FLOAT_ALLOWANCE`` (see :mod:`relaxplug.lipschitz.spectral`); combination steps are float64 with
relative errors ~1e-16 each. The rounding of the model's own forward pass is bounded separately
along the same graph (:meth:`LipschitzEstimator.forward_error`, :mod:`relaxplug.lipschitz.rounding`).

Anything else raises :class:`~relaxplug.lipschitz.protocol.UnsupportedLayerError` naming the module or
op (also when tracing fails, when the trace does not reproduce the model's output, when an op
mixes examples of the batch, or when an in-place op hides a mutation from the graph). Sound bounds
are for the eval-mode function, whatever mode the model is in (the analysis runs in eval mode
and restores every submodule's flag).
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.node import map_arg
from tqdm import tqdm

from relaxplug.lipschitz import spectral
from relaxplug.lipschitz.cache import POWER_VECTOR_PREFIX, ComputationSnapshot
from relaxplug.lipschitz.head import head_distances, is_plain_linear
from relaxplug.lipschitz.protocol import LipschitzRule, UnsupportedLayerError, check_no_hooks, lipschitz_rule
from relaxplug.lipschitz.rounding import (BATCHNORM_ROUNDINGS, DEFAULT_LAYER_ULPS, LIBRARY_ULPS, ForwardError, dot_gamma,
                                          gamma, unit_roundoff)
from relaxplug.lipschitz.spectral import FLOAT_ALLOWANCE
from relaxplug.lipschitz.torch_layers import padding_plan

__all__ = ["LipschitzEstimator", "GraphLipschitzEstimator", "ACTIVATION_LIPSCHITZ", "LIPSCHITZ_MODES", "trace_model",
           "checked_once", "estimator_for", "init_lipschitz_state", "load_lipschitz_state"]

logger = logging.getLogger(__name__)

#: ``sound``: provable bounds (certification); ``power``: converged power iteration (an estimate, for comparison)
LIPSCHITZ_MODES = ("sound", "power")

_UP = 1.0 + FLOAT_ALLOWANCE

#: ``sup_x |f'(x)|`` of smooth activations, rounded up (values to 30 digits by mpmath,
#: maximising ``|f'|`` at the root of ``f''``): SiLU ``x sigmoid(x)`` 1.0998393201 at x=2.3994;
#: GELU ``x Phi(x)``: ``Phi(x) + x phi(x)``, max at ``x = sqrt(2)``: 1.1289041452; GELU with the
#: tanh approximation 1.1289930687 at x=1.4185; Mish ``x tanh(softplus(x))`` 1.0884981613 at
#: x=1.4906; SELU ``scale * alpha`` = 1.0507009874 * 1.6732632424 = 1.7580993408 (slope just left
#: of 0); Hardswish ``(2x + 3) / 6`` on (-3, 3): 1.5; Hardsigmoid 1/6; Sigmoid 1/4 (at 0); ReLU,
#: ReLU6, Hardtanh, Tanh, Softplus, Softsign, CELU, Tanhshrink (``tanh^2``), Softshrink,
#: LogSigmoid (``1 - sigmoid``): 1. ``tests/test_graph_lipschitz.py`` checks each against a
#: dense grid of autograd derivatives.
ACTIVATION_LIPSCHITZ: dict[str, float] = {
    "relu": 1.0,
    "relu6": 1.0,
    "hardtanh": 1.0,
    "tanh": 1.0,
    "sigmoid": 0.25,
    "softplus": 1.0,
    "softsign": 1.0,
    "celu": 1.0,
    "tanhshrink": 1.0,
    "softshrink": 1.0,
    "logsigmoid": 1.0,
    "silu": 1.09984,
    "gelu": 1.12891,
    "gelu_tanh": 1.12900,
    "mish": 1.08850,
    "selu": 1.75810,
    "hardswish": 1.5,
    "hardsigmoid": 1.0 / 6.0 * _UP,
    "abs": 1.0,
    "clamp": 1.0,
}

_ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.Softsign: "softsign", nn.CELU: "celu", nn.Tanhshrink: "tanhshrink",
    nn.Softshrink: "softshrink", nn.LogSigmoid: "logsigmoid", nn.SiLU: "silu", nn.Mish: "mish",
    nn.SELU: "selu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
}

_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
    F.hardtanh: "hardtanh", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", F.softsign: "softsign", F.celu: "celu",
    F.tanhshrink: "tanhshrink", F.softshrink: "softshrink", F.logsigmoid: "logsigmoid",
    F.silu: "silu", F.mish: "mish", F.selu: "selu", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid", torch.abs: "abs", torch.clamp: "clamp", torch.clip: "clamp",
}

_ACTIVATION_METHODS = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
    "tanh_": "tanh", "abs": "abs", "abs_": "abs", "clamp": "clamp", "clamp_": "clamp", "clip": "clamp",
    "clip_": "clamp", "clamp_min": "clamp", "clamp_min_": "clamp", "clamp_max": "clamp", "clamp_max_": "clamp",
}

#: largest discontinuity accepted in a softplus (per coordinate; it enters the forward-error model)
SOFTPLUS_MAX_JUMP = 1e-6

#: per-sample permutations / reshapes of coordinates (Lipschitz 1, scalings pass through them)
_PERMUTE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.swapaxes, torch.squeeze,
    torch.unsqueeze, torch.movedim, F.pixel_shuffle, F.pixel_unshuffle, torch.t,
}
_PERMUTE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "swapaxes", "squeeze", "unsqueeze",
    "view_as", "reshape_as", "t", "unflatten", "movedim",
}
#: the identity on values (dtype changes to float32/64 are not modelled, like all float rounding)
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}
#: value-preserving only when the dtype does not change or widens exactly (checked on the recorded dtypes)
_CAST_METHODS = {"float", "double", "to", "type_as", "type"}
_EXACT_WIDENING = {
    (torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float64),
    (torch.bfloat16, torch.float64), (torch.float32, torch.float64),
}
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
#: copies of coordinates: bounded by counting copies on an index tensor
_COPY_FUNCTIONS = {operator.getitem, torch.flip, torch.roll, torch.narrow, torch.select, torch.index_select}
_COPY_METHODS = {"expand", "expand_as", "repeat", "flip", "roll", "narrow", "select", "index_select", "__getitem__"}
_POOL_FUNCTIONS = {
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
}
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_SUB_FUNCTIONS = {operator.sub, operator.isub, torch.sub, torch.subtract}
_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul, torch.multiply}
_DIV_FUNCTIONS = {operator.truediv, operator.itruediv, torch.div, torch.true_divide}
_NEG_FUNCTIONS = {operator.neg, torch.neg, operator.pos}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate, torch.stack}
_SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.unbind, torch.tensor_split}
_SHAPE_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "layout"}
_SHAPE_METHODS = {"size", "dim", "numel", "ndimension", "nelement", "get_device"}

SUPPORTED = (
    "Linear, Conv1d, Conv2d (F.linear, F.conv1d, F.conv2d), BatchNorm (eval mode), relaxplug Normalize, "
    "MinMax and InvertibleDownsample, ReLU/LeakyReLU/PReLU/ELU/SELU/CELU/GELU/SiLU/Mish/Tanh/Sigmoid/"
    "Softplus/Hardtanh/Hardswish/Hardsigmoid, x * sigmoid(x), max/avg/adaptive pooling, mean/sum over "
    "non-batch dimensions, +, -, * and / by constants, cat/stack/chunk/split, reshapes, permutations, "
    "indexing, padding, Flatten, Identity, Dropout (eval)"
)


# ----------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """``torch.fx`` tracer: a module with a Lipschitz rule (the protocol) is a leaf; torch.nn
    modules are leaves (bounded by exact class below, or refused); anything else is traced into."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if lipschitz_rule(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace_model(model: nn.Module) -> fx.GraphModule:
    """Trace ``model`` (in eval mode) into a ``GraphModule``; raise ``UnsupportedLayerError`` if fx fails."""
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        tracer = _Tracer()
        # fx always traces into the root; a bare leaf (one BatchNorm, one pooling layer) is wrapped
        root = nn.Sequential(model) if tracer.is_leaf_module(model, "") else model
        graph = tracer.trace(root)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, NotImplementedError...)
        raise UnsupportedLayerError(
            f"torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {exc}); GloRo on arbitrary "
            "networks needs a forward pass fx can trace: no data-dependent Python control flow, every layer "
            "a registered submodule"
        ) from exc
    finally:
        for m, flag in zip(model.modules(), was_training):
            m.training = flag
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


@dataclass(frozen=True)
class _Dep:
    """Marks an argument position holding an input-dependent value (``node``)."""

    node: fx.Node


class _Recorder(fx.Interpreter):
    """Runs the traced graph once, recording which nodes depend on the input, their shapes,
    the values of the constant ones, and the concrete arguments of the dependent ones."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=True)
        self.dep: dict[fx.Node, bool] = {}
        self.const: dict[fx.Node, Any] = {}
        self.shape: dict[fx.Node, Any] = {}
        self.dtype: dict[fx.Node, torch.dtype] = {}
        self.values: dict[fx.Node, Any] = {}  # input-dependent values, kept only when ``keep_values``
        self.keep_values = False
        self.calls: dict[fx.Node, tuple[tuple, dict]] = {}
        self._placeholders = 0

    def run_node(self, n: fx.Node) -> Any:
        mutated = self._mutated_storages(n)
        result = super().run_node(n)
        if mutated:
            self._check_mutation(n, mutated)
        if n.op == "placeholder":
            dep = self._placeholders == 0
            self._placeholders += 1
        elif n.op == "get_attr":
            dep = False
        else:
            dep = any(self.dep[a] for a in n.all_input_nodes)
            if (n.op == "call_function" and n.target is getattr and n.args[1] in _SHAPE_ATTRIBUTES) or (
                n.op == "call_method" and n.target in _SHAPE_METHODS
            ):
                dep = False  # shapes do not depend on the input's values
        self.dep[n] = dep
        if dep:
            self.shape[n] = _shapes(result)
            if isinstance(result, Tensor):
                self.dtype[n] = result.dtype
            if self.keep_values:
                self.values[n] = result
            mark = lambda a: _Dep(a) if self.dep[a] else self.const[a]  # noqa: E731
            self.calls[n] = (map_arg(n.args, mark), map_arg(n.kwargs, mark))
        else:
            self.const[n] = result
        return result

    def _is_inplace(self, n: fx.Node) -> bool:
        if n.op == "call_method":
            return isinstance(n.target, str) and n.target.endswith("_") and not n.target.endswith("__")
        if n.op == "call_function":
            name = getattr(n.target, "__name__", "")
            return n.kwargs.get("inplace") is True or (name.endswith("_") and not name.endswith("__")) or n.target in (
                operator.iadd, operator.isub, operator.imul, operator.itruediv
            )
        if n.op == "call_module":
            return getattr(self.module.get_submodule(n.target), "inplace", False) is True
        return False

    def _mutated_storages(self, n: fx.Node) -> set[int]:
        if not self._is_inplace(n) or not n.args or not isinstance(n.args[0], fx.Node):
            return set()
        value = self.env.get(n.args[0])
        return {value.untyped_storage().data_ptr()} if isinstance(value, Tensor) else set()

    def _check_mutation(self, n: fx.Node, mutated: set[int]) -> None:
        """An in-place op changes every live tensor sharing its input's storage (views included);
        the graph does not show that, so no node read after ``n`` may hold such a tensor."""
        last_here = set(self.user_to_last_uses.get(n, []))
        for other, value in self.env.items():
            if other in last_here:
                continue
            tensors = value if isinstance(value, (tuple, list)) else [value]
            for t in tensors:
                if isinstance(t, Tensor) and t.untyped_storage().data_ptr() in mutated:
                    raise UnsupportedLayerError(
                        f"in-place {_describe_node(self.module, n)} at node {n.name!r} changes the value of "
                        f"{other.name!r}, which is read afterwards; the traced graph does not show that mutation "
                        "(write the op out of place)"
                    )


def _shapes(value: Any) -> Any:
    if isinstance(value, Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return [_shapes(v) for v in value]
    return None


# ----------------------------------------------------------------------------- rules


@dataclass
class _Linear:
    """``x -> W x`` (dense on the last dim) or a 2-D convolution (1-D ones embedded with H = 1)."""

    input: fx.Node
    kind: str  # "linear" or "conv"
    weight: Tensor
    in_shape: tuple[int, ...]  # per-sample shape of the input
    conv: dict = field(default_factory=dict)  # stride, padding, dilation, groups
    in_hw: tuple[int, int] = (1, 1)
    pre_gain: float = 1.0  # Lipschitz constant of a copy-padding applied before the conv
    conv1d: bool = False
    module: nn.Module | None = None  # the nn.Linear / nn.Conv2d module (training estimates), None if functional
    bias: Tensor | None = None  # the bias added to every output (rounding model)

    def bias_norm(self, out_shape: tuple[int, ...]) -> float:
        """``||b||`` broadcast over one example's output of per-sample shape ``out_shape`` (rounding model)."""
        if self.bias is None or self.bias.numel() == 0:
            return 0.0
        b = self.bias.detach().to(torch.float64)
        return float(b.norm()) * math.sqrt(math.prod(out_shape) / b.numel()) * _UP

    @property
    def fan_in(self) -> int:
        """Terms per output in the dot product (rounding model)."""
        return int(self.weight[0].numel())

    def abs_norm(self) -> float:
        """Upper bound on ``|| |W| ||_2``, the operator with entrywise absolute weights (rounding model):
        Schur's test ``sqrt(max row sum * max column sum)`` of the nonnegative operator. For a
        convolution a row sums ``|W[o]|`` over its taps and a column at most ``|W[:, c]|`` over all
        taps (each tap reads an input position at most once per output channel, at any stride)."""
        w = self.weight.detach().to(torch.float64).abs()
        if self.kind == "linear":
            rows, cols = w.sum(1).max(), w.sum(0).max()
        else:
            groups = self.conv["groups"]
            o, cg = w.shape[:2]
            rows = w.flatten(1).sum(1).max()
            cols = w.reshape(groups, o // groups, cg, -1).sum((1, 3)).max()
        return self.pre_gain * math.sqrt(float(rows) * float(cols)) * _UP

    def estimate(self) -> Tensor:
        """Differentiable training estimate, by the module's registered rule."""
        rule = lipschitz_rule(self.module) if self.module is not None else None
        if rule is None and self.module is not None and is_plain_linear(self.module):
            rule = lipschitz_rule(nn.Linear(1, 1))  # a parametrized nn.Linear: nn.Linear's own rule
        if rule is None:
            raise UnsupportedLayerError(
                "a functional F.linear/F.conv call has no persistent power-iteration state for training; write it "
                "as an nn.Linear/nn.Conv2d module or a layer implementing the Lipschitz protocol"
            )
        shape = self.in_shape if self.kind == "linear" else self.in_shape
        return rule.estimate(self.module, tuple(shape))

    def in_scale(self, s: Tensor) -> Tensor | None:
        """The per-input-feature/channel vector of a scaling ``s`` of the input, or ``None``."""
        return _per_axis(s, self.in_shape, -1 if self.kind == "linear" else 0)

    def norm(self, s_in: Tensor | None, s_out: Tensor | None, mode: str) -> float:
        w = self.weight.detach().to(torch.float64)
        if self.kind == "linear":
            if s_in is not None:
                w = w * s_in.to(w)[None, :]
            if s_out is not None:
                w = w * s_out.to(w)[:, None]
            if mode == "sound":
                return spectral.dense_spectral_norm(w)
            return float(torch.linalg.svdvals(w)[0]) if w.numel() else 0.0
        if self.conv1d:
            w = w[:, :, None, :]
        groups = self.conv["groups"]
        if s_in is not None:
            o, cg = w.shape[:2]
            w = (w.reshape(groups, o // groups, cg, *w.shape[2:]) * s_in.to(w).reshape(groups, 1, cg, 1, 1)).reshape(w.shape)
        if s_out is not None:
            w = w * s_out.to(w).reshape(-1, 1, 1, 1)
        if mode == "sound":
            return self.pre_gain * spectral.conv_spectral_bound(w, self.in_hw, **self.conv)
        forward, adjoint = spectral.conv_operator_pair(w, self.in_hw, **self.conv)
        shape = (1, w.shape[1] * groups, *self.in_hw)
        estimate = spectral.converged_power_iteration(forward, adjoint, shape, tol=1e-7, max_iter=2000, device=w.device)
        return self.pre_gain * estimate


@dataclass
class _Leaf:
    """A module bounded by its Lipschitz rule (the protocol or :func:`register_lipschitz`)."""

    input: fx.Node
    module: nn.Module
    rule: LipschitzRule
    in_shape: tuple[int, ...]

    def bound(self) -> float:
        """The declared bound (computed once per analysis: rules are rebuilt for every analysis)."""
        cached = self.__dict__.get("_bound_value")
        if cached is not None:
            return cached
        value = float(self.rule.bound(self.module, tuple(self.in_shape)))
        if not (math.isfinite(value) and value >= 0):
            raise UnsupportedLayerError(f"{self.rule.source} returned {value}, not a finite nonnegative bound")
        self.__dict__["_bound_value"] = value
        return value

    def rounding(self, u: float, a_in: tuple[float, float], gain: float) -> tuple[tuple[float, float], float]:
        """Local forward error for a computed input of norm at most ``a_in`` (affine in ``r``), as
        ``(terms, g)`` meaning ``terms + g * A_out``: the layer's ``lipschitz_rounding``, or the default
        model ``gamma_16 (L A_in + A_out)`` (an assumption, module docstring of ``rounding``)."""
        declared = getattr(self.module, "lipschitz_rounding", None)
        if callable(declared):
            # once per analysis, like the bound: it depends on the weights only, and the analysis
            # (with these rules) is rebuilt whenever they change
            cached = self.__dict__.get("_rounding_value")
            if cached is None:
                cached = tuple(float(v) for v in declared(tuple(self.in_shape)))
                self.__dict__["_rounding_value"] = cached
            c0, c1 = cached
            return (c0 + c1 * a_in[0], c1 * a_in[1]), 0.0
        g = gamma(DEFAULT_LAYER_ULPS, u)
        return (g * gain * a_in[0], g * gain * a_in[1]), g


@dataclass
class _Scale:
    """``x -> s * x + t`` with constant ``s`` (broadcastable to the per-sample shape), ``|s|`` stored."""

    input: fx.Node
    scale: Tensor
    offset: float = 0.0  # || |s m| + |b| || of a BatchNorm over one example (rounding model)
    roundings: float = 2.0  # rounding: local error <= gamma_roundings (max|s| |x| + offset)
    leaf: "_Leaf | None" = None  # a protocol layer found to be a scaling: its own rounding model


@dataclass
class _Gain:
    """``L = gain * L[input]``; ``chain`` says how a pending input scaling passes through:
    ``"elementwise"`` (coordinatewise, gain multiplies), ``"permute"`` (coordinates rearranged
    by ``replay``), ``"channel"`` (a per-channel linear map of norm ``gain``), or ``None``."""

    input: fx.Node
    gain: float
    chain: str | None = None
    replay: Callable[[Tensor], Tensor] | None = None
    ulps: float = LIBRARY_ULPS  # rounding: local error <= gamma_ulps (gain * (A_in + 2 E_in) + A_out)
    jump: float = 0.0  # a discontinuity of at most ``jump`` per coordinate (softplus threshold)


@dataclass
class _Sum:
    terms: list[tuple[fx.Node, float]]


@dataclass
class _Cat:
    inputs: list[fx.Node]


_Rule = Any  # one of the dataclasses above


def _per_axis(s: Tensor, shape: tuple[int, ...], axis: int) -> Tensor | None:
    """If ``s`` broadcast to ``shape`` is constant along every dim but ``axis``, that vector."""
    try:
        full = s.expand(shape) if s.dim() <= len(shape) else None
    except RuntimeError:
        return None
    if full is None or len(shape) == 0:
        return None
    axis = axis % len(shape)
    index = [0] * len(shape)
    index[axis] = slice(None)
    vector = full[tuple(index)]
    view = [1] * len(shape)
    view[axis] = -1
    if not torch.equal(full, vector.reshape(view).expand(shape)):
        return None
    return vector


def _bind(target: Any, args: tuple, kwargs: dict, names: Sequence[str], defaults: dict | None = None) -> dict:
    """Arguments of a call by name: ``inspect.signature`` for Python functions, ``names`` for builtins."""
    try:
        signature = inspect.signature(target)
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
            raise ValueError("generic signature")
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)
    except (TypeError, ValueError):
        out = dict(defaults or {})
        out.update(zip(names, args))
        out.update(kwargs)
        return out


def _is_dep(value: Any) -> bool:
    return isinstance(value, _Dep)


def _dep_nodes(args: Any) -> list[fx.Node]:
    found: list[fx.Node] = []

    def visit(v: Any) -> None:
        if isinstance(v, _Dep):
            found.append(v.node)
        elif isinstance(v, (tuple, list)):
            for item in v:
                visit(item)
        elif isinstance(v, dict):
            for item in v.values():
                visit(item)
        elif isinstance(v, slice):
            visit((v.start, v.stop, v.step))

    visit(args)
    return found


def _substitute(args: Any, value: Tensor) -> Any:
    if isinstance(args, _Dep):
        return value
    if isinstance(args, tuple):
        return tuple(_substitute(a, value) for a in args)
    if isinstance(args, list):
        return [_substitute(a, value) for a in args]
    if isinstance(args, dict):
        return {k: _substitute(v, value) for k, v in args.items()}
    return args


def _nonneg_linear_bound(replay: Callable[[Tensor], Tensor], shape: tuple[int, ...], device: torch.device) -> float:
    """Schur's test ``||P|| <= sqrt(max row sum * max column sum)`` for a nonnegative linear ``P``."""
    probe = torch.ones(shape, dtype=torch.float64, device=device, requires_grad=True)
    with torch.enable_grad():
        out = replay(probe)
        (columns,) = torch.autograd.grad(out.sum(), probe)
    rows = float(out.detach().max()) if out.numel() else 0.0
    cols = float(columns.max())
    return math.sqrt(rows * cols) * _UP


def _is_permutation(replay: Callable[[Tensor], Tensor], shape: tuple[int, ...], device: torch.device) -> bool:
    """Whether ``replay`` maps each example to a permutation of its own coordinates (checked on the
    coordinate indices, float64): then it is an isometry and per-coordinate scalings pass through it."""
    n = math.prod(shape)
    index = torch.arange(1, n + 1, dtype=torch.float64, device=device).reshape(shape)
    try:
        with torch.no_grad():
            out = replay(index)
        if not isinstance(out, Tensor) or out.numel() != n or out.shape[0] != shape[0]:
            return False
        ordered = torch.sort(out.reshape(shape[0], -1), dim=1).values
        if not torch.equal(ordered, index.reshape(shape[0], -1)):
            return False
        # the same permutation for other values (MinMax permutes too, but depending on the data)
        gen = torch.Generator().manual_seed(2)
        probe = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
        moved = replay(probe)
    except Exception:  # the module need not accept float64 or index values: then it is not used as a permutation
        return False
    expected = probe.flatten()[(out.flatten() - 1).long()].reshape(out.shape)
    return isinstance(moved, Tensor) and moved.shape == out.shape and bool(torch.equal(moved, expected))


def _diagonal_scale(replay: Callable[[Tensor], Tensor], shape: tuple[int, ...], device: torch.device) -> Tensor | None:
    """``|s|`` (per-sample shape, float64) when ``replay`` is ``x -> s * x + t`` on two random probes, else ``None``."""
    gen = torch.Generator().manual_seed(3)
    probes = [torch.randn(shape, generator=gen, dtype=torch.float64).to(device) for _ in range(2)]
    try:
        with torch.no_grad():
            base = replay(torch.zeros(shape, dtype=torch.float64, device=device))
            outs = [replay(p) for p in probes]
    except Exception:  # a module that does not run in float64 is not used as a scaling
        return None
    if not all(isinstance(o, Tensor) and o.shape == base.shape == shape for o in outs):
        return None
    ratios = [(o - base) / p for o, p in zip(outs, probes)]
    s = ratios[0][0]
    if not all(torch.allclose(r, s.expand_as(r), rtol=1e-12, atol=0) for r in ratios):
        return None
    s = torch.stack([r.abs().amax(0) for r in ratios]).amax(0)  # the larger quotient: rounds up
    if s.dim() >= 1:  # a per-channel scaling: one value per channel (the largest), so it folds per channel
        channel = s.reshape(s.shape[0], -1).amax(1).reshape(-1, *([1] * (s.dim() - 1)))
        if torch.allclose(s, channel.expand_as(s), rtol=1e-12, atol=0):
            s = channel
    return s  # float64 quotients: relative error ~1e-16, covered by FLOAT_ALLOWANCE in the linear bounds


def _copy_bound(replay: Callable[[Tensor], Tensor], shape: tuple[int, ...], device: torch.device, what: str) -> float:
    """``sqrt(max copies of one input coordinate)`` for an op whose outputs are copies of inputs."""
    n = math.prod(shape)
    index = torch.arange(1, n + 1, dtype=torch.float64, device=device).reshape(shape)
    with torch.no_grad():
        out = replay(index)
    if not isinstance(out, Tensor):
        raise UnsupportedLayerError(f"{what} does not return one tensor")
    values = out.flatten()
    if values.numel() == 0:
        return 0.0
    if not bool(((values == values.round()) & (values >= 1) & (values <= n)).all()):
        raise UnsupportedLayerError(f"{what} is not a copy of input coordinates (it computes new values)")
    counts = torch.bincount(values.long(), minlength=n + 1)
    return math.sqrt(int(counts.max()))


def _window_multiplicity(size: int, out: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Largest number of pooling windows (along one dim) containing one input position."""
    counts = [0] * size
    for o in range(out):
        for t in range(kernel):
            i = o * stride - padding + t * dilation
            if 0 <= i < size:
                counts[i] += 1
    return max(counts, default=0)


def _adaptive_multiplicity(size: int, out: int) -> int:
    counts = [0] * size
    for o in range(out):
        for i in range((o * size) // out, -((-(o + 1) * size) // out)):
            counts[i] += 1
    return max(counts, default=0)


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    return value * n if len(value) == 1 else value


# ----------------------------------------------------------------------------- analysis


@dataclass
class _Analysis:
    body: float  # L of the head's input (or of the output without a linear head)
    total: float  # L of the output
    pair: Tensor | None  # (n, n) float64 K_ji (None: the output is not (B, n) logits)
    node_bounds: dict[str, float]
    error: ForwardError  # rounding error of the computed logits (docs: relaxplug.lipschitz.rounding)
    output_norm_at_zero: float  # ||f(0)||, with ``total``: ||f(x)|| <= ||f(0)|| + total ||x||
    #: ``pair`` converted per (dtype, device), with the version counter it had when stored
    casts: dict[tuple[torch.dtype, torch.device], tuple[Tensor, int]] = field(default_factory=dict)
    rounding: "_Rounding | None" = None  # the error recurrence, for measured reference points


@dataclass
class _Rounding:
    """What :func:`_forward_error` needs to rerun the recurrence from measured norms."""

    nodes: list[fx.Node]
    rec: "_Record"
    rules: dict
    bounds: dict
    memo: dict
    out: fx.Node

    def at(self, norms: dict[fx.Node, Tensor]) -> tuple[Tensor, float]:
        return _forward_error(self.nodes, self.rec, self.rules, self.bounds, self.memo, self.out, norms)


class _NormRecorder(fx.Interpreter):
    """Runs the traced graph on a batch and records, per example, an upper bound on the L2 norm of
    every node the error recurrence reads: the float norm inflated by its own rounding
    (``gamma_{d+2}`` for ``d`` squares summed, and the square root)."""

    def __init__(self, gm: fx.GraphModule, wanted: set[fx.Node], u: float):
        super().__init__(gm, garbage_collect_values=True)
        self.wanted, self.u = wanted, u
        self.norms: dict[fx.Node, Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n in self.wanted:
            parts = result if isinstance(result, (tuple, list)) else [result]
            squares = 0.0
            for t in parts:
                if isinstance(t, Tensor) and t.dim():
                    flat = t.detach().flatten(1)
                    norm = flat.norm(dim=1).to(torch.float64) * (1.0 + gamma(flat.shape[1] + 3, self.u))
                    squares = squares + norm**2
            self.norms[n] = torch.as_tensor(squares, dtype=torch.float64) ** 0.5
        return result


class LipschitzEstimator:
    """Lipschitz constants of a model for inputs of one shape: the one engine for certification
    (:meth:`sound`, :meth:`pair_lipschitz`, :meth:`forward_error`) and training (:meth:`estimate`).

    The model is traced with torch.fx; modules with a Lipschitz rule (the protocol,
    :mod:`relaxplug.lipschitz.protocol`) are leaves. Certification composes the leaves' sound
    bounds and the per-op constants of the module docstring along the graph; training composes
    the leaves' differentiable estimates along the same graph (weight-free ops keep their
    constants). Caches: the trace and its rules are valid for one *structure* (module tree,
    classes, Python attributes, tensor objects), the sound analysis for one structure *and* the
    values of every tensor (:class:`~relaxplug.lipschitz.cache.ComputationSnapshot`); anything
    else is recomputed.

    Sound bounds are for the eval-mode function (BatchNorm with running statistics, dropout off),
    whatever mode the model is in; the analysis runs in eval mode and restores every flag.

    Args:
        model: the network (logits ``(B, n)``), fx-traceable.
        input_shape: per-sample input shape, e.g. ``(3, 32, 32)``.
        fold: fold BatchNorm and other per-coordinate scalings into neighbouring linear layers
            where that is tighter (default); ``False`` bounds every layer on its own.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], *, fold: bool = True):
        self._model = weakref.ref(model)  # weak: the estimator cache must not keep models alive
        self.fold = bool(fold)
        self.input_shape = tuple(int(s) for s in input_shape)
        self._cache: dict[str, tuple[ComputationSnapshot, _Analysis]] = {}
        self._trace(model)

    # -- public interface

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise ReferenceError("the model of this Lipschitz estimator no longer exists")
        return model

    @property
    def head(self) -> nn.Linear:
        """The final ``nn.Linear`` module (the logit layer) of the GloRo head split."""
        self._current()
        rule = self._head_rule
        if rule is None or not isinstance(rule.module, nn.Linear):
            raise UnsupportedLayerError(
                f"{type(self.model).__name__} does not end in an nn.Linear module (the logit layer); GloRo training "
                "splits the head off the body: build the model as ..., nn.Linear(features, n_classes)"
            )
        return rule.module

    def sound(self) -> float:
        """Provable upper bound on the body's L2 Lipschitz constant (cached for this exact computation)."""
        return self._analysis("sound").body

    def converged(self) -> float:
        """The body bound with power-iteration norms for linear layers: an estimate, not a proof."""
        return self._analysis("power").body

    def total(self, mode: str = "sound") -> float:
        """Bound on the Lipschitz constant of the whole network (logits), no head split."""
        return self._analysis(mode).total

    def pair_lipschitz(self, mode: str = "sound") -> Tensor:
        """``(n, n)`` float64 matrix ``K_ji`` bounding the Lipschitz constant of ``f_j - f_i``."""
        pair = self._analysis(mode).pair
        if pair is None:
            raise UnsupportedLayerError(
                f"{type(self.model).__name__} does not return logits of shape (B, n); GloRo needs them"
            )
        return pair.clone()

    def cast_pair_lipschitz(self, dtype: torch.dtype, device: torch.device | str, mode: str = "sound") -> Tensor:
        """:meth:`pair_lipschitz` converted to ``dtype`` on ``device``, shared between calls.

        The converted matrix is cached with the analysis it comes from, so it is dropped whenever
        the analysis is (any change to what the model computes, as for :meth:`sound`), and it is
        rebuilt when its version counter moved (an in-place write). Read it, do not write to it: at
        10,000 classes a fresh copy per call (800 MB read, 400 MB written) costs more than the
        certification it serves (``benchmarks/class_scaling.py``).
        """
        analysis = self._analysis(mode)
        if analysis.pair is None:
            self.pair_lipschitz(mode)  # raises the error naming the cause
        key = (dtype, torch.device(device))
        cached = analysis.casts.get(key)
        if cached is None or cached[0]._version != cached[1]:
            matrix = analysis.pair.to(dtype=dtype, device=key[1], copy=True)
            cached = analysis.casts[key] = (matrix, matrix._version)
        return cached[0]

    def forward_error(self) -> ForwardError:
        """Bound ``e0 + e1 ||x||`` on the L2 rounding error of the computed logits (sound analysis)."""
        return self._analysis("sound").error

    def measured_forward(self, x: Tensor) -> tuple[Tensor, Tensor, float]:
        """``(logits, e0, e1)``: the model's logits on the batch ``x``, computed by its traced graph
        (the same operations), and a bound ``e0 + e1 r`` (``e0``: ``(B,)``) on the L2 rounding error of
        the computed logits at any point within ``r`` of each example. The magnitudes are the norms
        this pass measured at ``x`` (plus ``L_v r``), not ``||v(0)|| + L_v ||x||``: much tighter, at the
        cost of one norm per node and example."""
        analysis = self._analysis("sound")
        rounding = analysis.rounding
        # exact 1-Lipschitz ops fixing 0 (ReLU, MinMax, permutations, max pooling without overlap):
        # ||v|| <= ||input||, so the input's norm bounds theirs without measuring it
        same = {n: r.input for n, r in rounding.rules.items()
                if isinstance(r, _Gain) and r.ulps == 0 and r.gain == 1.0 and r.jump == 0}
        wanted = (set(rounding.rules) - set(same)) | {n for n in rounding.nodes if n.op == "placeholder" and rounding.rec.dep.get(n)}
        recorder = _NormRecorder(self.graph_module, wanted, unit_roundoff(rounding.rec.const_dtype, x.device)[0])
        with torch.no_grad(), _eval_mode(self.model):
            logits = recorder.run(x)
        norms = recorder.norms
        for n in rounding.nodes:  # topological order: an input's norm is known before its users'
            if n in same:
                norms[n] = norms[same[n]]
        e0, e1 = rounding.at(norms)
        return logits, torch.as_tensor(e0, dtype=torch.float64).expand(len(x)).to(x.device), float(e1)

    def output_norm_at_zero(self) -> float:
        """``||f(0)||_2`` of the model's output (rounding model of an enclosing layer)."""
        return self._analysis("sound").output_norm_at_zero

    def node_bounds(self, mode: str = "sound") -> dict[str, float]:
        """``{graph node name: bound}`` for every node the analysis bounded (for reports)."""
        return dict(self._analysis(mode).node_bounds)

    def estimate(self, whole: bool = False) -> Tensor:
        """Differentiable estimate of the body's Lipschitz constant (training); of the whole
        network with ``whole=True``.

        Each protocol leaf contributes its ``lipschitz_estimate`` (one power-iteration step per
        call for ``nn.Linear``/``nn.Conv2d`` in training mode); the other ops their constants. An
        estimate from below per layer: not a proof.
        """
        self._current()
        return self._compose_estimate(whole)

    def power(self, n_iter: int = 1) -> Tensor:
        """:meth:`estimate` after ``n_iter - 1`` extra updates; ``n_iter = 0`` reads without updating."""
        if n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {n_iter}")
        self._current()
        if n_iter == 0:
            leaves = [r.module for r in self._est_rules.values() if isinstance(r, (_Leaf, _Linear)) and r.module is not None]
            flags = [m.training for m in leaves]
            try:
                for m in leaves:
                    m.training = False
                return self._compose_estimate()
            finally:
                for m, flag in zip(leaves, flags):
                    m.training = flag
        with torch.no_grad():
            for _ in range(n_iter - 1):
                self._compose_estimate()
        return self._compose_estimate()

    def state_dict(self) -> dict[str, Tensor]:
        """The model's power-iteration buffers (also in ``model.state_dict()``)."""
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items() if POWER_VECTOR_PREFIX in k}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load power-iteration buffers, creating them where the model has none yet."""
        load_lipschitz_state(self.model, state)

    # -- tracing and caches

    def _trace(self, model: nn.Module) -> None:
        check_no_hooks(model)
        self._structure = ComputationSnapshot(model, contents=False)
        self.graph_module = trace_model(model)
        self._nodes = list(self.graph_module.graph.nodes)
        with _eval_mode(model):
            record = self._record()
            rules = self._rules(record)
        head, out = self._head(record, rules)
        self._head_rule, self._out_node = head, out
        self._est_rules = rules
        self.head_found = head is not None
        self.dtype = record.const_dtype

    def _current(self) -> nn.Module:
        """The model, retraced when its structure changed since the last trace."""
        model = self.model
        check_no_hooks(model)
        if not self._structure.same_structure(model):
            self._trace(model)
        return model

    def _analysis(self, mode: str) -> _Analysis:
        if mode not in LIPSCHITZ_MODES:
            raise ValueError(f"mode must be one of {LIPSCHITZ_MODES}, got {mode!r}")
        model = self.model
        check_no_hooks(model)
        cached = self._cache.get(mode)
        checked = _CHECKED.get(model)
        if cached is not None and checked is not None and (id(self), mode) in checked:
            return cached[1]
        if cached is None or not cached[0].matches(model):
            self._current()
            snapshot = ComputationSnapshot(model)
            self._cache[mode] = (snapshot, self._compute(mode))
        if checked is not None:
            checked.add((id(self), mode))
        return self._cache[mode][1]

    def _output_node(self) -> fx.Node:
        out = next(n for n in reversed(self._nodes) if n.op == "output")
        value = out.args[0]
        if not isinstance(value, fx.Node):
            raise UnsupportedLayerError(
                f"{type(self.model).__name__} returns {type(value).__name__}; GloRo needs a model returning one logits tensor"
            )
        return value

    def _record(self) -> "_Record":
        """Run the trace on a batch whose first example is 0 and check it against the model: same
        output, the batch kept as the first dimension at any batch size, and example 0 unchanged
        when the other examples change (no op mixes examples of the batch)."""
        model = self.model
        param = next(model.parameters(), None)
        if param is None:
            param = next(model.buffers(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        gen = torch.Generator().manual_seed(0)
        batch = 3

        def inputs(n: int, scale: float) -> Tensor:
            x = scale * torch.randn((n, *self.input_shape), generator=gen, dtype=torch.float64)
            x[0] = 0.0
            return x.to(device=device, dtype=dtype)

        recorder = _Recorder(self.graph_module)
        recorder.keep_values = True
        x = inputs(batch, 1.0)
        with torch.no_grad():
            reference = model(x)  # first: the model's own errors surface as they are
            try:
                traced = recorder.run(x)
                other = _Recorder(self.graph_module)
                other.keep_values = True
                other.run(inputs(batch, 10.0))
                bigger = _Recorder(self.graph_module)
                bigger.run(inputs(batch + 1, 1.0))
            except UnsupportedLayerError:
                raise
            except Exception as exc:
                raise UnsupportedLayerError(
                    f"the traced graph of {type(model).__name__} failed on an input of shape {tuple(x.shape)} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        if not isinstance(reference, Tensor):
            raise TypeError(f"model must return a logits tensor (B, n), got a {type(reference).__name__}")
        if not isinstance(traced, Tensor) or traced.shape != reference.shape:
            raise UnsupportedLayerError(f"{type(model).__name__}: the traced graph does not return the model's logits")
        scale = float(reference.detach().nan_to_num().abs().max()) if reference.numel() else 0.0
        if not torch.allclose(traced, reference, rtol=1e-4, atol=1e-4 * max(scale, 1e-30), equal_nan=True):
            raise UnsupportedLayerError(
                f"the torch.fx trace of {type(model).__name__} does not reproduce its output (Python control "
                "flow or randomness in forward?); cannot bound it"
            )
        for n, shape in recorder.shape.items():
            flat = [shape] if isinstance(shape, tuple) else (shape or [])
            flat_other = [bigger.shape.get(n)] if isinstance(shape, tuple) else (bigger.shape.get(n) or [])
            for s, t in zip(flat, flat_other) if len(flat) == len(flat_other) else [(flat, None)]:
                if isinstance(s, tuple) and (len(s) == 0 or s[0] != batch or t != (batch + 1, *s[1:])):
                    raise UnsupportedLayerError(
                        f"{_describe_node(self.graph_module, n)} at node {n.name!r} produces shape {s} from a batch of "
                        f"{batch} (and {t} from {batch + 1}): it mixes or drops the batch dimension, but the analysis "
                        "bounds each example separately"
                    )
            if not _same_first_example(recorder.values.get(n), other.values.get(n)):
                raise UnsupportedLayerError(
                    f"{_describe_node(self.graph_module, n)} at node {n.name!r} mixes examples of the batch (its value "
                    "for one example changes when other examples change); a certificate must not depend on the batch"
                )
        norms = {n: _first_norm(v) for n, v in recorder.values.items()}
        recorder.values.clear()
        return _Record(recorder, device, batch, reference.dtype, norms)

    def _rules(self, rec: "_Record") -> dict[fx.Node, _Rule]:
        rules: dict[fx.Node, _Rule] = {}
        for n in self._nodes:
            if n.op in ("placeholder", "output", "get_attr") or not rec.dep.get(n, False):
                continue
            rules[n] = _RuleBuilder(self.graph_module, rec, n).build()
        return rules

    def _head(self, rec: "_Record", rules: dict[fx.Node, _Rule]) -> tuple[_Linear | None, fx.Node]:
        node = self._output_node()
        if not rec.dep.get(node, False):
            raise UnsupportedLayerError(f"the output of {type(self.model).__name__} does not depend on its input")
        rule = rules.get(node)
        out_shape = rec.shape[node]
        if isinstance(rule, _Linear) and rule.kind == "linear" and isinstance(out_shape, tuple) and len(out_shape) == 2:
            return rule, node
        return None, node

    # -- composition

    def _compose_estimate(self, whole: bool = False) -> Tensor:
        values: dict[fx.Node, Any] = {}
        for n in self._nodes:
            if n.op == "placeholder":
                values[n] = 1.0
            elif n in self._est_rules:
                values[n] = _estimate(self._est_rules[n], values)
        source = self._head_rule.input if self._head_rule is not None and not whole else self._out_node
        value = values[source]
        if not isinstance(value, Tensor):
            value = torch.tensor(float(value))
        return value

    def _compute(self, mode: str) -> _Analysis:
        """The analysis; a progress bar on terminals (stderr) and one log line per weighted layer,
        as the sound bound of a large model takes minutes."""
        begin = time.perf_counter()
        with _eval_mode(self.model):
            rec = self._record()
            rules = self._rules(rec)
        head, out = self._head(rec, rules)
        chains = _chains(self._nodes, rec, rules) if self.fold else {}
        bounds: dict[fx.Node, float] = {}
        memo: dict[tuple, float] = {}
        layers = [n for n in self._nodes if isinstance(rules.get(n), (_Linear, _Leaf))]
        logger.info("%s Lipschitz bound of %s: traced and checked in %.1f s, %d weighted layers to bound", mode,
                    type(self.model).__name__, time.perf_counter() - begin, len(layers))
        with tqdm(total=len(layers), desc=f"{mode} Lipschitz bound", unit="layer", leave=False, disable=None) as bar:
            for n in self._nodes:
                if n.op == "placeholder" and rec.dep[n]:
                    bounds[n] = 1.0
                elif n in rules:
                    start = time.perf_counter()
                    bounds[n] = _bound(rules[n], rules, chains, bounds, memo, mode, self.fold)
                    if isinstance(rules[n], (_Linear, _Leaf)):
                        bar.update()
                        seconds = time.perf_counter() - start
                        logger.log(logging.INFO if seconds >= 1.0 else logging.DEBUG, "  %s (%s): %.1f s", n.name,
                                   _describe_node(self.graph_module, n), seconds)
        n_out = rec.shape[out][-1] if isinstance(rec.shape[out], tuple) and len(rec.shape[out]) == 2 else None
        total = bounds[out]
        if head is not None:
            weight = head.weight.detach().to(torch.float64)
            body = bounds[head.input]
            pair = head_distances(weight) * body
            for source, s, gain in chains.get(head.input, []):
                vector = head.in_scale(s)
                if vector is not None:
                    pair = torch.minimum(pair, head_distances(weight * vector.to(weight)[None, :]) * (gain * bounds[source]))
        elif n_out is not None:
            body = total
            pair = torch.full((n_out, n_out), math.sqrt(2.0) * total, dtype=torch.float64)
            pair.fill_diagonal_(0.0)
        else:
            body, pair = total, None
        if mode == "sound":
            error = ForwardError(*_forward_error(self._nodes, rec, rules, bounds, memo, out))
            rounding = _Rounding(self._nodes, rec, rules, bounds, memo, out)
        else:
            error, rounding = ForwardError(math.inf, math.inf), None
        names = {n.name: v for n, v in bounds.items()}
        logger.info("%s Lipschitz bound of %s: %.1f s in all", mode, type(self.model).__name__, time.perf_counter() - begin)
        return _Analysis(float(body), float(total), None if pair is None else pair.cpu(), names, error,
                         rec.norms.get(out, 0.0), rounding=rounding)


#: the name used before the layer-stack path was merged into this engine
GraphLipschitzEstimator = LipschitzEstimator


def _same_first_example(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape[1:] != b.shape[1:]:
            return False
        x, y = a[0], b[0]
        return bool(((x == y) | (x.isnan() & y.isnan())).all())
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_first_example(x, y) for x, y in zip(a, b))
    return True


def _first_norm(value: Any) -> float:
    """L2 norm of example 0 (the reference point 0 of the rounding model)."""
    if isinstance(value, Tensor):
        return float(value[0].detach().to(torch.float64).norm()) if value.dim() else 0.0
    if isinstance(value, (tuple, list)):
        return math.sqrt(sum(_first_norm(v) ** 2 for v in value))
    return 0.0


def _estimate(rule: _Rule, values: dict[fx.Node, Any]) -> Any:
    """One node of the training estimate: leaves' estimates, the ops' constants."""
    if isinstance(rule, _Linear):
        return rule.estimate() * values[rule.input]
    if isinstance(rule, _Leaf):
        return rule.rule.estimate(rule.module, tuple(rule.in_shape)) * values[rule.input]
    if isinstance(rule, _Scale):
        peak = float(rule.scale.max()) if rule.scale.numel() else 0.0
        return values[rule.input] * peak
    if isinstance(rule, _Gain):
        return values[rule.input] * rule.gain
    if isinstance(rule, _Sum):
        return sum(values[node] * c for node, c in rule.terms)
    if isinstance(rule, _Cat):
        return sum(values[node] ** 2 for node in rule.inputs) ** 0.5
    raise AssertionError(rule)


def _forward_error(nodes: list[fx.Node], rec: "_Record", rules: dict, bounds: dict, memo: dict, out: fx.Node,
                   norms: dict[fx.Node, Any] | None = None) -> tuple[Any, float]:
    """The recurrence of :mod:`relaxplug.lipschitz.rounding`: ``E_v = G_v E_in + local_v``, affine in
    the distance ``r`` from a reference point ``x_0`` at which every node's computed norm
    ``||v~(x_0)||`` is known (``norms``: floats, or ``(B,)`` tensors for a batch of reference points;
    default: the recorded run at ``x_0 = 0``, where ``r = ||x||``). Returns ``(e0, e1)``, the error
    of the computed logits at any point within ``r`` of ``x_0`` being at most ``e0 + e1 r``.

    Magnitudes: ``A_v(r) = ||v~(x_0)|| + E_v(0) + L_v r`` bounds the exact ``||v(x)||``, and
    ``A_v + E_v`` the computed value. A local error that depends on the node's own magnitude,
    ``local = T(r) + g A_v(r)``, is solved in closed form at ``r = 0``:
    ``E_v(0) = (G E_in(0) + T(0) + g ||v~(x_0)||) / (1 - g)``."""
    u, u_in = unit_roundoff(rec.const_dtype, rec.device)
    norms = rec.norms if norms is None else norms
    err: dict[fx.Node, tuple[Any, float]] = {}

    def computed(n: fx.Node) -> tuple[Any, float]:
        """Bound on the computed value's norm, ``A_n + E_n``, affine in ``r``."""
        e0, e1 = err[n]
        return norms.get(n, 0.0) * _UP + 2.0 * e0, bounds[n] + e1

    def solve(n: fx.Node, prop: tuple[Any, float], terms: tuple[Any, float], g: float) -> tuple[Any, float]:
        """``E = prop + terms + g A_n`` with ``A_n = ||n~(x_0)|| + E(0) + L_n r``."""
        if g >= 0.5:
            raise UnsupportedLayerError(f"no useful rounding-error bound for node {n.name!r}")
        c = norms.get(n, 0.0) * _UP
        return (prop[0] + terms[0] + g * c) / (1.0 - g), prop[1] + terms[1] + g * bounds[n]

    for n in nodes:
        if n.op == "placeholder" and rec.dep.get(n, False):
            err[n] = (0.0, 0.0)
            continue
        rule = rules.get(n)
        if rule is None:
            continue
        if isinstance(rule, (_Linear, _Leaf, _Scale, _Gain)):
            e_in, a_in = err[rule.input], computed(rule.input)
            if isinstance(rule, _Linear):
                # || |W| |x~| + |b| || <= || |W| || (A_in + E_in) + ||b||
                gain = _linear_norm(rule, memo)
                dot = dot_gamma(rule.fan_in, u, u_in)
                k = _linear_abs_norm(rule, memo) * dot
                terms, g = (k * a_in[0] + dot * rule.bias_norm(rec.shape[n][1:]), k * a_in[1]), 0.0
            elif isinstance(rule, _Leaf) or (isinstance(rule, _Scale) and rule.leaf is not None):
                leaf = rule if isinstance(rule, _Leaf) else rule.leaf
                gain = leaf.bound()
                terms, g = leaf.rounding(u, a_in, gain)
            elif isinstance(rule, _Scale):
                gain = (float(rule.scale.max()) if rule.scale.numel() else 0.0) * _UP
                g = gamma(rule.roundings, u)
                terms, g = (g * (gain * a_in[0] + rule.offset), g * gain * a_in[1]), 0.0
            else:
                # |f(x~)| <= |f(x)| + G E_in: local <= gamma_ulps (G (A_in + 2 E_in) + A_out), plus a jump
                gain = rule.gain
                g = gamma(rule.ulps, u) if rule.ulps else 0.0
                numel = math.prod(rec.shape[n][1:]) if isinstance(rec.shape.get(n), tuple) else 0
                terms = (g * gain * (a_in[0] + e_in[0]) + rule.jump * math.sqrt(numel), g * gain * (a_in[1] + e_in[1]))
            err[n] = solve(n, (gain * e_in[0], gain * e_in[1]), terms, g)
        elif isinstance(rule, _Sum):
            # fl(a + fl(c b)): two roundings, relative to |a~| + |c b~|
            g = gamma(2, u)
            parts = [(c, err[t], computed(t)) for t, c in rule.terms]
            err[n] = (sum(c * (e[0] + g * a[0]) for c, e, a in parts), sum(c * (e[1] + g * a[1]) for c, e, a in parts))
        elif isinstance(rule, _Cat):
            err[n] = (sum(err[t][0] ** 2 for t in rule.inputs) ** 0.5, math.sqrt(sum(err[t][1] ** 2 for t in rule.inputs)))
    e0, e1 = err[out]
    return e0 * _UP, e1 * _UP


def _linear_norm(rule: _Linear, memo: dict) -> float:
    key = (id(rule), None, None)  # the key ``_bound`` uses for the unfolded sound norm
    if key not in memo:
        memo[key] = (rule.norm(None, None, "sound"), None, None)
    return memo[key][0]


def _linear_abs_norm(rule: _Linear, memo: dict) -> float:
    key = ("abs", id(rule))
    if key not in memo:
        memo[key] = (rule.abs_norm(), rule)
    return memo[key][0]


#: models inside :func:`checked_once`: ``{(id(estimator), mode)}`` already compared with the model
_CHECKED: "weakref.WeakKeyDictionary[nn.Module, set[tuple[int, str]]]" = weakref.WeakKeyDictionary()


@contextmanager
def checked_once(model: nn.Module) -> Iterator[None]:
    """Within the block, a cached analysis of ``model`` is compared with the model (structure and
    every tensor value, :class:`~relaxplug.lipschitz.cache.ComputationSnapshot`) on its first read
    only, not on every read. For blocks that neither run nor change the model: GloRo's bounds and
    radius of one batch read the analysis up to three times. A nested block shares the outer one."""
    outer = model in _CHECKED
    if not outer:
        _CHECKED[model] = set()
    try:
        yield
    finally:
        if not outer:
            _CHECKED.pop(model, None)


def estimator_for(model: nn.Module, input_shape: Sequence[int]) -> LipschitzEstimator:
    """The cached :class:`LipschitzEstimator` of ``model`` for inputs of ``input_shape``."""
    per_shape = _ESTIMATORS.setdefault(model, {})
    key = tuple(int(s) for s in input_shape)
    if key not in per_shape:
        per_shape[key] = LipschitzEstimator(model, key)
    return per_shape[key]


_ESTIMATORS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], LipschitzEstimator]]" = weakref.WeakKeyDictionary()


def load_lipschitz_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Put power-iteration buffers (``...lipschitz_u_*`` keys of a state dict) into ``model``, creating them."""
    for key, value in state.items():
        owner, _, name = key.rpartition(".")
        if not name.startswith(POWER_VECTOR_PREFIX):
            continue
        module = model.get_submodule(owner) if owner else model
        like = next(iter(module.parameters()), value)
        module.register_buffer(name, value.detach().clone().to(device=like.device, dtype=like.dtype))


def init_lipschitz_state(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Create the power-iteration buffers of every protocol layer (no update), e.g. before
    ``model.load_state_dict`` of a checkpoint written during GloRo training."""
    estimator_for(model, input_shape).power(0)


@dataclass
class _Record:
    recorder: _Recorder
    device: torch.device
    batch: int
    const_dtype: torch.dtype
    norms: dict[fx.Node, float]  # L2 norm of each input-dependent node at input 0

    @property
    def dep(self) -> dict[fx.Node, bool]:
        return self.recorder.dep

    @property
    def shape(self) -> dict[fx.Node, Any]:
        return self.recorder.shape

    @property
    def dtype(self) -> dict[fx.Node, torch.dtype]:
        return self.recorder.dtype

    @property
    def const(self) -> dict[fx.Node, Any]:
        return self.recorder.const

    def calls(self, n: fx.Node) -> tuple[tuple, dict]:
        return self.recorder.calls[n]


class _eval_mode:
    """Context manager: every submodule in eval mode, flags restored afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.flags = [m.training for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, flag in zip(self.model.modules(), self.flags):
            m.training = flag


def _describe_node(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "call_module":
        return f"module {n.target!r} ({type(gm.get_submodule(n.target)).__name__})"
    if n.op == "call_method":
        return f"method Tensor.{n.target}"
    if n.op == "call_function":
        name = getattr(n.target, "__qualname__", None) or getattr(n.target, "__name__", None) or repr(n.target)
        module = getattr(n.target, "__module__", None) or ""
        return f"function {module + '.' if module and module != 'builtins' else ''}{name}".replace("_operator.", "operator.")
    return f"{n.op} {n.target}"


# ----------------------------------------------------------------------------- rule builder


class _RuleBuilder:
    """Turns one input-dependent graph node into a rule (or raises UnsupportedLayerError)."""

    def __init__(self, gm: fx.GraphModule, rec: _Record, n: fx.Node):
        self.gm, self.rec, self.n = gm, rec, n
        self.args, self.kwargs = rec.calls(n)
        self.what = f"{_describe_node(gm, n)} at node {n.name!r}"

    # helpers

    def unsupported(self, why: str = "") -> UnsupportedLayerError:
        reason = f" ({why})" if why else ""
        return UnsupportedLayerError(f"GloRo has no Lipschitz bound for {self.what}{reason}; supported: {SUPPORTED}")

    def single_input(self) -> fx.Node:
        deps = _dep_nodes((self.args, self.kwargs))
        if len(deps) != 1 or not (self.args and _is_dep(self.args[0])):
            raise self.unsupported("it combines several input-dependent values, or not through its first argument")
        return deps[0]

    def shape_of(self, node: fx.Node) -> tuple[int, ...]:
        shape = self.rec.shape[node]
        if not isinstance(shape, tuple):
            raise self.unsupported(f"its input {node.name!r} is not a tensor")
        return shape

    def per_sample(self, node: fx.Node) -> tuple[int, ...]:
        return self.shape_of(node)[1:]

    def replay_fn(self) -> Callable[[Tensor], Tensor]:
        n, args, kwargs = self.n, self.args, self.kwargs
        if n.op == "call_module":
            module = self.gm.get_submodule(n.target)
            return lambda t: module(*_substitute(args, t), **_substitute(kwargs, t))
        if n.op == "call_method":
            return lambda t: getattr(t, n.target)(*_substitute(args[1:], t), **_substitute(kwargs, t))
        return lambda t: n.target(*_substitute(args, t), **_substitute(kwargs, t))

    def gain(self, value: float, chain: str | None = None, ulps: float = LIBRARY_ULPS) -> _Gain:
        source = self.single_input()
        replay = self.replay_fn() if chain == "permute" else None
        return _Gain(source, float(value), chain, replay, ulps=0.0 if chain == "permute" else ulps)

    # dispatch

    def build(self) -> _Rule:
        n = self.n
        if n.op == "call_module":
            return self.module(self.gm.get_submodule(n.target))
        if n.op == "call_method":
            return self.method(n.target)
        if n.op == "call_function":
            return self.function(n.target)
        raise self.unsupported()

    def module(self, m: nn.Module) -> _Rule:
        """Built-in modules by *exact* class (a subclass may compute something else: it is traced into
        when it is not a torch.nn class, refused otherwise); protocol layers by their rule."""
        cls = type(m)
        if is_plain_linear(m):
            return self.linear(self.single_input(), m.weight, m, m.bias)
        if cls in (nn.Conv1d, nn.Conv2d):
            source = self.single_input()
            return self.conv(source, m.weight, m.stride, m.padding, m.dilation, m.groups, m.padding_mode,
                             getattr(m, "_reversed_padding_repeated_twice", None), cls is nn.Conv1d, m, m.bias)
        rule = lipschitz_rule(m)
        if rule is not None:
            source = self.single_input()
            leaf = _Leaf(source, m, rule, self.per_sample(source))
            exact = callable(getattr(m, "lipschitz_rounding", None)) and tuple(m.lipschitz_rounding(leaf.in_shape)) == (0.0, 0.0)
            if exact and leaf.bound() <= 1.0 and _is_permutation(self.replay_fn(), self.shape_of(source), self.rec.device):
                # declared 1-Lipschitz and exact, and a fixed permutation on two probes: scalings pass through it
                return _Gain(source, 1.0, "permute", self.replay_fn(), ulps=0.0)
            scale = _diagonal_scale(self.replay_fn(), self.shape_of(source), self.rec.device)
            if scale is not None and float(scale.max()) <= leaf.bound() * (1 + 1e-6):
                # a per-coordinate affine map s * x + t (checked on probes) within its declared bound:
                # bounded by its declared constant, and foldable into the next linear layer
                return _Scale(source, scale, leaf=leaf)
            return leaf
        if cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            source = self.single_input()
            if m.training or not m.track_running_stats or m.running_var is None:
                raise self.unsupported("BatchNorm without running statistics (or in training mode) uses batch statistics")
            return self.batch_norm(source, m.running_var, m.weight, m.eps, m.running_mean, m.bias)
        if cls in (nn.PixelShuffle, nn.PixelUnshuffle, nn.Flatten, nn.Unflatten):
            return self.gain(1.0, "permute")
        if cls in (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
            return self.gain(1.0, "elementwise")  # dropout is the identity in eval mode (checked)
        if cls in _ACTIVATION_MODULES:
            return self.gain(ACTIVATION_LIPSCHITZ[_ACTIVATION_MODULES[cls]], "elementwise")
        if cls is nn.Softplus:
            return self.softplus(float(m.beta), float(m.threshold))
        if cls is nn.LeakyReLU:
            return self.gain(max(1.0, abs(float(m.negative_slope))), "elementwise")
        if cls is nn.ELU:
            return self.gain(max(1.0, abs(float(m.alpha))), "elementwise")
        if cls is nn.GELU:
            return self.gain(ACTIVATION_LIPSCHITZ["gelu_tanh" if m.approximate == "tanh" else "gelu"], "elementwise")
        if cls is nn.PReLU:
            return self.gain(max(1.0, float(m.weight.detach().abs().max()) * _UP), "elementwise")
        if cls is nn.RReLU:
            return self.gain(max(1.0, abs(m.lower), abs(m.upper)), "elementwise")
        if cls in _POOL_MODULES:
            return self.pool()
        if cls in _MAXPOOL_MODULES:
            if getattr(m, "return_indices", False):
                raise self.unsupported("return_indices=True")
            source = self.single_input()
            if cls in (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d):
                return _Gain(source, self.adaptive_max_gain(source), ulps=0.0)
            return _Gain(source, self.max_pool_gain(source, m.kernel_size, m.stride, m.padding, m.dilation), ulps=0.0)
        raise self.unsupported()

    def cast(self, name: str) -> _Gain:
        """``.to``/``.float``/``.double``/``.type(_as)``: allowed when the dtype is unchanged or widens exactly
        (float16/bfloat16/float32 to float32/float64); narrowing and integer casts round (not Lipschitz)."""
        source = self.single_input()
        before, after = self.rec.dtype.get(source), self.rec.dtype.get(self.n)
        if before != after and (before, after) not in _EXACT_WIDENING:
            raise self.unsupported(f"a cast from {before} to {after} rounds values: not Lipschitz")
        return self.gain(1.0, "elementwise", ulps=0.0)

    def softplus(self, beta: float, threshold: float) -> _Gain:
        """``log(1 + exp(beta x)) / beta`` below ``beta x = threshold``, ``x`` above: a jump of
        ``J = log1p(exp(-threshold)) / beta`` at the threshold. Refused unless ``J <= SOFTPLUS_MAX_JUMP``;
        an accepted ``J`` enters the forward-error model as an additive term per coordinate."""
        if not beta > 0:
            raise self.unsupported(f"softplus with beta={beta} (must be > 0)")
        jump = math.log1p(math.exp(-threshold)) / beta if threshold < 700 else 0.0
        if jump > SOFTPLUS_MAX_JUMP:
            raise self.unsupported(
                f"softplus with threshold={threshold} is discontinuous (jump {jump:.3g} at beta*x = threshold); "
                f"allowed when the jump is <= {SOFTPLUS_MAX_JUMP:g} (e.g. the default threshold 20)"
            )
        rule = self.gain(ACTIVATION_LIPSCHITZ["softplus"], "elementwise")
        rule.jump = jump
        return rule

    def method(self, name: str) -> _Rule:
        if name in _ACTIVATION_METHODS:
            return self.gain(ACTIVATION_LIPSCHITZ[_ACTIVATION_METHODS[name]], "elementwise")
        if name in _PERMUTE_METHODS:
            return self.gain(1.0, "permute")
        if name in _IDENTITY_METHODS:
            return self.gain(1.0, "elementwise", ulps=0.0)
        if name in _CAST_METHODS:
            return self.cast(name)
        if name in _COPY_METHODS:
            return self.copy()
        if name in ("mean", "sum"):
            return self.reduce(name, self.args[1:], self.kwargs)
        if name in ("add", "add_", "sub", "sub_", "__add__", "__sub__", "__radd__", "__rsub__"):
            alpha = self.kwargs.get("alpha", 1)
            if name == "__rsub__":
                return self.add_sub([self.args[1], self.args[0]], alpha)
            return self.add_sub([self.args[0], self.args[1]], alpha)
        if name in ("mul", "mul_", "__mul__", "__rmul__"):
            return self.mul(self.args[0], self.args[1])
        if name in ("div", "div_", "__truediv__"):
            if self.kwargs.get("rounding_mode") is not None:
                raise self.unsupported("rounded division")
            return self.div(self.args[0], self.args[1])
        if name in ("neg", "neg_", "__neg__"):
            return self.gain(1.0, "elementwise")
        if name in ("chunk", "split", "unbind", "tensor_split"):
            return self.split(name)
        raise self.unsupported()

    def function(self, target: Any) -> _Rule:
        if target in _ACTIVATION_FUNCTIONS:
            return self.gain(ACTIVATION_LIPSCHITZ[_ACTIVATION_FUNCTIONS[target]], "elementwise")
        if target is F.leaky_relu:
            slope = _bind(target, self.args, self.kwargs, ())["negative_slope"]
            return self.gain(max(1.0, abs(float(slope))), "elementwise")
        if target is F.elu:
            return self.gain(max(1.0, abs(float(_bind(target, self.args, self.kwargs, ())["alpha"]))), "elementwise")
        if target is F.gelu:
            approximate = _bind(target, self.args, self.kwargs, ("input", "approximate"), {"approximate": "none"})["approximate"]
            return self.gain(ACTIVATION_LIPSCHITZ["gelu_tanh" if approximate == "tanh" else "gelu"], "elementwise")
        if target in _PERMUTE_FUNCTIONS:
            return self.gain(1.0, "permute")
        if target is torch.clone:
            return self.gain(1.0, "elementwise", ulps=0.0)
        if target is F.softplus:
            b = _bind(target, self.args, self.kwargs, ("input", "beta", "threshold"), {"beta": 1.0, "threshold": 20.0})
            return self.softplus(float(b["beta"]), float(b["threshold"]))
        if target in _DROPOUT_FUNCTIONS:
            if _bind(target, self.args, self.kwargs, ())["training"]:
                raise self.unsupported("dropout with training=True is random")
            return self.gain(1.0, "elementwise")
        if target is F.linear:
            source = self.single_input()
            bound = _bind(target, self.args, self.kwargs, ("input", "weight", "bias"))
            return self.linear(source, bound["weight"], bias=bound.get("bias"))
        if target in (F.conv1d, F.conv2d):
            source = self.single_input()
            b = _bind(target, self.args, self.kwargs, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                      {"stride": 1, "padding": 0, "dilation": 1, "groups": 1})
            return self.conv(source, b["weight"], b["stride"], b["padding"], b["dilation"], b["groups"], "zeros", None,
                             target is F.conv1d, bias=b.get("bias"))
        if target is F.batch_norm:
            source = self.single_input()
            b = _bind(target, self.args, self.kwargs, ())
            if b["training"] or b["running_var"] is None:
                raise self.unsupported("batch_norm with training=True uses batch statistics")
            return self.batch_norm(source, b["running_var"], b["weight"], b["eps"], b["running_mean"], b["bias"])
        if target in _POOL_FUNCTIONS:
            return self.pool()
        if target in (F.max_pool1d, F.max_pool2d):
            source = self.single_input()
            names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            b = _bind(target, self.args, self.kwargs, names)
            b = {**{"stride": None, "padding": 0, "dilation": 1, "return_indices": False}, **b}
            if b.get("return_indices"):
                raise self.unsupported("return_indices=True")
            stride = b["stride"] if b["stride"] not in (None, [], ()) else b["kernel_size"]
            return _Gain(source, self.max_pool_gain(source, b["kernel_size"], stride, b["padding"], b["dilation"]), ulps=0.0)
        if target in (F.adaptive_max_pool1d, F.adaptive_max_pool2d):
            b = _bind(target, self.args, self.kwargs, ("input", "output_size", "return_indices"))
            if b.get("return_indices"):
                raise self.unsupported("return_indices=True")
            source = self.single_input()
            return _Gain(source, self.adaptive_max_gain(source), ulps=0.0)
        if target is F.pad:
            b = _bind(target, self.args, self.kwargs, ())
            if b["mode"] == "constant":
                source = self.single_input()
                spatial = len(b["pad"]) <= 2 * (len(self.per_sample(source)) - 1)
                return _Gain(source, 1.0, "channel" if spatial else None, self.replay_fn(), ulps=0.0)  # an isometric embedding
            return self.copy()
        if target in _COPY_FUNCTIONS:
            if target is operator.getitem and _is_dep(self.args[0]) and not isinstance(self.rec.shape[self.args[0].node], tuple):
                container = self.args[0].node  # picking one part of a chunk/split: L of the container
                if _dep_nodes(self.args[1:]):
                    raise self.unsupported("input-dependent index")
                return _Gain(container, 1.0)
            return self.copy()
        if target in (torch.mean, torch.sum):
            return self.reduce(target.__name__, self.args[1:], self.kwargs)
        if target in _ADD_FUNCTIONS:
            return self.add_sub([self.args[0], self.args[1]], self.kwargs.get("alpha", 1))
        if target in _SUB_FUNCTIONS:
            return self.add_sub([self.args[0], self.args[1]], self.kwargs.get("alpha", 1))
        if target in _MUL_FUNCTIONS:
            return self.mul(self.args[0], self.args[1])
        if target in _DIV_FUNCTIONS:
            if self.kwargs.get("rounding_mode") is not None:
                raise self.unsupported("rounded division")
            return self.div(self.args[0], self.args[1])
        if target in _NEG_FUNCTIONS:
            return self.gain(1.0, "elementwise")
        if target in _CAT_FUNCTIONS:
            return self.cat(target)
        if target in _SPLIT_FUNCTIONS:
            return self.split(target.__name__)
        raise self.unsupported()

    # op families

    def linear(self, source: fx.Node, weight: Any, module: nn.Module | None = None, bias: Any = None) -> _Linear:
        if not isinstance(weight, Tensor) or (bias is not None and not isinstance(bias, Tensor)):
            raise self.unsupported("the weight or bias depends on the input")
        return _Linear(source, "linear", weight, self.per_sample(source), module=module, bias=bias)

    def conv(self, source: fx.Node, weight: Any, stride: Any, padding: Any, dilation: Any, groups: int,
             padding_mode: str, reversed_padding: Any, conv1d: bool, module: nn.Module | None = None,
             bias: Any = None) -> _Linear:
        if not isinstance(weight, Tensor) or (bias is not None and not isinstance(bias, Tensor)):
            raise self.unsupported("the weight or bias depends on the input")
        shape = self.per_sample(source)
        dims = 1 if conv1d else 2
        if len(shape) != dims + 1:
            raise self.unsupported(f"input of per-example shape {shape}")
        pre_gain = 1.0
        hw = tuple(shape[1:])
        if padding_mode != "zeros":
            # the module pads with reflect/replicate/circular copies, then convolves unpadded
            kernel = tuple(weight.shape[2:])
            pre_gain, hw = padding_plan(padding_mode, tuple(reversed_padding), tuple(shape), kernel,
                                        _tuple(stride, dims), _tuple(dilation, dims))
            padding = 0
        if conv1d:
            stride, dilation = (1, _tuple(stride, 1)[0]), (1, _tuple(dilation, 1)[0])
            padding = padding if isinstance(padding, str) else (0, _tuple(padding, 1)[0])
            hw = (1, hw[0])
        conv = {"stride": stride, "padding": padding, "dilation": dilation, "groups": int(groups)}
        return _Linear(source, "conv", weight, shape, conv, hw, pre_gain, conv1d, module if not conv1d else None, bias)

    def batch_norm(self, source: fx.Node, running_var: Any, weight: Any, eps: float, running_mean: Any = None,
                   bias: Any = None) -> _Scale:
        if any(t is not None and not isinstance(t, Tensor) for t in (running_var, weight, running_mean, bias)) \
                or not isinstance(running_var, Tensor):
            raise self.unsupported("BatchNorm statistics depend on the input")
        var = running_var.detach().to(torch.float64)
        scale = 1.0 / torch.sqrt(var + float(eps))
        if weight is not None:
            scale = scale * weight.detach().to(torch.float64)
        shape = self.per_sample(source)
        # rounding: the statistics are rounded at their own size, |s m| + |b| per channel, broadcast
        offset = torch.zeros_like(scale)
        if running_mean is not None:
            offset = offset + (scale * running_mean.detach().to(torch.float64)).abs()
        if bias is not None:
            offset = offset + bias.detach().to(torch.float64).abs()
        spatial = math.prod(shape[1:]) if len(shape) > 1 else 1
        offset_norm = float(offset.norm()) * math.sqrt(spatial) * _UP
        return _Scale(source, scale.abs().reshape(-1, *([1] * (len(shape) - 1))), offset_norm, BATCHNORM_ROUNDINGS)

    def pool(self) -> _Gain:
        source = self.single_input()
        shape = self.shape_of(source)
        bound = _nonneg_linear_bound(self.replay_fn(), shape, self.rec.device)
        per_channel = math.prod(shape[2:]) if len(shape) > 2 else math.prod(shape[1:])
        return _Gain(source, bound, "channel", self.replay_fn(), ulps=per_channel + 2)

    def reduce(self, name: str, args: tuple, kwargs: dict) -> _Gain:
        source = self.single_input()
        shape = self.shape_of(source)
        dims = kwargs.get("dim", args[0] if args else None)
        if dims is None or (isinstance(dims, (tuple, list)) and len(dims) == 0):
            raise self.unsupported(f"{name} over all dimensions includes the batch dimension")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % len(shape) for d in dims]
        if 0 in dims:
            raise self.unsupported(f"{name} over the batch dimension")
        bound = _nonneg_linear_bound(self.replay_fn(), shape, self.rec.device)
        terms = math.prod(shape[d] for d in dims)
        return _Gain(source, bound, None if 1 in dims else "channel", self.replay_fn(), ulps=terms + 2)

    def max_pool_gain(self, source: fx.Node, kernel: Any, stride: Any, padding: Any, dilation: Any) -> float:
        shape_in = self.shape_of(source)[2:]
        shape_out = self.rec.shape[self.n]
        if not isinstance(shape_out, tuple):
            raise self.unsupported()
        shape_out = shape_out[2:]
        d = len(shape_in)
        k, s, p, dl = _tuple(kernel, d), _tuple(stride, d), _tuple(padding, d), _tuple(dilation, d)
        m = 1
        for i in range(d):
            m *= _window_multiplicity(shape_in[i], shape_out[i], k[i], s[i], p[i], dl[i])
        return math.sqrt(m)

    def adaptive_max_gain(self, source: fx.Node) -> float:
        shape_in = self.shape_of(source)[2:]
        shape_out = self.rec.shape[self.n][2:]
        m = 1
        for size, out in zip(shape_in, shape_out):
            m *= _adaptive_multiplicity(size, out)
        return math.sqrt(m)

    def copy(self) -> _Gain:
        source = self.single_input()
        bound = _copy_bound(self.replay_fn(), self.shape_of(source), self.rec.device, self.what)
        return _Gain(source, bound, ulps=0.0)

    def _operand(self, value: Any) -> tuple[fx.Node | None, Any]:
        return (value.node, None) if _is_dep(value) else (None, value)

    def _rep(self, node: fx.Node) -> float:
        """``sqrt(copies)`` when ``node`` is broadcast to this node's shape."""
        out = self.shape_of(self.n)
        return math.sqrt(math.prod(out) / math.prod(self.shape_of(node)))

    def add_sub(self, operands: list[Any], alpha: Any) -> _Rule:
        if _dep_nodes(alpha):
            raise self.unsupported("input-dependent alpha")
        coefficients = [1.0, abs(float(alpha))]
        terms = [(v.node, c * self._rep(v.node)) for v, c in zip(operands, coefficients) if _is_dep(v)]
        if len(terms) == 1 and terms[0][1] == 1.0 and self.shape_of(terms[0][0]) == self.shape_of(self.n):
            return _Gain(terms[0][0], 1.0, "elementwise")  # a shift by a constant
        return _Sum(terms)

    def _constant_magnitude(self, value: Any, node: fx.Node, invert: bool) -> tuple[Tensor | None, float]:
        """``(|c| as a per-sample scale or None, max |c|)`` for a constant factor ``c`` (``1/c`` if ``invert``)."""
        if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
            raise self.unsupported(f"constant of type {type(value).__name__}")
        c = torch.as_tensor(value).detach().to(torch.float64).abs()
        if invert:
            if bool((c == 0).any()):
                raise self.unsupported("division by a constant with zero entries")
            c = 1.0 / c
        if not bool(torch.isfinite(c).all()):
            raise self.unsupported("non-finite constant")
        out = self.shape_of(self.n)
        if c.dim() > len(out) - 1:
            lead = c.shape[: c.dim() - (len(out) - 1)]
            if any(int(v) != 1 for v in lead):
                raise self.unsupported("a constant that differs between examples of the batch")
            c = c.reshape(c.shape[c.dim() - (len(out) - 1):])
        peak = float(c.max()) if c.numel() else 0.0
        same_shape = self.shape_of(node) == out
        return (c if same_shape else None), peak

    def mul(self, a: Any, b: Any) -> _Rule:
        if _is_dep(a) and _is_dep(b):
            silu = self._silu_pattern(a.node, b.node)
            if silu is not None:
                return _Gain(silu, ACTIVATION_LIPSCHITZ["silu"], "elementwise")
            raise self.unsupported("product of two input-dependent tensors (not globally Lipschitz)")
        node, constant = (a.node, b) if _is_dep(a) else (b.node, a)
        scale, peak = self._constant_magnitude(constant, node, invert=False)
        if scale is not None:
            return _Scale(node, scale)
        return _Gain(node, peak * _UP * self._rep(node))

    def div(self, a: Any, b: Any) -> _Rule:
        if _is_dep(b):
            raise self.unsupported("division by an input-dependent tensor")
        scale, peak = self._constant_magnitude(b, a.node, invert=True)
        if scale is not None:
            return _Scale(a.node, scale)
        return _Gain(a.node, peak * _UP * self._rep(a.node))

    def _silu_pattern(self, a: fx.Node, b: fx.Node) -> fx.Node | None:
        """``x * sigmoid(x)`` (either order) is SiLU(x)."""
        for x, s in ((a, b), (b, a)):
            is_sigmoid = (
                (s.op == "call_function" and s.target in (torch.sigmoid, F.sigmoid))
                or (s.op == "call_method" and s.target == "sigmoid")
                or (s.op == "call_module" and type(self.gm.get_submodule(s.target)) is nn.Sigmoid)
            )
            if is_sigmoid and len(s.args) == 1 and not s.kwargs and s.args[0] is x and self.shape_of(x) == self.shape_of(self.n):
                return x
        return None

    def cat(self, target: Any) -> _Cat:
        b = _bind(target, self.args, self.kwargs, ("tensors", "dim"), {"dim": 0})
        tensors, dim = b["tensors"], b["dim"]
        if _dep_nodes(dim) or not isinstance(tensors, (list, tuple)):
            raise self.unsupported()
        ndim = len(self.shape_of(self.n))
        if int(dim) % ndim == 0:
            raise self.unsupported("concatenation along the batch dimension")
        inputs = [t.node for t in tensors if _is_dep(t)]
        return _Cat(inputs)

    def split(self, name: str) -> _Gain:
        source = self.single_input()
        names = {"chunk": ("input", "chunks", "dim"), "split": ("tensor", "split_size_or_sections", "dim"),
                 "unbind": ("input", "dim"), "tensor_split": ("input", "indices_or_sections", "dim")}[name]
        b = dict(zip(names, self.args))
        b.update(self.kwargs)
        dim = int(b.get("dim", 0))
        if dim % len(self.shape_of(source)) == 0:
            raise self.unsupported("splitting the batch dimension")
        return _Gain(source, 1.0, ulps=0.0)  # every part is a subset of the coordinates


# ----------------------------------------------------------------------------- bound propagation


_Chain = list[tuple[fx.Node, Tensor, float]]


def _chains(nodes: list[fx.Node], rec: _Record, rules: dict[fx.Node, _Rule]) -> dict[fx.Node, _Chain]:
    """Pending scalings: ``(b, s, g)`` in ``chains[v]`` means ``v(x) - v(x') = g diag(s) A (b(x) - b(x'))``
    for some matrix ``||A|| <= 1`` (``s`` broadcastable to ``v``'s per-sample shape), so a linear map
    ``W`` applied to ``v`` is ``g * ||W diag(s)|| * L[b]``-Lipschitz."""
    chains: dict[fx.Node, _Chain] = {}
    for n in nodes:
        rule = rules.get(n)
        out: _Chain = []
        if isinstance(rule, _Scale):
            out.append((rule.input, rule.scale, 1.0))
            for b, s, g in chains.get(rule.input, []):
                out.append((b, rule.scale * s, g))
        elif isinstance(rule, _Gain) and rule.chain is not None:
            shape_in = rec.shape[rule.input][1:] if isinstance(rec.shape.get(rule.input), tuple) else None
            shape_out = rec.shape[n][1:] if isinstance(rec.shape.get(n), tuple) else None
            for b, s, g in chains.get(rule.input, []):
                if shape_in is None or shape_out is None:
                    break
                if rule.chain == "elementwise":
                    out.append((b, s, g * rule.gain))
                elif rule.chain == "permute":
                    full = s.expand(shape_in).to(rec.device)
                    batch = full.unsqueeze(0).expand(rec.batch, *shape_in).contiguous()
                    with torch.no_grad():
                        moved = rule.replay(batch)
                    if isinstance(moved, Tensor) and tuple(moved.shape[1:]) == shape_out:
                        out.append((b, moved[0].detach(), g * rule.gain))
                elif rule.chain == "channel":
                    vector = _per_axis(s, shape_in, 0)
                    if vector is not None and len(shape_out) >= 1 and shape_out[0] == shape_in[0]:
                        moved = vector.reshape(-1, *([1] * (len(shape_out) - 1)))
                        if _commutes(rule.replay, s, moved, shape_in, rec):
                            out.append((b, moved, g * rule.gain))
        if out:
            chains[n] = out[:4]
    return chains


def _commutes(replay: Callable[[Tensor], Tensor] | None, s_in: Tensor, s_out: Tensor, shape_in: tuple[int, ...],
              rec: "_Record") -> bool:
    """Whether the op maps ``diag(s_in) z`` to ``diag(s_out) op(z)`` (checked on a random float64 probe):
    folding a scaling through an op is valid only when the op does not mix the scaled axis."""
    if replay is None:
        return False
    gen = torch.Generator().manual_seed(1)
    probe = torch.randn((rec.batch, *shape_in), generator=gen, dtype=torch.float64).to(rec.device)
    scaled = s_in.to(probe).expand(shape_in).unsqueeze(0) * probe
    with torch.no_grad():
        left, right = replay(scaled), replay(probe)
    if not isinstance(left, Tensor) or not isinstance(right, Tensor) or left.shape != right.shape:
        return False
    expected = s_out.to(right) * right
    return bool(torch.allclose(left, expected, rtol=1e-9, atol=1e-12 * float(expected.abs().max().clamp_min(1))))


def _requires(rule: _Rule, rules: dict[fx.Node, _Rule], chains: dict, fold: bool) -> list[fx.Node]:
    if isinstance(rule, _Linear):
        return [rule.input] + [b for b, _, _ in chains.get(rule.input, [])]
    if isinstance(rule, _Scale):
        inner = rules.get(rule.input)
        if fold and isinstance(inner, _Linear) and _out_scale(inner, rule) is not None:
            return [inner.input] + [b for b, _, _ in chains.get(inner.input, [])]
        return [rule.input]
    if isinstance(rule, (_Gain, _Leaf)):
        return [rule.input]
    if isinstance(rule, _Sum):
        return [node for node, _ in rule.terms]
    if isinstance(rule, _Cat):
        return list(rule.inputs)
    raise AssertionError(rule)


def _out_scale(inner: _Linear, scale: _Scale) -> Tensor | None:
    """The per-output-channel vector of a scaling applied right after a linear layer, or ``None``."""
    out_features = inner.weight.shape[0]
    if inner.kind == "linear":
        shape = (*inner.in_shape[:-1], out_features)
        return _per_axis(scale.scale, shape, -1)
    vector = _per_axis(scale.scale, (out_features, 1, 1) if not inner.conv1d else (out_features, 1), 0)
    return vector if vector is not None and vector.numel() == out_features else None


def _bound(rule: _Rule, rules: dict, chains: dict, bounds: dict[fx.Node, float], memo: dict, mode: str, fold: bool) -> float:
    def norm(linear: _Linear, s_in: Tensor | None, s_out: Tensor | None) -> float:
        key = (id(linear), None if s_in is None else id(s_in), None if s_out is None else id(s_out))
        if key not in memo:
            memo[key] = (linear.norm(s_in, s_out, mode), s_in, s_out)  # keep the tensors alive: ids stay unique
        return memo[key][0]

    def linear_candidates(linear: _Linear, s_out: Tensor | None) -> float:
        best = bounds[linear.input] * norm(linear, None, s_out)
        for b, s, g in chains.get(linear.input, []):
            vector = linear.in_scale(s)
            if vector is not None:
                best = min(best, g * bounds[b] * norm(linear, vector, s_out))
        return best

    if isinstance(rule, _Linear):
        return linear_candidates(rule, None)
    if isinstance(rule, _Scale):
        inner = rules.get(rule.input)
        if fold and isinstance(inner, _Linear):
            s_out = _out_scale(inner, rule)
            if s_out is not None:
                return linear_candidates(inner, s_out)
        peak = float(rule.scale.max()) if rule.scale.numel() else 0.0
        return bounds[rule.input] * peak * _UP
    if isinstance(rule, _Gain):
        return bounds[rule.input] * rule.gain
    if isinstance(rule, _Leaf):
        return bounds[rule.input] * rule.bound()
    if isinstance(rule, _Sum):
        return sum(bounds[node] * c for node, c in rule.terms)
    if isinstance(rule, _Cat):
        return math.sqrt(sum(bounds[node] ** 2 for node in rule.inputs))
    raise AssertionError(rule)

"""L2 Lipschitz bounds of arbitrary networks by walking their ``torch.fx`` graph.

The layer-stack analysis in :mod:`relaxplug.lipschitz.stack` covers ``nn.Sequential`` models built
from the seeds' layers. Model zoos (RobustBench WideResNets and PreAct-ResNets, torchvision
ResNets, CROWN-IBP / auto_LiRPA CNNs) use BatchNorm, residual additions, pooling and an input
normalization ``(x - mu) / sigma`` written inside ``forward``. This module traces such a model
with ``torch.fx``, runs the traced graph once on an example batch (shapes, constants, and a
check that the graph reproduces the model), and propagates an upper bound ``L[v]`` on the L2
Lipschitz constant of every node ``v`` *as a function of the model input*:

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
relative errors ~1e-16 each. Like the layer-stack path, the bound does not model the rounding of
the model's own float32 forward pass: the certifier's rounding allowance does.

Anything else raises :class:`~relaxplug.lipschitz.stack.UnsupportedLayerError` naming the module or
op (also when tracing fails, when the trace does not reproduce the model's output, when an op
mixes examples of the batch, or when an in-place op hides a mutation from the graph). Bounds are
for the eval-mode function: asking for them while the model is in training mode raises
``ValueError`` (:func:`relaxplug.certifiers.certify` switches to eval mode and back).
"""

from __future__ import annotations

import inspect
import math
import operator
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.node import map_arg

from relaxplug.lipschitz import spectral
from relaxplug.models.layers import InvertibleDownsample, MinMax, Normalize
from relaxplug.lipschitz.stack import LIPSCHITZ_MODES, UnsupportedLayerError, _alive, _fingerprint, head_distances
from relaxplug.lipschitz.spectral import FLOAT_ALLOWANCE

__all__ = ["GraphLipschitzEstimator", "ACTIVATION_LIPSCHITZ", "trace_model"]

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
    nn.Softplus: "softplus", nn.Softsign: "softsign", nn.CELU: "celu", nn.Tanhshrink: "tanhshrink",
    nn.Softshrink: "softshrink", nn.LogSigmoid: "logsigmoid", nn.SiLU: "silu", nn.Mish: "mish",
    nn.SELU: "selu", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
}

_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
    F.hardtanh: "hardtanh", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", F.softplus: "softplus", F.softsign: "softsign", F.celu: "celu",
    F.tanhshrink: "tanhshrink", F.softshrink: "softshrink", F.logsigmoid: "logsigmoid",
    F.silu: "silu", F.mish: "mish", F.selu: "selu", F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid", torch.abs: "abs", torch.clamp: "clamp", torch.clip: "clamp",
}

_ACTIVATION_METHODS = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
    "tanh_": "tanh", "abs": "abs", "abs_": "abs", "clamp": "clamp", "clamp_": "clamp", "clip": "clamp",
    "clip_": "clamp", "clamp_min": "clamp", "clamp_min_": "clamp", "clamp_max": "clamp", "clamp_max_": "clamp",
}

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
_IDENTITY_METHODS = {"contiguous", "clone", "detach", "float", "double", "to", "type_as"}
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
    """``torch.fx`` tracer that keeps relaxplug's bounded layers as leaves."""

    _LEAVES = (MinMax, InvertibleDownsample, Normalize)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        for cls in self._LEAVES:
            if isinstance(m, cls) and type(m).forward is cls.forward:
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
            "networks needs a forward pass without data-dependent Python control flow"
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
class _Scale:
    """``x -> s * x + t`` with constant ``s`` (broadcastable to the per-sample shape), ``|s|`` stored."""

    input: fx.Node
    scale: Tensor


@dataclass
class _Gain:
    """``L = gain * L[input]``; ``chain`` says how a pending input scaling passes through:
    ``"elementwise"`` (coordinatewise, gain multiplies), ``"permute"`` (coordinates rearranged
    by ``replay``), ``"channel"`` (a per-channel linear map of norm ``gain``), or ``None``."""

    input: fx.Node
    gain: float
    chain: str | None = None
    replay: Callable[[Tensor], Tensor] | None = None


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


class GraphLipschitzEstimator:
    """Lipschitz constants of an arbitrary (fx-traceable) model for inputs of one shape.

    Same interface as :class:`relaxplug.lipschitz.stack.LipschitzEstimator` where it makes sense:
    ``sound()`` returns the cached provable bound of the body (the input of the final linear
    head; the whole network when there is none), recomputed when any parameter or buffer
    changes; :meth:`pair_lipschitz` returns the GloRo matrix ``K_ji``. ``converged()`` replaces
    every linear layer's sound bound by converged power iteration (an estimate from below of
    each layer's norm: not a proof). ``power()`` (GloRo training) is not available: graph models
    can be certified, not trained, by relaxplug.

    The model must be in eval mode when bounds are computed (BatchNorm in training mode uses
    batch statistics and is not a fixed function); :func:`relaxplug.certifiers.certify` does that.

    Args:
        model: the network (logits ``(B, n)``), fx-traceable.
        input_shape: per-sample input shape, e.g. ``(3, 32, 32)``.
        fold: fold BatchNorm and other per-coordinate scalings into neighbouring linear layers
            where that is tighter (default); ``False`` bounds every layer on its own (for
            comparison).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], *, fold: bool = True):
        self._model = weakref.ref(model)  # weak: the estimator cache must not keep models alive
        self.fold = bool(fold)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.graph_module = trace_model(model)
        self._nodes = list(self.graph_module.graph.nodes)
        self._cache: dict[str, tuple[tuple, _Analysis]] = {}
        with _eval_mode(model):
            record = self._record()
            rules = self._rules(record)
        self.head_found = self._head(record, rules)[0] is not None
        self.dtype = record.const_dtype

    # -- public interface

    @property
    def model(self) -> nn.Module:
        return _alive(self._model)

    @property
    def head(self) -> nn.Linear | None:
        """The head module when the output is an ``nn.Linear`` call (``None`` otherwise)."""
        node = self._output_node()
        if node.op == "call_module":
            module = self.graph_module.get_submodule(node.target)
            if isinstance(module, nn.Linear):
                return module
        return None

    def sound(self) -> float:
        """Provable upper bound on the body's L2 Lipschitz constant (cached by weights)."""
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

    def node_bounds(self, mode: str = "sound") -> dict[str, float]:
        """``{graph node name: bound}`` for every node the analysis bounded (for reports)."""
        return dict(self._analysis(mode).node_bounds)

    def power(self, n_iter: int = 2) -> Tensor:
        raise UnsupportedLayerError(
            f"GloRo training (power iteration) supports the layer stacks of relaxplug.lipschitz.stack only; "
            f"{type(self.model).__name__} can be certified (certifier='gloro') but not trained by relaxplug"
        )

    # -- analysis

    def _analysis(self, mode: str) -> _Analysis:
        if mode not in LIPSCHITZ_MODES:
            raise ValueError(f"mode must be one of {LIPSCHITZ_MODES}, got {mode!r}")
        training = [name or type(self.model).__name__ for name, m in self.model.named_modules() if m.training]
        if training:
            raise ValueError(
                f"the model is in training mode (e.g. {training[0]!r}): Lipschitz bounds are for the eval-mode "
                "function (BatchNorm with running statistics, no dropout); call model.eval() first "
                "(relaxplug.certifiers.certify does)"
            )
        key = _fingerprint(self.model)
        cached = self._cache.get(mode)
        if cached is None or cached[0] != key:
            self._cache[mode] = (key, self._compute(mode))
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
        model = self.model
        param = next(model.parameters(), None)
        if param is None:
            param = next(model.buffers(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        gen = torch.Generator().manual_seed(0)
        batch = 2
        x = torch.randn((batch, *self.input_shape), generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
        recorder = _Recorder(self.graph_module)
        with torch.no_grad():
            try:
                traced = recorder.run(x)
            except UnsupportedLayerError:
                raise
            except Exception as exc:
                raise UnsupportedLayerError(
                    f"the traced graph of {type(model).__name__} failed on an input of shape {tuple(x.shape)} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            reference = model(x)
        if not isinstance(traced, Tensor) or not isinstance(reference, Tensor) or traced.shape != reference.shape:
            raise UnsupportedLayerError(f"{type(model).__name__}: the traced graph does not return the model's logits")
        scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
        if not torch.allclose(traced, reference, rtol=1e-4, atol=1e-4 * max(scale, 1e-30)):
            raise UnsupportedLayerError(
                f"the torch.fx trace of {type(model).__name__} does not reproduce its output (Python control "
                "flow or randomness in forward?); cannot bound it"
            )
        # every input-dependent tensor must keep the batch as its first dimension, at any batch size
        # (so that per-example shapes, and the constants computed from them, do not depend on it)
        other = _Recorder(self.graph_module)
        with torch.no_grad():
            bigger = torch.randn((batch + 1, *self.input_shape), generator=gen, dtype=torch.float64)
            other.run(bigger.to(device=device, dtype=dtype))
        for n, shape in recorder.shape.items():
            flat = [shape] if isinstance(shape, tuple) else (shape or [])
            flat_other = [other.shape.get(n)] if isinstance(shape, tuple) else (other.shape.get(n) or [])
            for s, t in zip(flat, flat_other) if len(flat) == len(flat_other) else [(flat, None)]:
                if isinstance(s, tuple) and (len(s) == 0 or s[0] != batch or t != (batch + 1, *s[1:])):
                    raise UnsupportedLayerError(
                        f"{_describe_node(self.graph_module, n)} at node {n.name!r} produces shape {s} from a batch of "
                        f"{batch} (and {t} from {batch + 1}): it mixes or drops the batch dimension, but the analysis "
                        "bounds each example separately"
                    )
        return _Record(recorder, device, batch, reference.dtype)

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

    def _compute(self, mode: str) -> _Analysis:
        with _eval_mode(self.model):
            rec = self._record()
            rules = self._rules(rec)
        head, out = self._head(rec, rules)
        chains = _chains(self._nodes, rec, rules) if self.fold else {}
        # which nodes' bounds are needed (the DP skips e.g. a conv's own bound when only its folded
        # form with the following BatchNorm is used)
        needed = {out}
        for n in reversed(self._nodes):
            if n in needed and n in rules:
                needed.update(_requires(rules[n], rules, chains, self.fold))
        bounds: dict[fx.Node, float] = {}
        memo: dict[tuple, float] = {}
        for n in self._nodes:
            if n not in needed:
                continue
            if n.op == "placeholder" and rec.dep[n]:
                bounds[n] = 1.0
            elif n in rules:
                bounds[n] = _bound(rules[n], rules, chains, bounds, memo, mode, self.fold)
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
        names = {n.name: v for n, v in bounds.items()}
        return _Analysis(body=float(body), total=float(total), pair=None if pair is None else pair.cpu(), node_bounds=names)


@dataclass
class _Record:
    recorder: _Recorder
    device: torch.device
    batch: int
    const_dtype: torch.dtype

    @property
    def dep(self) -> dict[fx.Node, bool]:
        return self.recorder.dep

    @property
    def shape(self) -> dict[fx.Node, Any]:
        return self.recorder.shape

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

    def gain(self, value: float, chain: str | None = None) -> _Gain:
        source = self.single_input()
        replay = self.replay_fn() if chain == "permute" else None
        return _Gain(source, float(value), chain, replay)

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
        if isinstance(m, nn.Linear):
            return self.linear(self.single_input(), m.weight)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            source = self.single_input()
            return self.conv(source, m.weight, m.stride, m.padding, m.dilation, m.groups, m.padding_mode,
                             getattr(m, "_reversed_padding_repeated_twice", None), isinstance(m, nn.Conv1d))
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            source = self.single_input()
            if m.training or not m.track_running_stats or m.running_var is None:
                raise self.unsupported("BatchNorm without running statistics (or in training mode) uses batch statistics")
            return self.batch_norm(source, m.running_var, m.weight, m.eps)
        if isinstance(m, Normalize):
            source = self.single_input()
            ndim = len(self.per_sample(source))
            return _Scale(source, (1.0 / m.std.detach().to(torch.float64)).reshape(-1, *([1] * (ndim - 1))))
        if isinstance(m, (MinMax,)):
            return self.gain(1.0)
        if isinstance(m, (InvertibleDownsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.Flatten, nn.Unflatten)):
            return self.gain(1.0, "permute")
        if isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd, nn.AlphaDropout)):
            return self.gain(1.0, "elementwise")  # dropout is the identity in eval mode (checked)
        for cls, name in _ACTIVATION_MODULES.items():
            if type(m) is cls or (isinstance(m, cls) and type(m).forward is cls.forward):
                return self.gain(ACTIVATION_LIPSCHITZ[name], "elementwise")
        if isinstance(m, nn.LeakyReLU):
            return self.gain(max(1.0, abs(float(m.negative_slope))), "elementwise")
        if isinstance(m, nn.ELU):
            return self.gain(max(1.0, abs(float(m.alpha))), "elementwise")
        if isinstance(m, nn.GELU):
            return self.gain(ACTIVATION_LIPSCHITZ["gelu_tanh" if m.approximate == "tanh" else "gelu"], "elementwise")
        if isinstance(m, nn.PReLU):
            return self.gain(max(1.0, float(m.weight.detach().abs().max()) * _UP), "elementwise")
        if isinstance(m, nn.RReLU):
            return self.gain(max(1.0, abs(m.lower), abs(m.upper)), "elementwise")
        if isinstance(m, _POOL_MODULES):
            return self.pool()
        if isinstance(m, _MAXPOOL_MODULES):
            if getattr(m, "return_indices", False):
                raise self.unsupported("return_indices=True")
            source = self.single_input()
            if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
                return _Gain(source, self.adaptive_max_gain(source))
            return _Gain(source, self.max_pool_gain(source, m.kernel_size, m.stride, m.padding, m.dilation))
        raise self.unsupported()

    def method(self, name: str) -> _Rule:
        if name in _ACTIVATION_METHODS:
            return self.gain(ACTIVATION_LIPSCHITZ[_ACTIVATION_METHODS[name]], "elementwise")
        if name in _PERMUTE_METHODS:
            return self.gain(1.0, "permute")
        if name in _IDENTITY_METHODS:
            return self.gain(1.0, "elementwise")
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
            return self.gain(1.0, "elementwise")
        if target in _DROPOUT_FUNCTIONS:
            if _bind(target, self.args, self.kwargs, ())["training"]:
                raise self.unsupported("dropout with training=True is random")
            return self.gain(1.0, "elementwise")
        if target is F.linear:
            source = self.single_input()
            bound = _bind(target, self.args, self.kwargs, ("input", "weight", "bias"))
            return self.linear(source, bound["weight"])
        if target in (F.conv1d, F.conv2d):
            source = self.single_input()
            b = _bind(target, self.args, self.kwargs, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                      {"stride": 1, "padding": 0, "dilation": 1, "groups": 1})
            return self.conv(source, b["weight"], b["stride"], b["padding"], b["dilation"], b["groups"], "zeros", None,
                             target is F.conv1d)
        if target is F.batch_norm:
            source = self.single_input()
            b = _bind(target, self.args, self.kwargs, ())
            if b["training"] or b["running_var"] is None:
                raise self.unsupported("batch_norm with training=True uses batch statistics")
            return self.batch_norm(source, b["running_var"], b["weight"], b["eps"])
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
            return _Gain(source, self.max_pool_gain(source, b["kernel_size"], stride, b["padding"], b["dilation"]))
        if target in (F.adaptive_max_pool1d, F.adaptive_max_pool2d):
            b = _bind(target, self.args, self.kwargs, ("input", "output_size", "return_indices"))
            if b.get("return_indices"):
                raise self.unsupported("return_indices=True")
            source = self.single_input()
            return _Gain(source, self.adaptive_max_gain(source))
        if target is F.pad:
            b = _bind(target, self.args, self.kwargs, ())
            if b["mode"] == "constant":
                source = self.single_input()
                spatial = len(b["pad"]) <= 2 * (len(self.per_sample(source)) - 1)
                return _Gain(source, 1.0, "channel" if spatial else None)  # zero padding embeds isometrically
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

    def linear(self, source: fx.Node, weight: Any) -> _Linear:
        if not isinstance(weight, Tensor):
            raise self.unsupported("the weight depends on the input")
        return _Linear(source, "linear", weight, self.per_sample(source))

    def conv(self, source: fx.Node, weight: Any, stride: Any, padding: Any, dilation: Any, groups: int,
             padding_mode: str, reversed_padding: Any, conv1d: bool) -> _Linear:
        if not isinstance(weight, Tensor):
            raise self.unsupported("the weight depends on the input")
        shape = self.per_sample(source)
        dims = 1 if conv1d else 2
        if len(shape) != dims + 1:
            raise self.unsupported(f"input of per-example shape {shape}")
        pre_gain = 1.0
        hw = tuple(shape[1:])
        if padding_mode != "zeros":
            # the module pads with reflect/replicate/circular copies, then convolves unpadded
            pad = tuple(reversed_padding)
            probe_shape = (1, *shape)
            pre_gain = _copy_bound(lambda t: F.pad(t, pad, mode=padding_mode), probe_shape, self.rec.device, self.what)
            hw = tuple(h + pad[2 * (dims - 1 - i)] + pad[2 * (dims - 1 - i) + 1] for i, h in enumerate(hw))
            padding = 0
        if conv1d:
            stride, dilation = (1, _tuple(stride, 1)[0]), (1, _tuple(dilation, 1)[0])
            padding = padding if isinstance(padding, str) else (0, _tuple(padding, 1)[0])
            hw = (1, hw[0])
        conv = {"stride": stride, "padding": padding, "dilation": dilation, "groups": int(groups)}
        return _Linear(source, "conv", weight, shape, conv, hw, pre_gain, conv1d)

    def batch_norm(self, source: fx.Node, running_var: Any, weight: Any, eps: float) -> _Scale:
        if not isinstance(running_var, Tensor) or (weight is not None and not isinstance(weight, Tensor)):
            raise self.unsupported("BatchNorm statistics depend on the input")
        var = running_var.detach().to(torch.float64)
        scale = 1.0 / torch.sqrt(var + float(eps))
        if weight is not None:
            scale = scale * weight.detach().to(torch.float64)
        ndim = len(self.per_sample(source))
        return _Scale(source, scale.abs().reshape(-1, *([1] * (ndim - 1))))

    def pool(self) -> _Gain:
        source = self.single_input()
        shape = self.shape_of(source)
        bound = _nonneg_linear_bound(self.replay_fn(), shape, self.rec.device)
        return _Gain(source, bound, "channel")

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
        return _Gain(source, bound, None if 1 in dims else "channel")

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
        return _Gain(source, bound)

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
        return _Gain(source, 1.0)  # every part is a subset of the coordinates


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
                        out.append((b, vector.reshape(-1, *([1] * (len(shape_out) - 1))), g * rule.gain))
        if out:
            chains[n] = out[:4]
    return chains


def _requires(rule: _Rule, rules: dict[fx.Node, _Rule], chains: dict, fold: bool) -> list[fx.Node]:
    if isinstance(rule, _Linear):
        return [rule.input] + [b for b, _, _ in chains.get(rule.input, [])]
    if isinstance(rule, _Scale):
        inner = rules.get(rule.input)
        if fold and isinstance(inner, _Linear) and _out_scale(inner, rule) is not None:
            return [inner.input] + [b for b, _, _ in chains.get(inner.input, [])]
        return [rule.input]
    if isinstance(rule, _Gain):
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
    if isinstance(rule, _Sum):
        return sum(bounds[node] * c for node, c in rule.terms)
    if isinstance(rule, _Cat):
        return math.sqrt(sum(bounds[node] ** 2 for node in rule.inputs))
    raise AssertionError(rule)

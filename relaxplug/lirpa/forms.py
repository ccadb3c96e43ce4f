"""Model lowering: exact rewrites of a model into forms auto_LiRPA bounds well, and the checks that
the rewritten model computes what the original does.

- :func:`lower_for_lirpa`: a private deep copy (certification) with every submodule that has a
  ``lirpa_form(input_shape)`` replaced by it and :class:`~relaxplug.models.layers.Normalize`
  replaced by a diagonal affine map (:func:`fallback_form`).
- :func:`shared_lirpa_form`: the same rewrite **sharing** every other module with the model
  (training: gradients reach the model's parameters).
- :func:`fold_leading_affine`: a leading per-channel affine layer (``Normalize``, ``BatchNorm`` in
  eval mode) folded into the linear or convolution layer after it, so the perturbed input is read
  by a linear layer first and an L2 ball keeps its shape (instead of its enclosing box).

Every form is checked on an example input (:func:`check_reproduces`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from relaxplug.models.layers import Normalize

__all__ = [
    "AffineForm",
    "FoldedConv",
    "LoweredModel",
    "PoolAsConv",
    "check_reproduces",
    "fallback_form",
    "fold_leading_affine",
    "forward_tolerance",
    "lower",
    "lower_for_lirpa",
    "materialize_parametrizations",
    "shared_lirpa_form",
]


class AffineForm(nn.Module):
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

    @property
    def scale(self) -> Tensor:
        return self.weight.flatten(1).diagonal() if not self.spatial else self.weight[:, :, 0, 0].diagonal()

    def forward(self, x: Tensor) -> Tensor:
        if self.spatial:
            return F.conv2d(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class PoolAsConv(nn.Module):
    """``AvgPool2d(k, stride)`` without padding as the convolution it is: weight ``1/k^2`` on each
    channel's own ``k x k`` window (a linear layer, so auto_LiRPA reads an L2 input through it)."""

    def __init__(self, channels: int, kernel: tuple[int, int], stride: tuple[int, int], dtype: torch.dtype):
        super().__init__()
        weight = torch.zeros(channels, channels, *kernel, dtype=dtype)
        weight[range(channels), range(channels)] = 1.0 / (kernel[0] * kernel[1])
        self.stride = stride
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.zeros(channels, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride)


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def fallback_form(module: nn.Module, input_shape: Sequence[int]) -> nn.Module | None:
    """Exact rewrites (in eval mode) for layers without a ``lirpa_form``: ``Normalize`` as a diagonal
    affine map (auto_LiRPA 0.3's CROWN fails on its broadcast ``sub``/``div``), dropout as the
    identity."""
    if isinstance(module, Normalize) and len(input_shape) in (1, 3):
        return AffineForm(input_shape, 1.0 / module.std, -module.mean / module.std)
    if type(module) in _DROPOUTS:  # the identity in eval mode (auto_LiRPA cannot convert it in eval mode)
        return nn.Identity()
    if type(module) is nn.AvgPool2d and len(input_shape) == 3 and _pair(module.padding) == (0, 0) \
            and not module.ceil_mode and module.divisor_override is None:
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        return PoolAsConv(int(input_shape[0]), _pair(module.kernel_size), stride, torch.get_default_dtype())
    return None


_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _rewritable(module: nn.Module) -> bool:
    return callable(getattr(module, "lirpa_form", None)) or isinstance(module, Normalize) \
        or type(module) in _DROPOUTS or type(module) is nn.AvgPool2d


def _form(module: nn.Module, shape: tuple[int, ...], like: Tensor) -> nn.Module | None:
    form = module.lirpa_form(shape) if callable(getattr(module, "lirpa_form", None)) else fallback_form(module, shape)
    return None if form is None else form.to(device=like.device, dtype=like.dtype).eval()


@dataclass
class _Trace:
    """What one forward pass of the model on the example shows: the per-point input shape of every
    rewritable module, the widest activation per point, the input width of the last leaf module
    and the output."""

    shapes: dict[str, tuple[int, ...]]
    width: int
    head_width: int
    output: Tensor


def _trace(model: nn.Module, example: Tensor) -> _Trace:
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
        if isinstance(output, Tensor) and output.ndim:
            widths.append(output[0].numel())
        if inputs and isinstance(inputs[0], Tensor) and inputs[0].ndim:
            last_input[0] = inputs[0][0].numel()

    was_training = model.training
    model.eval()
    try:
        for name, module in model.named_modules():
            if _rewritable(module):
                handles.append(module.register_forward_pre_hook(record_shape(name)))
            if not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(record_width))
        with torch.no_grad():
            output = model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not isinstance(output, Tensor):
        raise TypeError(f"bound propagation needs a model returning one logits tensor (B, n); it returned "
                        f"{type(output).__name__}: wrap it so forward returns the logits")
    if output.ndim != 2 or output.shape[0] != example.shape[0]:
        raise TypeError(f"bound propagation needs logits of shape (B, n); the model returned {tuple(output.shape)} "
                        f"for a batch of {example.shape[0]}")
    input_width = int(example[0].numel())
    return _Trace(shapes, max(max(widths, default=input_width), input_width), max(last_input[0], 1), output)


def forward_tolerance(reference: Tensor) -> float:
    """Agreement required between two exact rewrites of one computation: ``1e-4 (1 + max |f|)``
    in float32 (``1e-9`` in float64); the rewrites reorder sums, nothing else."""
    scale = float(reference.detach().abs().max()) if reference.numel() else 0.0
    return (1e-9 if reference.dtype == torch.float64 else 1e-4) * (1.0 + scale)


def check_reproduces(form: nn.Module, reference: Tensor, example: Tensor, what: str) -> None:
    """Raise ``RuntimeError`` naming ``what`` unless ``form(example)`` equals ``reference`` up to
    :func:`forward_tolerance`."""
    with torch.no_grad():
        out = form(example)
    if not isinstance(out, Tensor) or out.shape != reference.shape or \
            not torch.allclose(out, reference, rtol=0.0, atol=forward_tolerance(reference)):
        raise RuntimeError(f"the auto_LiRPA form of the model ({what}) does not reproduce its output")


@dataclass
class LoweredModel:
    """A lowered private copy with the figures chunking needs (see :func:`lower_for_lirpa`)."""

    module: nn.Module
    width: int  # widest activation per point
    head_width: int  # input width of the last leaf module


def materialize_parametrizations(model: nn.Module) -> nn.Module:
    """``model`` (modified in place) with every ``torch.nn.utils.parametrize`` parametrization
    (weight norm, spectral norm, orthogonal, user ones) replaced by the tensor it computes now.
    auto_LiRPA would otherwise trace the weight's computation into the graph, and 0.3 bounds a
    layer with a computed weight wrongly; the cache fingerprint still covers the originals."""
    for module in [m for m in model.modules() if parametrize.is_parametrized(m)]:
        # torch's remove_parametrizations edits the generated class, which a deep copy shares
        # with the original model: give the copy its plain class back instead
        values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
        module.__class__ = type(module).__bases__[0]
        del module._modules["parametrizations"]
        for name, value in values.items():
            module.register_parameter(name, nn.Parameter(value, requires_grad=False))
    return model


def lower(model: nn.Module, example: Tensor) -> LoweredModel:
    """:func:`lower_for_lirpa` with its chunking figures."""
    trace = _trace(model, example)
    lowered = materialize_parametrizations(copy.deepcopy(model).eval())
    done: list[str] = []
    for name in sorted(trace.shapes, key=lambda name: name.count(".") if name else -1):  # outermost first
        if any(d == "" or name == d or name.startswith(d + ".") for d in done):
            continue  # inside a module that was already rewritten
        form = _form(lowered.get_submodule(name), trace.shapes[name], example)
        if form is None:
            continue
        if name == "":
            lowered = form
        else:
            parent, _, child = name.rpartition(".")
            setattr(lowered.get_submodule(parent), child, form)
        done.append(name)
    check_reproduces(lowered, trace.output, example, "lirpa_form rewrites")
    return LoweredModel(lowered, trace.width, trace.head_width)


def lower_for_lirpa(model: nn.Module, example: Tensor) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every submodule that has ``lirpa_form`` replaced
    by ``lirpa_form(input_shape)`` (its exact auto_LiRPA-friendly rewrite; ``Normalize`` becomes
    a diagonal affine map).

    Input shapes come from a forward-hook pass on ``example`` (``(B, ...)``). The copy is checked
    against ``model`` on ``example``; a mismatch raises ``RuntimeError``.
    """
    return lower(model, example).module


def shared_lirpa_form(model: nn.Module, example: Tensor) -> nn.Module:
    """``model`` with every submodule that has ``lirpa_form`` (and ``Normalize``) replaced by its
    exact auto_LiRPA-friendly rewrite, **sharing** all other modules (and so all parameters)
    with ``model``: containers are shallow copies holding the rewritten children.

    Raises ``RuntimeError`` if the form's output differs from ``model``'s on ``example`` or if
    its parameters are not exactly ``model``'s.
    """
    trace = _trace(model, example)

    def rewrite(module: nn.Module, name: str) -> nn.Module:
        if name in trace.shapes:
            form = _form(module, trace.shapes[name], example)
            if form is not None:
                return form
        if not module._modules:
            return module
        clone = copy.copy(module)  # shares _parameters and _buffers with the original
        clone._modules = {child: (rewrite(sub, f"{name}.{child}" if name else child) if sub is not None else None)
                          for child, sub in module._modules.items()}
        return clone

    form = rewrite(model, "")
    if {id(p) for p in form.parameters()} != {id(p) for p in model.parameters()}:
        raise RuntimeError("the lowered form does not share the model's parameters (a lirpa_form holds parameters?)")
    was_training = model.training
    model.eval()
    try:
        check_reproduces(form, trace.output, example, "lirpa_form rewrites")
    finally:
        model.train(was_training)
    return form


# ----------------------------------------------------------------------------- leading affine fold


class FoldedConv(nn.Module):
    """``conv(x * s + t) = conv_{W s}(x) + B`` with ``B = conv_W(t 1) + b``: a convolution whose input
    was scaled per channel by ``s`` and shifted by ``t``, as one convolution with bias ``B`` (exact
    where ``B`` is constant per output channel: no padding, or ``t = 0``; near padded borders it is
    not, and :func:`fold_leading_affine` does not fold)."""

    def __init__(self, conv: nn.Conv2d, scale: Tensor, bias: Tensor):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.register_buffer("weight", (conv.weight.detach() * scale.reshape(1, -1, 1, 1)).clone())
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _folded_conv(conv: nn.Conv2d, scale: Tensor, shift: Tensor, input_shape: Sequence[int]) -> FoldedConv | None:
    weight = conv.weight.detach()
    constant = shift.detach().reshape(1, -1, 1, 1).expand(1, *input_shape).to(weight)
    bias = conv.bias.detach() if conv.bias is not None else None
    offset = F.conv2d(constant, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    per_channel = offset[:, :, :1, :1]
    if not torch.equal(offset, per_channel.expand_as(offset)):
        return None  # the padding is not shifted: the offset varies near the borders
    return FoldedConv(conv, scale, per_channel.reshape(-1))


def _leaves(module: nn.Module) -> list[nn.Module] | None:
    """The modules a plain (nested) ``nn.Sequential`` runs, in order; ``None`` for anything else."""
    if type(module) is not nn.Sequential:
        return None
    out: list[nn.Module] = []
    for child in module:
        if type(child) is nn.Sequential:
            inner = _leaves(child)
            if inner is None:
                return None
            out.extend(inner)
        else:
            out.append(child)
    return out


def _affine(module: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(scale, shift)`` per channel of an exactly per-channel affine module in eval mode."""
    if isinstance(module, AffineForm) and type(module) is AffineForm:
        return module.scale, module.bias
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d) and not module.training and module.track_running_stats \
            and module.running_mean is not None and not module._forward_hooks and not module._forward_pre_hooks:
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.affine:
            scale = scale * module.weight.detach()
        shift = -module.running_mean * scale
        if module.affine:
            shift = shift + module.bias.detach()
        return scale.detach(), shift.detach()
    return None


def _plain(module: nn.Module) -> bool:
    return not (module._forward_hooks or module._forward_pre_hooks)


def fold_leading_affine(lowered: nn.Module, example: Tensor) -> nn.Module | None:
    """``lowered`` (a plain ``nn.Sequential`` after :func:`lower_for_lirpa`) with its leading
    per-channel affine layer folded into the ``Linear`` (after an optional ``Flatten``) or
    ``Conv2d`` that follows it; ``None`` when the model does not start so. Checked on ``example``."""
    leaves = _leaves(lowered)
    if not leaves or len(leaves) < 2:
        return None
    affine = _affine(leaves[0])
    if affine is None:
        return None
    scale, shift = affine
    shape = tuple(example.shape[1:])
    rest = leaves[1:]
    first = rest[0]
    if type(first) is nn.Conv2d and len(shape) == 3 and first.padding_mode == "zeros" and first.groups == 1 \
            and _plain(first):
        conv = _folded_conv(first, scale, shift, shape)
        if conv is None:
            return None
        folded: list[nn.Module] = [conv]
        tail = rest[1:]
    else:
        flatten = None
        if type(first) is nn.Flatten and first.start_dim == 1 and first.end_dim == -1 and len(rest) > 1:
            flatten, first = first, rest[1]
        if type(first) is not nn.Linear or not _plain(first):
            return None
        per_feature = torch.ones(shape, dtype=example.dtype, device=example.device)
        view = (-1,) + (1,) * (len(shape) - 1)
        s = (per_feature * scale.reshape(view)).flatten()
        t = (per_feature * shift.reshape(view)).flatten()
        if s.numel() != first.in_features:
            return None
        linear = nn.Linear(first.in_features, first.out_features).to(example)
        with torch.no_grad():
            linear.weight.copy_(first.weight * s[None, :])
            bias = first.weight.detach() @ t
            linear.bias.copy_(bias + (first.bias.detach() if first.bias is not None else 0.0))
        folded = ([flatten] if flatten is not None else []) + [linear]
        tail = rest[2:] if flatten is not None else rest[1:]
    model = nn.Sequential(*folded, *tail).to(example).eval()
    with torch.no_grad():
        reference = lowered(example)
    check_reproduces(model, reference, example, "leading affine layer folded into the first linear layer")
    return model

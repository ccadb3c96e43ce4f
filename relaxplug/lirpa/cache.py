"""The cached auto_LiRPA form of a model, valid only for the exact computation it was built from.

Converting a model to a ``BoundedModule`` costs seconds, so certifiers keep the conversion per
(model, input shape, device, dtype, conv mode, L2 form, options). A cached entry is reused only
while the model's :class:`Fingerprint` is unchanged: its module tree (names, classes, object
identities, ``forward`` functions), every module's Python attributes (values of plain data,
identities of other objects), its hooks, its training flags, and the **values** of every
parameter, buffer and tensor attribute (compared with ``torch.equal`` against copies: a write
through ``.data`` does not bump ``tensor._version``, a value comparison sees it). What the check
cannot see (global state read in ``forward``, Python values fixed while tracing) is caught where it
shows: certifiers compare the output of the ``BoundedModule`` itself with the model's own logits on
every batch (:meth:`Bounded.agrees`).

Building also refuses models that auto_LiRPA would bound wrongly: data-dependent Python control
flow (a tensor converted to a Python bool or number while tracing: auto_LiRPA traces one branch)
and forward passes that mix the rows of a batch (``x - x.mean(0)``: a point's bound would depend
on the other points).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from relaxplug.lirpa.api import LirpaError, convert
from relaxplug.lirpa.forms import fold_leading_affine, forward_tolerance, lower
from relaxplug.lirpa.guard import IdentityPrefix, computed_weights, l2_input_is_safe
from relaxplug.lirpa.tolerance import error_model

logger = logging.getLogger(__name__)

__all__ = ["Bounded", "Fingerprint", "bounded_module", "build", "clear_cache", "CACHE_PER_MODEL"]

#: torch's own bookkeeping in a module's ``__dict__`` (covered separately or irrelevant)
_TORCH_KEYS = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
                         "_is_full_backward_hook", "_compiled_call_impl"})


class _Same:
    """Compares by identity (an object the fingerprint cannot read into)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:  # pragma: no cover - not hashed
        return id(self.obj)


_PLAIN = (int, float, bool, str, bytes, complex, type(None), torch.dtype, torch.device, torch.Size)


class Fingerprint:
    """Everything a model's forward pass depends on that relaxplug can read (module docstring)."""

    def __init__(self, model: nn.Module):
        self.tensors: list[Tensor] = []
        self.tokens: list[Any] = []
        for name, module in model.named_modules(remove_duplicate=False):
            self.tokens.append((name, _Same(module), _Same(type(module)), _Same(getattr(type(module), "forward", None)),
                                module.training))
            for key in sorted(vars(module)):
                if key in _TORCH_KEYS:
                    continue
                self.tokens.append((name, key, self._token(vars(module)[key], 0)))
            for kind, store in (("p", module._parameters), ("b", module._buffers)):
                for key, value in store.items():
                    self.tokens.append((name, kind, key, self._token(value, 0)))

    def _token(self, value: Any, depth: int) -> Any:
        if isinstance(value, Tensor):
            self.tensors.append(value.detach().clone())
            return ("tensor", len(self.tensors) - 1, value.dtype, value.device, tuple(value.shape))
        if isinstance(value, _PLAIN):
            return value if not (isinstance(value, float) and math.isnan(value)) else "nan"
        if isinstance(value, nn.Module):
            return ("module", _Same(value))
        if depth < 3 and isinstance(value, (tuple, list)) and len(value) <= 256:
            return (type(value).__name__, tuple(self._token(v, depth + 1) for v in value))
        if depth < 3 and isinstance(value, dict) and len(value) <= 256:
            return ("dict", tuple((_Same(k) if not isinstance(k, _PLAIN) else k, self._token(v, depth + 1))
                                  for k, v in value.items()))
        return ("object", _Same(value))

    def matches(self, model: nn.Module) -> bool:
        fresh = Fingerprint(model)
        if fresh.tokens != self.tokens or len(fresh.tensors) != len(self.tensors):
            return False
        return all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(fresh.tensors, self.tensors))


@dataclass
class Bounded:
    """One conversion: the ``BoundedModule``, the lowered copy it was built from, the model's
    fingerprint then, chunking figures, and whether it reads an L2 input safely."""

    bounded: Any  # auto_LiRPA.BoundedModule
    lowered: nn.Module
    fingerprint: Fingerprint
    width: int
    head_width: int
    l2_safe: bool
    example: Tensor | None = None  # one input row (the conversion's example)
    bound_opts: dict[str, Any] = field(default_factory=dict)
    _wide: Any = None

    def matches(self, model: nn.Module) -> bool:
        return self.fingerprint.matches(model)

    def wide(self) -> Any:
        """The ``BoundedModule`` of a float64 copy of the converted form (built once), in which
        certifiers compute bounds: its rounding is ``~1e-16`` relative, so the bounds are those of
        the exact network up to a covered allowance (:mod:`relaxplug.lirpa.tolerance`). A float64
        model is its own wide form. ``LirpaError`` when the copy computes something else than the
        float form (a dtype fixed inside ``forward``)."""
        if self._wide is not None:
            return self._wide
        if self.example is None or self.example.dtype == torch.float64:
            self._wide = self.bounded
            return self._wide
        form = copy.deepcopy(self.lowered).double().eval()
        example = self.example.double()
        try:
            bounded = _convert_checked(form, example, self.bound_opts)
            probe = _probe(self.example)
            with torch.no_grad():
                narrow, wide = self.lowered(probe), bounded(probe.double())
        except LirpaError:
            raise
        except Exception as error:  # a float64 copy auto_LiRPA cannot run: the bounds would not be float64
            raise LirpaError(f"the float64 copy of the model, in which bounds are computed, fails "
                             f"({type(error).__name__}: {error}); a dtype fixed inside forward?") from error
        slack = error_model(bounded, probe.double(), 0.0, forward_dtype=self.example.dtype).logit_error
        if not isinstance(wide, Tensor) or wide.shape != narrow.shape or \
                not bool(((wide - narrow.double()).abs() <= slack + forward_tolerance(narrow)).all()):
            raise LirpaError("the float64 copy of the model, in which bounds are computed, does not reproduce the "
                             "model beyond float32 rounding (a dtype or a rounding fixed inside forward?)")
        self._wide = bounded
        return self._wide

    def agrees(self, x: Tensor, logits: Tensor) -> bool:
        """Whether the ``BoundedModule`` itself (the graph that is bounded, with every Python value
        read while tracing fixed in it) and its float64 copy (:meth:`wide`, where bounds are
        computed) reproduce ``logits`` (the model's output) on ``x``; the copy within the float32
        forward pass's rounding bound."""
        with torch.no_grad():
            out = self.bounded(x)
        if not (isinstance(out, Tensor) and out.shape == logits.shape and
                bool(torch.allclose(out, logits.detach().to(out.dtype), rtol=0.0, atol=forward_tolerance(logits)))):
            return False
        wide = self.wide()
        if wide is self.bounded:
            return True
        x_wide = x.detach().double()
        with torch.no_grad():
            out = wide(x_wide)
        slack = error_model(wide, x_wide, 0.0, forward_dtype=x.dtype).logit_error
        return isinstance(out, Tensor) and out.shape == logits.shape and \
            bool(((out - logits.detach().double()).abs() <= slack + forward_tolerance(logits)).all())


def _check_inputs(model: nn.Module, x: Tensor) -> None:
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"bound propagation needs a non-empty batch (B, ...), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"bound propagation supports float32 and float64 inputs, got {x.dtype}")
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and tensor.dtype != x.dtype:
            raise TypeError(f"the model's {name} is {tensor.dtype} but the input is {x.dtype}: bound propagation "
                            "needs one float type (float32 or float64) for model and input; convert one of them")


def _probe(example: Tensor) -> Tensor:
    """Two distinct points: ``example`` and a shifted copy."""
    return torch.cat([example, example + 0.5 * (example.detach().abs().amax() + 1.0)])


def _check_rows_independent(lowered: nn.Module, example: Tensor) -> None:
    """Row 0's output must not change when row 1 does (same batch size, so the same kernels and
    the same rounding)."""
    probe = _probe(example)
    other = probe.clone()
    other[1:] = -3.0 * probe[1:] + 1.0
    with torch.no_grad():
        first, second = lowered(probe)[:1], lowered(other)[:1]
    if not torch.allclose(first, second, rtol=0.0, atol=forward_tolerance(first)):
        raise LirpaError("the model mixes the rows of a batch (a point's output depends on the other points: "
                         "batch statistics, x - x.mean(0), ...); its certificates would depend on the batch")


def _batch_independent(bounded, lowered: nn.Module, example: Tensor) -> bool:
    """Whether the converted ``bounded`` reproduces ``lowered`` on a batch of two (``x.view(x.size(0),
    -1)`` can be converted with the example's batch size 1 fixed into the reshape)."""
    probe = _probe(example)
    try:
        with torch.no_grad():
            out = bounded(probe)
            reference = lowered(probe)
    except Exception:  # auto_LiRPA's forward fails on a frozen shape (RuntimeError, IndexError, ...)
        return False
    if not isinstance(out, Tensor) or out.shape != reference.shape:
        return False
    # two float evaluations of one function differ by at most 2 Gamma a (relaxplug.lirpa.tolerance)
    slack = 2.0 * error_model(bounded, probe, 0.0).logit_error.to(reference.dtype)
    return bool(((out - reference).abs() <= slack + forward_tolerance(reference)).all())


def _refuse_python_values(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        text = str(w.message)
        if "Converting a tensor to a Python" in text:
            raise LirpaError("the model's forward converts a tensor to a Python value (data-dependent control "
                             "flow such as `if (x > 0).all():`); auto_LiRPA would bound one traced branch only. "
                             f"Tracer: {text.splitlines()[0]}")


def _check_traceable(form: nn.Module, example: Tensor) -> None:
    """Trace ``form`` once (the way auto_LiRPA converts it) and refuse data-dependent Python
    control flow, which a trace records as one fixed branch."""
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        try:
            torch.jit.trace(form, (example,), check_trace=False)
        except Exception as error:  # a model the tracer cannot follow: auto_LiRPA's conversion reports it
            logger.debug("trace failed: %s", error)
    _refuse_python_values(caught)


def _convert_checked(form: nn.Module, example: Tensor, bound_opts: dict[str, Any]):
    """Convert, refusing data-dependent Python control flow seen by the tracer."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bounded = convert(form, example, bound_opts)
        bounded.eval()  # (BoundedModule.eval returns None in 0.3)
        if not _batch_independent(bounded, form, example):
            bounded = convert(form, example, bound_opts, dynamic_shapes=True)
            bounded.eval()
    _refuse_python_values(caught)
    computed = computed_weights(bounded)
    if computed:
        raise LirpaError(f"the model computes a layer's weight inside forward (auto_LiRPA nodes {computed[:5]}); "
                         "auto_LiRPA bounds such layers wrongly: compute the weight before the forward pass, "
                         "or use torch.nn.utils.parametrize (materialized for bounding)")
    if not _batch_independent(bounded, form, example):
        raise LirpaError("auto_LiRPA's form of the model does not reproduce it on a batch of two inputs "
                         "(a shape fixed at conversion time, e.g. int(x.shape[0]), or a layer auto_LiRPA "
                         "converts differently); it cannot be bounded")
    bounded.eval()
    return bounded


def build(model: nn.Module, x: Tensor, conv_mode: str = "patches", l2: bool = False,
          options: tuple[tuple[str, Any], ...] = ()) -> Bounded:
    """Convert ``model`` (lowered, see :mod:`relaxplug.lirpa.forms`) for inputs shaped like ``x``.
    ``l2``: make the input perturbation readable as an L2 ball (leading affine layer folded, or
    else an identity prefix)."""
    _check_inputs(model, x)
    example = x[:1].detach()
    fingerprint = Fingerprint(model)
    lowered = lower(model, example)
    form = lowered.module
    _check_traceable(form, example)
    _check_rows_independent(form, example)
    bound_opts = {"conv_mode": conv_mode, **dict(options)}
    bounded = _convert_checked(form, example, bound_opts)
    if l2:
        folded = fold_leading_affine(form, example)
        if folded is not None:
            bounded, form = _convert_checked(folded, example, bound_opts), folded
        if not l2_input_is_safe(bounded):
            form = IdentityPrefix(example.shape[1:], form, example).eval()
            bounded = _convert_checked(form, example, bound_opts)
        if not l2_input_is_safe(bounded):  # pragma: no cover - the prefix is a linear layer
            raise LirpaError("cannot make the L2 input perturbation sound for auto_LiRPA")
    return Bounded(bounded, form, fingerprint, lowered.width, lowered.head_width, l2_input_is_safe(bounded),
                   example, bound_opts)


#: model -> {(input shape, device, dtype, conv mode, L2 form, options): Bounded}; entries die with
#: their model
_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, Bounded]]" = weakref.WeakKeyDictionary()
CACHE_PER_MODEL = 4


def clear_cache() -> None:
    """Forget every cached ``BoundedModule``."""
    _CACHE.clear()


def bounded_module(model: nn.Module, x: Tensor, conv_mode: str = "patches", norm: float = math.inf,
                   options: tuple[tuple[str, Any], ...] = ()) -> Bounded:
    """The cached conversion of ``model`` for inputs shaped like ``x`` (:func:`build`), rebuilt
    when the model's :class:`Fingerprint` changed. ``options``: extra top-level ``bound_opts``."""
    _check_inputs(model, x)
    l2 = float(norm) != math.inf
    key = (tuple(x.shape[1:]), str(x.device), x.dtype, conv_mode, l2, options)
    entries = _CACHE.setdefault(model, {})
    entry = entries.get(key)
    if entry is None or not entry.matches(model):
        entries.pop(key, None)
        entry = build(model, x, conv_mode, l2, options)
        while len(entries) >= CACHE_PER_MODEL:
            entries.pop(next(iter(entries)))
        entries[key] = entry
    return entry

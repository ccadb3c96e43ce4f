"""The Lipschitz protocol: how a layer declares its L2 Lipschitz bound and its training estimate.

A layer class takes part in GloRo certification and training by declaring two methods
(:class:`LipschitzLayer`), or, for classes the user cannot edit, by
:func:`register_lipschitz`:

* ``lipschitz_bound(input_shape) -> Tensor``: a float64 scalar, an **upper bound** on the L2
  Lipschitz constant of the layer's exact ``forward`` on inputs of per-example shape
  ``input_shape`` (batch dimension excluded), with float rounding of the bound's own
  computation allowed for. Certificates multiply these: it must never be an estimate from below.
* ``lipschitz_estimate(input_shape) -> Tensor``: a differentiable scalar for training (e.g. power
  iteration). It may keep persistent vectors as buffers (:func:`power_vector`), updated in place
  only while the layer is in training mode, so ``state_dict``, ``.to``, DDP and EMA copies carry them.

A layer with a rule is a *leaf* for the Lipschitz analysis (its ``forward`` is not traced into).
A rule applies only to the computation it was written for: a registered rule matches the exact
class (a subclass may compute something else); protocol methods apply only when the class that
defines them is the class that defines ``forward`` or a subclass of it; an instance-level
``forward`` and forward hooks or pre-hooks (on the module or global) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

from relaxplug.lipschitz.cache import POWER_VECTOR_PREFIX

__all__ = [
    "LipschitzLayer",
    "LipschitzRule",
    "UnsupportedLayerError",
    "register_lipschitz",
    "registered_lipschitz",
    "unregister_lipschitz",
    "lipschitz_rule",
    "check_no_hooks",
    "power_vector",
]


class UnsupportedLayerError(TypeError):
    """Raised when a model holds a layer or op the Lipschitz analysis has no sound bound for."""


@runtime_checkable
class LipschitzLayer(Protocol):
    """A layer that declares its own L2 Lipschitz bound (certification) and estimate (training)."""

    def lipschitz_bound(self, input_shape: tuple[int, ...]) -> Tensor:
        """float64 scalar upper bound on the layer's L2 Lipschitz constant for this input shape."""
        ...

    def lipschitz_estimate(self, input_shape: tuple[int, ...]) -> Tensor:
        """Differentiable scalar estimate of the same constant (training)."""
        ...


LayerFn = Callable[[nn.Module, tuple[int, ...]], Tensor]


@dataclass(frozen=True)
class LipschitzRule:
    """``bound(module, input_shape)`` (sound, float64) and ``estimate(module, input_shape)`` (training)."""

    bound: LayerFn
    estimate: LayerFn
    source: str  # where the rule comes from, for error messages


_REGISTRY: dict[type, LipschitzRule] = {}


def register_lipschitz(cls: type, *, bound: LayerFn, estimate: LayerFn | None = None, replace: bool = False) -> None:
    """Declare the Lipschitz rule of ``cls`` (exact class match; subclasses are not covered).

    Args:
        cls: an ``nn.Module`` subclass, e.g. ``nn.Linear``.
        bound: ``(module, input_shape) -> float64 scalar``, a sound upper bound.
        estimate: ``(module, input_shape) -> scalar``, differentiable; ``None`` uses ``bound``.
        replace: allow replacing an existing rule (otherwise a duplicate raises ``ValueError``).
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_lipschitz needs an nn.Module subclass, got {cls!r}")
    if not callable(bound) or (estimate is not None and not callable(estimate)):
        raise TypeError("bound and estimate must be callables (module, input_shape) -> Tensor")
    if cls in _REGISTRY and not replace:
        raise ValueError(f"a Lipschitz rule for {cls.__qualname__} is already registered (pass replace=True)")
    _REGISTRY[cls] = LipschitzRule(bound, estimate or bound, f"register_lipschitz({cls.__qualname__})")


def unregister_lipschitz(cls: type) -> None:
    """Remove the registered rule of ``cls`` (``KeyError`` when there is none)."""
    if cls not in _REGISTRY:
        raise KeyError(f"no Lipschitz rule is registered for {cls!r}")
    del _REGISTRY[cls]


def registered_lipschitz() -> list[type]:
    """Classes with a registered rule."""
    return list(_REGISTRY)


def _definer(cls: type, name: str) -> type | None:
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def check_no_hooks(module: nn.Module, name: str = "") -> None:
    """Refuse forward hooks and pre-hooks (the bound is for ``forward`` alone) and instance ``forward``s."""
    if _torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks:
        raise UnsupportedLayerError(
            "global forward hooks (torch.nn.modules.module.register_module_forward_hook / _pre_hook) are "
            "registered; they change what every module computes, so no Lipschitz bound is given"
        )
    for sub_name, sub in module.named_modules():
        where = ".".join(p for p in (name, sub_name) if p) or type(module).__name__
        if sub._forward_hooks or sub._forward_pre_hooks:
            raise UnsupportedLayerError(
                f"module {where!r} ({type(sub).__name__}) has forward hooks or pre-hooks; they can change what it "
                "computes, so no Lipschitz bound is given (remove them before certifying or training)"
            )
        if "forward" in vars(sub):
            raise UnsupportedLayerError(
                f"module {where!r} ({type(sub).__name__}) has an instance attribute 'forward' replacing its class's "
                "forward; no Lipschitz bound is given for it"
            )


def lipschitz_rule(module: nn.Module) -> LipschitzRule | None:
    """The rule that bounds ``module`` as it runs, or ``None`` (the analysis traces into it).

    Raises :class:`UnsupportedLayerError` when the class inherits protocol methods from a class
    above the one that defines its ``forward`` (the declared bound is for another computation).
    """
    cls = type(module)
    if cls in _REGISTRY:
        return _REGISTRY[cls]
    if not callable(getattr(cls, "lipschitz_bound", None)):
        return None
    forward_cls = _definer(cls, "forward")
    for method in ("lipschitz_bound", "lipschitz_estimate"):
        owner = _definer(cls, method)
        if owner is not None and forward_cls is not None and not issubclass(owner, forward_cls):
            raise UnsupportedLayerError(
                f"{cls.__qualname__} inherits {method} from {owner.__qualname__} but its forward comes from "
                f"{forward_cls.__qualname__}; the inherited bound is for another computation (declare "
                f"{method} in {forward_cls.__qualname__} or below)"
            )
    has_estimate = callable(getattr(cls, "lipschitz_estimate", None))
    return LipschitzRule(
        lambda m, shape: m.lipschitz_bound(shape),
        (lambda m, shape: m.lipschitz_estimate(shape)) if has_estimate else (lambda m, shape: m.lipschitz_bound(shape)),
        f"{cls.__qualname__}.lipschitz_bound",
    )


def power_vector(module: nn.Module, key: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The persistent power-iteration vector ``lipschitz_u_<key>`` of ``module`` (a buffer).

    Created on first use (seeded Gaussian, so runs are reproducible) on ``like``'s device and
    dtype. Being a buffer, it is saved by ``state_dict`` and moved by ``.to``; a model loaded from
    a checkpoint must have run :func:`relaxplug.lipschitz.init_lipschitz_state` (or one estimate)
    first so that the buffers exist.
    """
    name = f"{POWER_VECTOR_PREFIX}{key}"
    vector = module._buffers.get(name)
    if vector is None or tuple(vector.shape) != tuple(shape):
        gen = torch.Generator().manual_seed(0)
        vector = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=like.device, dtype=like.dtype)
        module.register_buffer(name, vector / vector.norm())
    return module._buffers[name]

"""``certify``: one call for every certifier and guarantee."""

from __future__ import annotations

import math
import numbers
import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from relaxplug.adapters import Guarantee, resolve_guarantee
from relaxplug.adapters.certificate import Certificate
from relaxplug.certifiers import Certifier, get_certifier
from relaxplug.lipschitz import checked_once
from relaxplug.modes import eval_mode
from relaxplug.norms import Norm

__all__ = ["as_radius", "certify", "check_inputs", "check_model", "model_logits", "resolve_eps"]


def as_radius(eps: object, what: str = "eps") -> float:
    """``eps`` as a float: a Python, NumPy or 0-d tensor number, finite and ``>= 0``."""
    if isinstance(eps, Tensor):
        if eps.numel() != 1 or eps.ndim != 0:
            raise ValueError(f"{what} must be a number (a 0-d tensor), got a tensor of shape {tuple(eps.shape)}")
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"{what} must be a finite number >= 0, got {eps!r}")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {eps!r}")
    return value


def check_inputs(x: Tensor, eps: object) -> float:
    """Reject bad input early (non-tensor, not a batch, empty, NaN/inf entries, a bad ``eps``);
    return ``eps`` as a float (:func:`as_radius`)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, ...), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"x is an empty batch (shape {tuple(x.shape)}): nothing to certify")
    # a finite sum proves every entry finite (NaN and inf propagate); only an overflowing or
    # non-finite sum needs the elementwise test
    if not (bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())):
        raise ValueError("x contains NaN or infinite values")
    return as_radius(eps)


def check_model(model: nn.Module, x: Tensor) -> None:
    """Reject a model that cannot run on ``x`` before any work: not an ``nn.Module``, a non-float
    input, or parameters/buffers of another float type or device than ``x``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("model is a TorchScript module (torch.jit.script/trace), whose computation cannot be "
                        "inspected: certify the nn.Module it was made from")
    if hasattr(model, "_orig_mod") and type(model).__name__ == "OptimizedModule":
        raise TypeError("model is a torch.compile wrapper: certify the module it compiles (model._orig_mod)")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if not tensor.is_floating_point():
            continue
        if tensor.dtype != x.dtype:
            raise TypeError(f"the model's {name} is {tensor.dtype} but x is {x.dtype}: use one float type for "
                            f"model and input (e.g. x.to({tensor.dtype}) or model.to({x.dtype}))")
        if tensor.device != x.device:
            raise ValueError(f"the model's {name} is on {tensor.device} but x is on {x.device}: move one of them")


def model_logits(model: nn.Module, x: Tensor, run: Callable[[nn.Module, Tensor], Tensor] | None = None) -> Tensor:
    """``model(x)`` (or ``run(model, x)``, e.g. a certifier's own evaluation of the model) without
    gradients, checked to be logits ``(B, n)``; a forward that fails is reported with the input's shape."""
    try:
        with torch.no_grad():
            logits = model(x) if run is None else run(model, x)
    except (RuntimeError, ValueError, IndexError) as error:
        raise ValueError(f"the model failed on x of shape {tuple(x.shape)} ({x.dtype}): {error}") from error
    if not isinstance(logits, Tensor):
        raise TypeError(f"model must return a logits tensor (B, n), got a {type(logits).__name__}")
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"model must return logits of shape (B, n) = ({x.shape[0]}, n), got {tuple(logits.shape)}")
    return logits


def resolve_eps(guarantee: Guarantee, eps: object | None) -> float:
    """The radius to certify ``guarantee`` at.

    A guarantee that carries its own radii (:attr:`Guarantee.carries_radii`, IGRP) takes them
    from ``guarantee.radii(None)``; ``eps`` must then be ``None`` or its outer (last) radius, and
    that radius is returned. Every other guarantee needs ``eps``.
    """
    if not guarantee.carries_radii:
        if eps is None:
            raise ValueError(f"eps is required for {guarantee!r}; only guarantees that carry their own radii "
                             "(IGRP: eps_in, eps_out) take them from the guarantee")
        return as_radius(eps)
    own = tuple(guarantee.radii(None))
    if eps is not None and as_radius(eps) != own[-1]:
        raise ValueError(f"{guarantee!r} carries its own radii {own}: pass eps=None (or its outer radius "
                         f"{own[-1]:g}), got eps={eps!r}; to certify other radii, change the guarantee's")
    return own[-1]


def certify(
    model: nn.Module,
    x: Tensor,
    eps: float | None = None,
    norm: float | str = 2,
    certifier: str | Certifier = "gloro",
    guarantee: str | Guarantee = "standard",
    *,
    radius: bool = True,
    sets: Sequence[Sequence[int]] | None = None,
    **certifier_options,
) -> Certificate:
    """Certify ``guarantee`` for ``model`` on the ``norm``-ball of radius ``eps`` around each row of ``x``.

    Args:
        model: an ``nn.Module`` returning logits ``(B, n)``; used in eval mode.
        x: ``(B, ...)`` inputs on the model's device.
        eps: the radius; optional for a guarantee that carries its own radii (IGRP: ``eps_in``
            and ``eps_out``), which then accepts only ``None`` or its outer radius.
        certifier: a name from :func:`relaxplug.list_certifiers` or an instance.
        guarantee: a name such as ``"rtk:3"`` or an adapter instance.
        radius: also compute the certified radius where the certifier has it cheaply.
        sets: sets for a bare ``"affinity"``/``"superclass"`` guarantee name (and the groups of
            ``"igrp:EPS_IN,EPS_OUT"``).
    Returns:
        a :class:`Certificate`; a point is certified iff ``m(x) > 0`` (Equation B1).
    """
    spec = resolve_guarantee(guarantee, sets=sets)
    eps = check_inputs(x, resolve_eps(spec, eps))
    norm = Norm(norm)
    cert = get_certifier(certifier, **certifier_options)
    cert.check_norm(norm)
    start = time.perf_counter()
    check_model(model, x)
    # the cached Lipschitz analysis is compared with the model at its first read in this call;
    # nothing below changes the model after that read (GloRo evaluates the traced graph)
    with eval_mode(model), checked_once(model):
        logits = model_logits(model, x, cert.logits)
        spec.validate(logits.shape[1])
        requests = spec.requests(logits, eps)
        bounds = cert.bounds(model, x, logits, requests, norm)
        result = spec.evaluate(requests[0].order, bounds)
        radii = cert.radius(model, x, logits, spec, norm) if radius else None
    if radii is None:
        radii = torch.full_like(result.margin, float("nan"))
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    out = Certificate(
        pred=requests[0].order[:, 0],
        certified=result.certified,
        k=result.k,
        classes=result.classes,
        margin=result.margin.detach(),
        radius=radii.detach(),
        guarantee=repr(spec),
        certifier=cert.name,
        eps=eps,
        norm=norm,
        seconds=time.perf_counter() - start,
    )
    return spec.certificate(out, result)

"""``certify``: one call for every certifier and guarantee."""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch
from torch import Tensor, nn

from relaxplug.adapters import Guarantee, resolve_guarantee
from relaxplug.adapters.certificate import Certificate
from relaxplug.certifiers import Certifier, get_certifier

__all__ = ["certify", "check_inputs", "resolve_eps"]


def check_inputs(x: Tensor, eps: float) -> None:
    """Reject bad input early: non-tensor, NaN/inf entries, negative or non-finite ``eps``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (B, ...), got shape {tuple(x.shape)}")
    # a finite sum proves every entry finite (NaN and inf propagate); only an overflowing or
    # non-finite sum needs the elementwise test
    if not (bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())):
        raise ValueError("x contains NaN or infinite values")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def resolve_eps(guarantee: Guarantee, eps: float | None) -> float:
    """The radius to certify ``guarantee`` at.

    A guarantee with several radii (``len(guarantee.radii(1.0)) > 1``, IGRP) carries its own:
    ``guarantee.radii(None)``; ``eps`` must then be ``None`` or its outer (last) radius, and that
    radius is returned. Every other guarantee needs ``eps``.
    """
    if len(guarantee.radii(1.0)) == 1:
        if eps is None:
            raise ValueError(f"eps is required for {guarantee!r}; only guarantees that carry their own radii "
                             "(IGRP: eps_in, eps_out) take them from the guarantee")
        return eps
    own = tuple(guarantee.radii(None))
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or float(eps) != own[-1]):
        raise ValueError(f"{guarantee!r} carries its own radii {own}: pass eps=None (or its outer radius "
                         f"{own[-1]:g}), got eps={eps!r}; to certify other radii, change the guarantee's")
    return own[-1]


def _parse_norm(norm: float | str) -> float:
    if isinstance(norm, str):
        norm = norm.strip().lower()
        if norm in ("inf", "linf", "l_inf"):
            return float("inf")
        norm = norm.lstrip("l")
    value = float(norm)
    if value not in (1.0, 2.0, float("inf")):
        raise ValueError(f"norm must be 1, 2 or inf, got {norm!r}")
    return value


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
    eps = resolve_eps(spec, eps)
    check_inputs(x, eps)
    norm = _parse_norm(norm)
    cert = get_certifier(certifier, **certifier_options)
    cert.check_norm(norm)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            logits = model(x)
        if logits.ndim != 2:
            raise ValueError(f"model must return logits of shape (B, n), got {tuple(logits.shape)}")
        spec.validate(logits.shape[1])
        requests = spec.requests(logits, eps)
        bounds = cert.bounds(model, x, logits, requests, norm)
        result = spec.evaluate(requests[0].order, bounds)
        radii = cert.radius(model, x, logits, spec, norm) if radius else None
    finally:
        model.train(was_training)
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
        eps=float(eps),
        norm=norm,
        seconds=time.perf_counter() - start,
    )
    # a guarantee with more parts than the shared fields (IGRP) returns an enriched certificate
    enrich = getattr(type(spec), "certificate", None)
    return enrich(spec, out, result) if callable(enrich) else out

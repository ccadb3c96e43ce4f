"""The certifier contract: lower bounds on pairwise logit margins over a norm ball."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from relaxplug.adapters import Guarantee, MarginRequest
from relaxplug.norms import Norm
from relaxplug.registry import Registry

__all__ = ["Certifier", "CERTIFIERS", "register_certifier", "list_certifiers", "get_certifier", "rounding_allowance", "ROUNDING_RTOL"]

#: relative allowance for float rounding of logits and bounds (see README, "Floating point")
ROUNDING_RTOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-5, torch.float64: 1e-12}


def rounding_allowance(logits: Tensor, extra: Tensor | float = 0.0) -> Tensor:
    """Amount subtracted from every margin bound: ``rtol * (2 max_i |f_i(x)| + extra)``.

    ``rtol`` is about 170 float32 ulps (``1e-5``); it covers rounding accumulated in the
    forward pass and in the bound. Shape: ``(B, n) -> (B, 1, 1)`` plus ``extra``'s broadcast.
    """
    rtol = ROUNDING_RTOL.get(logits.dtype, 1e-5)
    scale = 2 * logits.detach().abs().amax(dim=1)[:, None, None]
    return rtol * (scale + extra)


class Certifier:
    """Computes rank-form margin lower bounds for a guarantee's requests.

    Subclasses set ``name`` and ``norms`` and implement :meth:`bounds`. Optionally they
    implement :meth:`radius` (the largest certified radius per point).
    """

    name: str = "certifier"
    norms: tuple[float, ...] = (2.0,)

    def check_norm(self, norm: float | str) -> None:
        """``ValueError`` naming this certifier's norms unless ``norm`` is one of them."""
        try:
            supported = Norm(norm) in self.norms
        except ValueError:
            supported = False
        if not supported:
            raise ValueError(f"certifier {self.name!r} supports norms {[Norm(n).name for n in self.norms]}, got {norm}")

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """The logits ``(B, n)`` a certificate is about: ``model(x)`` (called under ``no_grad`` in eval
        mode). A certifier may compute them with the same operations while measuring what its
        bounds use (GloRo: every layer's norm, for the rounding model)."""
        return model(x)

    def bounds(self, model: nn.Module, x: Tensor, logits: Tensor, requests: Sequence[MarginRequest], norm: float) -> list[Tensor]:
        """One ``(B, K, n)`` rank-form lower-bound tensor per request (``adapters.base``)."""
        raise NotImplementedError

    def radius(self, model: nn.Module, x: Tensor, logits: Tensor, guarantee: Guarantee, norm: float) -> Tensor | None:
        """``(B,)`` largest radius at which ``guarantee`` is certified, or ``None``."""
        return None


CERTIFIERS: Registry[Certifier] = Registry("certifier")


def register_certifier(name: str):
    """Decorator registering a certifier constructor (``**options -> Certifier``)."""
    return CERTIFIERS.register(name)


def list_certifiers() -> list[str]:
    return CERTIFIERS.names()


def get_certifier(spec: str | Certifier, /, **options) -> Certifier:
    """Resolve a certifier by name (``gloro``, ``ibp``, ``crown-ibp``, ``crown``, ...)."""
    if isinstance(spec, Certifier):
        if options:
            raise ValueError("options are only accepted with a certifier name")
        return spec
    return CERTIFIERS.create(str(spec).lower(), **options)

"""GloRo-instrumented outputs and losses (Leino et al. 2021; Leino & Fredrikson 2021, B2).

The instrumented output of a guarantee with margin ``m`` (its analogue of Equation B1,
computed from GloRo's Lipschitz margins ``f_j(x) - f_i(x) - eps K_ji``) is Equation B2:

    g(x) = [f_1(x), ..., f_n(x), g_bot(x)],        g_bot(x) = max_i f_i(x) - m(x).

The same margin function certifies, so certified training is over-approximate certification.
Losses on ``g`` (``y`` the label; the bottom class ``bot`` is never a target):

- GloRo cross-entropy: ``L_CE = CE(g(x), y)``; minimising it pushes ``m(x)`` up.
- GloRo TRADES: ``L = CE(f(x), y) + lambda KL(p || q)`` with ``p = softmax(f(x))`` padded with
  zero mass for ``bot`` and ``q = softmax(g(x))``: the net is pushed to be robust on its own
  prediction, right or wrong; ``lambda`` is scheduled as in Table F1.

Use them without the wrapper: ``g = gloro_instrumented(logits, K, eps, guarantee)``, then
``gloro_cross_entropy(g, y)`` or ``gloro_trades(g, y, lam)``; or by name through
:data:`GLORO_LOSSES` (what :class:`relaxplug.GloRoNet` does).

Margin losses of the state-of-the-art Lipschitz networks, for every guarantee
(:mod:`relaxplug.training.margin_losses`): EMMA (Hu et al. 2024) and logit annealing (LA; Lai
et al. 2025), on the clean logits and ``K`` rather than on ``g``: ``emma_loss(logits, y, K, eps,
guarantee)``, ``logit_annealing_loss(...)``; by name through :data:`MARGIN_LOSSES`.

Bound-propagation training: :class:`CrownIBPLoss` (CROWN-IBP, Zhang et al. 2020, standard and
IGRP, on the auto_LiRPA glue the certifiers use; :mod:`relaxplug.training.crown_ibp` states its
equations) and its robust cross-entropy ``log(1 + sum_i exp(-l_i))``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from relaxplug.adapters import Guarantee
from relaxplug.certifiers.gloro import gloro_lower_bounds
from relaxplug.training.crown_ibp import CrownIBPLoss, CrownIBPSchedule, robust_cross_entropy
from relaxplug.training.margin_losses import MARGIN_LOSSES, annealed_cross_entropy, emma_loss, logit_annealing_loss, robust_logits

__all__ = [
    "GLORO_LOSSES",
    "MARGIN_LOSSES",
    "annealed_cross_entropy",
    "emma_loss",
    "logit_annealing_loss",
    "robust_logits",
    "CrownIBPLoss",
    "CrownIBPSchedule",
    "gloro_cross_entropy",
    "gloro_instrumented",
    "gloro_loss",
    "gloro_trades",
    "guarantee_margin",
    "instrumented_logits",
    "robust_cross_entropy",
]


def guarantee_margin(logits: Tensor, pair_lipschitz: Tensor, eps: float, guarantee: Guarantee) -> Tensor:
    """``m(x)`` of ``guarantee`` from Lipschitz margins ``f_j - f_i - eps K_ji``. ``(B, n) -> (B,)``.

    The rank order is taken from the (detached) clean logits; gradients flow through the
    logits and ``pair_lipschitz`` ``(n, n)``.
    """
    requests = guarantee.requests(logits, eps)
    lowers = [
        gloro_lower_bounds(logits, r.order, pair_lipschitz, r.eps, r.n_candidates) for r in requests
    ]
    return guarantee.evaluate(requests[0].order, lowers).margin


def instrumented_logits(logits: Tensor, margin: Tensor) -> Tensor:
    """Equation B2: append ``g_bot = max_i f_i - m``. ``(B, n), (B,) -> (B, n + 1)``."""
    bottom = logits.max(dim=1).values - margin
    return torch.cat([logits, bottom[:, None]], dim=1)


def gloro_instrumented(logits: Tensor, pair_lipschitz: Tensor, eps: float, guarantee: Guarantee) -> Tensor:
    """``g(x)`` (Equation B2) of ``guarantee`` at radius ``eps``. ``(B, n), (n, n) -> (B, n + 1)``."""
    return instrumented_logits(logits, guarantee_margin(logits, pair_lipschitz, eps, guarantee))


def gloro_cross_entropy(instrumented: Tensor, labels: Tensor, lam: float = 0.0) -> Tensor:
    """``CE(g(x), y)`` (the bottom class is never a target); ``lam`` is unused (uniform signature)."""
    return F.cross_entropy(instrumented, labels)


def gloro_trades(instrumented: Tensor, labels: Tensor, lam: float) -> Tensor:
    """GloRo TRADES: ``CE(f(x), y) + lam * KL(p || q)``, ``f(x) = g(x)[:, :n]``, ``p`` the clean
    softmax with zero mass on the bottom class, ``q = softmax(g(x))``. ``(B, n + 1), (B,) -> ()``."""
    logits = instrumented[:, :-1]
    clean = F.cross_entropy(logits, labels)
    p = F.softmax(logits, dim=1)
    log_p = F.log_softmax(logits, dim=1)
    log_q = F.log_softmax(instrumented, dim=1)[:, :-1]
    kl = (p * (log_p - log_q)).sum(dim=1).mean()
    return clean + lam * kl


GloRoLoss = Callable[[Tensor, Tensor, float], Tensor]

#: GloRo losses by name: ``loss(instrumented (B, n + 1), labels (B,), lam) -> scalar``
GLORO_LOSSES: dict[str, GloRoLoss] = {"ce": gloro_cross_entropy, "trades": gloro_trades}


def gloro_loss(name: str) -> GloRoLoss:
    """The GloRo loss called ``name`` (a key of :data:`GLORO_LOSSES`)."""
    if name not in GLORO_LOSSES:
        raise ValueError(f"unknown GloRo loss {name!r}; known: {', '.join(sorted(GLORO_LOSSES))}")
    return GLORO_LOSSES[name]

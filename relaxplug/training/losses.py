"""GloRo-instrumented outputs and losses (Leino et al. 2021; Leino & Fredrikson 2021, B2).

``g(x) = [f_1(x), ..., f_n(x), g_bot(x)]`` with ``g_bot = max_i f_i(x) - m(x)``, where ``m`` is
the guarantee's margin (Equation B1) computed from GloRo's Lipschitz margins: the same
function that certifies, so certified training is over-approximate certification.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from relaxplug.adapters import Guarantee
from relaxplug.certifiers.gloro import gloro_lower_bounds

__all__ = ["guarantee_margin", "instrumented_logits", "gloro_cross_entropy", "gloro_trades"]


def guarantee_margin(logits: Tensor, pair_lipschitz: Tensor, eps: float, guarantee: Guarantee) -> Tensor:
    """``m(x)`` of ``guarantee`` from Lipschitz margins ``f_j - f_i - eps K_ji``. ``(B, n) -> (B,)``.

    The rank order is taken from the (detached) clean logits; gradients flow through the
    logits and ``pair_lipschitz``.
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


def gloro_cross_entropy(instrumented: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of ``g(x)`` against the true label (the bottom class is never a target)."""
    return F.cross_entropy(instrumented, labels)


def gloro_trades(logits: Tensor, instrumented: Tensor, labels: Tensor, lam: float) -> Tensor:
    """GloRo TRADES: ``CE(f(x), y) + lam * KL(p || q)``, ``p`` the clean softmax of ``f(x)`` with
    zero mass on the bottom class, ``q = softmax(g(x))``."""
    clean = F.cross_entropy(logits, labels)
    p = F.softmax(logits, dim=1)
    log_p = F.log_softmax(logits, dim=1)
    log_q = F.log_softmax(instrumented, dim=1)[:, :-1]
    kl = (p * (log_p - log_q)).sum(dim=1).mean()
    return clean + lam * kl

"""The guarantee contract: acceptable top-k sets and the margin ``m(x)`` they induce.

Notation (Leino & Fredrikson 2021, supplement B): ``F^k(x)`` is the set of the top ``k``
classes of the logits ``f(x)``; a certifier supplies lower bounds ``lower(j, i)`` on
``f_j(x') - f_i(x')`` over the ball. Then

    m^k(x) = min_{j in F^k(x), i not in F^k(x)} lower(j, i)                (C4-C5)
    m(x)   = max over the guarantee's acceptable k of m^k(x)                (B1)

and the point is certified iff ``m(x) > 0``. Classes are ranked by a stable descending sort,
so equal logits are ordered by class index and never compared for float equality.

Bounds are exchanged in *rank form*: ``lower[b, r, s]`` bounds ``f_{o_r} - f_{o_s}`` where
``o = rank_order(logits)[b]``; only ``r < K`` (the top-K candidates) and ``s > r`` are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from relaxplug.adapters.certificate import Certificate
from relaxplug.adapters.claims import Claim

__all__ = [
    "Guarantee",
    "GuaranteeResult",
    "MarginRequest",
    "rank_order",
    "topk_margins",
    "topk_class_mask",
]


def rank_order(logits: Tensor) -> Tensor:
    """Class indices by decreasing logit; ties keep increasing class index.

    Shape: ``(B, n) -> (B, n)`` long.
    """
    return torch.sort(logits.detach(), dim=1, descending=True, stable=True).indices


def topk_margins(lower: Tensor) -> Tensor:
    """``m^k = min_{r < k <= s} lower[:, r, s]`` for ``k = 1..K`` (Equation C4-C5 in rank form).

    Args:
        lower: ``(B, K, n)`` rank-form lower bounds; entries with ``s <= r`` are ignored.
    Returns:
        ``(B, K)`` margins; ``+inf`` for ``k = n`` (no class outside ``F^n``).
    """
    batch, k_max, n = lower.shape
    if k_max > n:
        raise ValueError(f"at most n={n} candidate ranks, got K={k_max}")
    pad = lower.new_full((batch, k_max, 1), float("inf"))
    padded = torch.cat([lower, pad], dim=2)  # (B, K, n+1)
    # suffix[b, r, s] = min_{s' >= s} lower[b, r, s']
    suffix = padded.flip(2).cummin(dim=2).values.flip(2)
    per_k_rows = suffix[:, :, 1 : k_max + 1]  # (B, K rows r, K values of k): min_{s >= k}
    prefix = per_k_rows.cummin(dim=1).values  # min over r' <= r
    return torch.diagonal(prefix, dim1=1, dim2=2)  # r = k - 1  -> (B, K)


def topk_class_mask(order: Tensor, k: Tensor) -> Tensor:
    """Boolean ``(B, n)`` mask of ``F^k(x)`` for a per-point ``k`` (``(B,)``; 0 gives none)."""
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return ranks < k[:, None]


@dataclass(frozen=True)
class MarginRequest:
    """What a guarantee asks a certifier to bound: ``lower[b, r, s]`` at radius ``eps`` for
    candidate ranks ``r < K``, opponents ``s > r``, on points whose ``accept[b, r]`` holds for
    some ``k > r`` (rows with no acceptable ``k > r`` may be left at ``+inf``)."""

    eps: float
    order: Tensor  # (B, n) long
    accept: Tensor  # (B, K) bool, prefix-closed in k

    @property
    def n_candidates(self) -> int:
        return int(self.accept.shape[1])

    def needed_rows(self) -> Tensor:
        """``(B, K)`` bool: candidate rank ``r`` is needed when some acceptable ``k > r``."""
        return self.accept.flip(1).cummax(dim=1).values.flip(1)


@dataclass(frozen=True)
class GuaranteeResult:
    """Per-point outcome of a guarantee on certifier bounds.

    Shape: ``margin (B,)``, ``certified (B,)`` bool, ``k (B,)`` long (loosest certified k, 0 when
    rejected), ``classes (B, n)`` bool (``F^k``), ``per_k (B, K)`` margins ``m^k``.
    """

    margin: Tensor
    certified: Tensor
    k: Tensor
    classes: Tensor
    per_k: Tensor


class Guarantee:
    """Base class: a guarantee is its set of acceptable ``k`` per point (prefix-closed).

    Subclasses implement :meth:`max_k` and :meth:`accept`; :meth:`evaluate` is shared. A
    guarantee whose statement is not "the certified top-k set is kept" overrides the hooks
    (IGRP does; ``docs/guarantees.md``, "Writing a guarantee"):

    - :attr:`carries_radii` and :meth:`radii`: radii fixed by the guarantee itself;
    - :meth:`requests` and :meth:`evaluate`: which margins to bound, and the verdict on them;
    - :meth:`certificate`: the certificate ``certify`` returns (extra fields of the guarantee);
    - :meth:`claims`: what a certificate asserts, as :class:`~relaxplug.adapters.claims.Claim`
      batches (what attacks check);
    - :meth:`candidate_claims` and :meth:`survivors`: every claim the guarantee could make at a
      point, and the verdict once attacks have tried them (empirical robustness).
    """

    name: str = "guarantee"

    #: ``True`` when the guarantee fixes its own radii (IGRP: ``eps_in``, ``eps_out``):
    #: ``certify`` then takes ``eps=None`` (or the outer radius) and :meth:`radii` ``(None)``
    #: returns them. ``False``: one radius, the caller's ``eps``.
    carries_radii: bool = False

    def max_k(self, n_classes: int) -> int:
        raise NotImplementedError

    def accept(self, order: Tensor) -> Tensor:
        """``(B, n)`` rank order -> ``(B, K)`` bool, ``True`` where ``F^k`` is acceptable."""
        raise NotImplementedError

    def validate(self, n_classes: int) -> None:
        """Raise ``ValueError`` if the guarantee does not fit a model with ``n_classes``."""
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")

    def radii(self, eps: float) -> tuple[float, ...]:
        """Radii at which margins are needed (one for every guarantee but IGRP)."""
        return (float(eps),)

    def requests(self, logits: Tensor, eps: float) -> list[MarginRequest]:
        order = rank_order(logits)
        accept = self.accept(order)
        return [MarginRequest(eps=r, order=order, accept=accept) for r in self.radii(eps)]

    def evaluate(self, order: Tensor, lowers: Sequence[Tensor]) -> GuaranteeResult:
        """Equation B1: ``m = max_{acceptable k} m^k``; certified iff ``m > 0``."""
        if len(lowers) != 1:
            raise ValueError(f"{self.name} takes bounds at one radius, got {len(lowers)}")
        accept = self.accept(order)
        per_k = topk_margins(lowers[0])
        neg_inf = torch.finfo(per_k.dtype).min
        masked = torch.where(accept, per_k, per_k.new_full((), neg_inf))
        margin = masked.max(dim=1).values
        good = accept & (per_k > 0)
        ks = torch.arange(1, per_k.shape[1] + 1, device=per_k.device)
        k = (good.long() * ks).max(dim=1).values
        return GuaranteeResult(
            margin=margin,
            certified=margin > 0,
            k=k,
            classes=topk_class_mask(order, k),
            per_k=per_k,
        )

    def certificate(self, cert: Certificate, result: GuaranteeResult) -> Certificate:
        """The certificate ``certify`` returns, from the shared fields and :meth:`evaluate`'s
        result; a guarantee with more parts returns a subclass carrying them."""
        return cert

    def claims(self, cert: Certificate) -> tuple[Claim, ...]:
        """What ``cert`` asserts: every certified point keeps its certified set ``F^k`` as the
        top-k set on the ``cert.eps`` ball (``W = F^k``, ``L`` = the other classes)."""
        point = cert.certified.nonzero(as_tuple=True)[0]
        return (Claim.of_sets("set", cert.eps, point, cert.classes[point]),)

    def candidate_claims(self, order: Tensor, eps: float) -> tuple[Claim, ...]:
        """Every claim the guarantee accepts at each point (``order`` the clean rank order): one
        per acceptable ``k``, ``F^k`` kept on the ``eps`` ball."""
        point, k_index = self.accept(order).nonzero(as_tuple=True)
        return (Claim.of_sets("set", eps, point, topk_class_mask(order[point], k_index + 1)),)

    def survivors(self, order: Tensor, claims: Sequence[Claim], survived: Sequence[Tensor]) -> Tensor:
        """The empirical verdict: ``(B, n)`` bool, the classes a point is robustly assigned to
        given which :meth:`candidate_claims` ``survived`` (one ``(C,)`` bool per claim batch);
        an empty row is not robust. Here: ``F^k`` of the loosest surviving ``k``."""
        k = torch.zeros(order.shape[0], dtype=torch.long, device=order.device)
        for claim, alive in zip(claims, survived):
            sizes = claim.winners.sum(dim=1).to(order.device)
            sizes = torch.where(alive.to(order.device), sizes, torch.zeros_like(sizes))
            k = k.scatter_reduce(0, claim.point.to(order.device), sizes, reduce="amax")
        return topk_class_mask(order, k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

"""The guarantee contract: acceptable top-k sets and the margin ``m(x)`` they induce.

Notation (Leino & Fredrikson 2021, supplement B): ``F^k(x)`` is the set of the top ``k``
classes of the logits ``f(x)``; a certifier supplies lower bounds ``lower(j, i)`` on
``f_j(x') - f_i(x')`` over the ball. Then

    m^k(x) = min_{j in F^k(x), i not in F^k(x)} lower(j, i)                (C4-C5)
    m(x)   = max over the guarantee's acceptable k of m^k(x)                (B1)

and the point is certified iff ``m(x) > 0``. Classes are ranked by a stable descending sort,
so equal logits are ordered by class index and never compared for float equality.

Bounds are exchanged in *rank form*: ``lower[b, r, s]`` bounds ``f_{o_r} - f_{o_s}`` where
``o = rank_order(logits, K)[b]``; only ``r < K`` (the top-K candidates) and ``s > r`` are read.
Only the first ``K`` positions of ``o`` are ranks; the classes after them are read as a set
(the complement of ``F^K``), so they are not sorted.
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


def rank_order(logits: Tensor, k: int | None = None) -> Tensor:
    """Class indices by decreasing logit; ties keep increasing class index.

    With ``k``, only the first ``k`` ranks are ordered (they equal the first ``k`` of the full
    order exactly); the other classes follow in a fixed order that depends only on the top-``k``
    set. ``F^j`` for ``j <= k`` depends only on the top ``k``, and selecting it costs one
    ``topk`` pass instead of a stable sort of all ``n`` logits. A batch with NaN logits, or with
    a tie across the ``k``-th rank, takes the full sort.

    Shape: ``(B, n) -> (B, n)`` long.
    """
    logits = logits.detach()
    batch, n = logits.shape
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k is None or k >= n:
        return _stable_sort(logits)
    values, top = torch.topk(logits, k + 1, dim=1)  # (B, k + 1)
    # a NaN logit makes its row's sum NaN (one cheap reduction instead of an elementwise test)
    if not bool((values[:, k - 1] > values[:, k]).all() & ~torch.isnan(logits.sum(dim=1)).any()):
        return _stable_sort(logits)
    # the top-k set is unambiguous; order it by value, ties by index (stable sort of an index-sorted set)
    top = top[:, :k].sort(dim=1).values  # (B, k) increasing class index
    top = top.gather(1, _stable_sort(logits.gather(1, top)))  # (B, k) rank order
    # the others: identity order, with each top class's slot (index >= k) given to a front class
    # (index < k) that is not in the top set; both lists are paired in increasing index
    front = torch.arange(k, device=logits.device)
    free_front = ~(top[:, :, None] == front).any(dim=1)  # (B, k): class c < k not in the top set
    free_key = torch.where(free_front, front, n).sort(dim=1).values  # valid entries first
    slot_key = torch.where(top >= k, top, n).sort(dim=1).values  # same count of valid entries
    valid = slot_key < n
    order = torch.arange(n, device=logits.device).repeat(batch, 1)
    order.scatter_(1, torch.where(valid, slot_key, 0), torch.where(valid, free_key, 0))
    order[:, :k] = top
    return order


def _stable_sort(logits: Tensor) -> Tensor:
    return torch.sort(logits, dim=1, descending=True, stable=True).indices


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
    # one pass over the (B, K, n - K) tail (min over s >= K), then suffix minima over the K x K head
    if k_max < n:
        tail = lower[:, :, k_max:].min(dim=2, keepdim=True).values  # (B, K, 1)
    else:
        tail = lower.new_full((batch, k_max, 1), float("inf"))  # no class outside F^n
    columns = torch.cat([lower[:, :, 1:k_max], tail], dim=2)  # (B, K rows r, K columns s = 1..K-1, >= K)
    # per_k_rows[b, r, k - 1] = min_{s >= k} lower[b, r, s]
    per_k_rows = columns.flip(2).cummin(dim=2).values.flip(2)
    prefix = per_k_rows.cummin(dim=1).values  # min over r' <= r
    return torch.diagonal(prefix, dim1=1, dim2=2)  # r = k - 1  -> (B, K)


def topk_class_mask(order: Tensor, k: Tensor, max_k: int | None = None) -> Tensor:
    """Boolean ``(B, n)`` mask of ``F^k(x)`` for a per-point ``k`` (``(B,)``; 0 gives none).

    ``max_k``, when given, bounds every ``k``: only ``order[:, :max_k]`` is read.
    """
    batch, n = order.shape
    width = n if max_k is None else min(int(max_k), n)
    inside = torch.arange(width, device=order.device)[None, :] < k[:, None]  # (B, width)
    mask = torch.zeros(batch, n, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, order[:, :width], inside)


@dataclass(frozen=True)
class MarginRequest:
    """What a guarantee asks a certifier to bound: ``lower[b, r, s]`` at radius ``eps`` for
    candidate ranks ``r < K``, opponents ``s > r``, on points whose ``accept[b, r]`` holds for
    some ``k > r`` (rows with no acceptable ``k > r`` may be left at ``+inf``)."""

    eps: float
    order: Tensor  # (B, n) long: the top K in rank order, then the other classes (unsorted)
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
        order = rank_order(logits, self.max_k(logits.shape[1]))
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
            classes=topk_class_mask(order, k, per_k.shape[1]),
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

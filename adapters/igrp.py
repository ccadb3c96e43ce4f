"""Inter-group robustness prioritization (IGRP; Wang et al., "Adaptive Verifiable Training Using
Pairwise Class Similarity", seed ``003``): a small radius between similar classes, a large one
between groups of dissimilar classes.

Let ``p = o_0`` be the prediction (rank order of the clean logits, ties by class index), ``G(p)``
its group in a partition of the classes, and ``lower_eps(j, i)`` a certifier's lower bound on
``f_j(x') - f_i(x')`` over the ball of radius ``eps``. IGRP(groups, eps_in, eps_out) certifies

    m_in(x)  = min_{i != p}     lower_{eps_in}(p, i)      > 0    (top-1 at eps_in)
    m_out(x) = min_{i not in G(p)} lower_{eps_out}(p, i)  > 0    (G(p) kept at eps_out)

and ``m(x) = min(m_in, m_out)``; certified iff ``m(x) > 0``. ``m_out > 0`` means ``p`` beats every
class outside its group on the whole ``eps_out`` ball, so ``argmax f(x') in G(p)`` there: the
prediction's group is kept against every other group. ``m_out`` is ``+inf`` when ``G(p)`` holds
every class.

Both margins read only rank-0 rows of the rank-form bounds (``K = 1``, ``n - 1`` pairs per radius),
and the outer test is never weaker than the affinity-style one with the groups as sets
(``max_{k: F^k ⊆ G(p)} m^k_{eps_out} > 0``): every such ``F^k`` contains ``p`` and excludes all
of ``G(p)``'s outsiders, so ``m^k <= m_out``. The outer term is the margin of the seed's outer
loss (true class against the dissimilar classes at the large radius).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Iterable, Sequence

import torch
from torch import Tensor

from relaxplug.adapters.certificate import Certificate
from relaxplug.adapters.claims import Claim
from relaxplug.adapters.base import Guarantee, GuaranteeResult, MarginRequest, rank_order, topk_class_mask, topk_margins

__all__ = ["IGRP", "IGRPCertificate", "IGRPResult", "check_partition"]


def check_partition(groups: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Normalise ``groups`` to sorted tuples; reject non-integer, negative, empty, repeated or
    overlapping groups (coverage of every class is checked by :meth:`IGRP.validate`)."""
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Iterable):
        raise ValueError(f"IGRP groups must be a list of lists of class indices, got {groups!r}")
    out: list[tuple[int, ...]] = []
    seen: dict[int, int] = {}
    for position, members in enumerate(groups):
        if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
            raise ValueError(f"IGRP group #{position} must be a list of class indices, got {members!r}")
        members = tuple(members)
        if not members:
            raise ValueError(f"IGRP group #{position} is empty")
        for c in members:
            if isinstance(c, bool) or not isinstance(c, numbers.Integral):
                raise ValueError(f"IGRP group #{position} holds a non-integer class {c!r}")
            c = int(c)
            if c < 0:
                raise ValueError(f"IGRP group #{position} holds a negative class index {c}")
            if c in seen:
                where = f"twice in group #{position}" if seen[c] == position else f"in group #{seen[c]} and group #{position}"
                raise ValueError(f"IGRP groups must be disjoint: class {c} is {where}")
            seen[c] = position
        out.append(tuple(sorted(int(c) for c in members)))
    if not out:
        raise ValueError("IGRP needs at least one group")
    return tuple(out)


def _check_radius(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"IGRP {name} must be a finite number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class IGRPResult(GuaranteeResult):
    """:class:`GuaranteeResult` plus IGRP's two parts.

    Shape: ``margin_in``, ``margin_out (B,)``; ``verified_in``, ``group_verified (B,)`` bool
    (``m_in > 0``, ``m_out > 0``); ``group (B,)`` long (index of ``G(p)``); ``group_classes (B, n)``
    bool (the members of ``G(p)``).
    """

    margin_in: Tensor
    margin_out: Tensor
    verified_in: Tensor
    group_verified: Tensor
    group: Tensor
    group_classes: Tensor


@dataclass(frozen=True)
class IGRPCertificate(Certificate):
    """A :class:`Certificate` for IGRP with both parts exposed.

    The shared fields keep their meaning: ``certified`` iff both parts hold, ``classes = {p}``
    (``k = 1``) where certified, ``margin = min(m_in, m_out)``, and ``eps = eps_in`` is the radius
    at which ``classes`` is certified to stay the top-1 set; the group claim is at ``eps_out``.
    ``radius`` is NaN (no single certified radius).

    Shape: ``margin_in``, ``margin_out (B,)``; ``verified_in``, ``group_verified (B,)`` bool;
    ``group_classes (B, n)`` bool (members of the predicted class's group).
    """

    margin_in: Tensor
    margin_out: Tensor
    verified_in: Tensor
    group_verified: Tensor
    group_classes: Tensor
    eps_in: float
    eps_out: float

    def verified_in_correct(self, labels: Tensor) -> Tensor:
        """``(B,)`` bool: top-1 certified at ``eps_in`` and the prediction is the label."""
        labels = self.check_labels(labels)
        return self.verified_in & (self.pred == labels)

    def group_verified_correct(self, labels: Tensor) -> Tensor:
        """``(B,)`` bool: the predicted group is certified at ``eps_out`` and holds the label."""
        labels = self.check_labels(labels)
        return self.group_verified & self.group_classes.gather(1, labels[:, None])[:, 0]


class IGRP(Guarantee):
    """IGRP(groups, eps_in, eps_out): top-1 at ``eps_in`` and the prediction's group kept at
    ``eps_out`` (module docstring for the math).

    Args:
        groups: a partition of the classes, e.g. ``[[0, 6], [1, 7], [2, 3, 5, 8, 9], [4]]``; it must
            cover every class of the model (checked by :meth:`validate`).
        eps_in: radius inside a group (between similar classes), ``0 <= eps_in <= eps_out``.
        eps_out: radius between groups.
    """

    name = "igrp"
    carries_radii = True

    def __init__(self, groups: Sequence[Sequence[int]], eps_in: float, eps_out: float):
        self.groups = check_partition(groups)
        self.eps_in = _check_radius("eps_in", eps_in)
        self.eps_out = _check_radius("eps_out", eps_out)
        if self.eps_in > self.eps_out:
            raise ValueError(f"IGRP needs eps_in <= eps_out (a small radius inside groups), got eps_in={eps_in} > eps_out={eps_out}")
        self.classes_covered = frozenset(c for g in self.groups for c in g)
        self._group_cache: dict[tuple[torch.device, int], Tensor] = {}

    @property
    def sets(self) -> tuple[tuple[int, ...], ...]:
        """The groups (the name checkpoints and affinity files use for class sets)."""
        return self.groups

    def max_k(self, n_classes: int) -> int:
        return 1

    def validate(self, n_classes: int) -> None:
        super().validate(n_classes)
        bad = sorted(c for c in self.classes_covered if c >= n_classes)
        if bad:
            raise ValueError(f"IGRP groups hold class index {bad[0]}, out of range for {n_classes} classes")
        missing = sorted(set(range(n_classes)) - self.classes_covered)
        if missing:
            raise ValueError(f"IGRP groups must partition the classes: {missing[:10]} are in no group")

    def group_of(self, n_classes: int, device: torch.device | str = "cpu") -> Tensor:
        """``(n,)`` long: the index of each class's group."""
        key = (torch.device(device), n_classes)
        if key not in self._group_cache:
            self.validate(n_classes)
            index = torch.empty(n_classes, dtype=torch.long)
            for position, members in enumerate(self.groups):
                index[list(members)] = position
            self._group_cache[key] = index.to(device)
        return self._group_cache[key]

    def accept(self, order: Tensor) -> Tensor:
        return torch.ones(order.shape[0], 1, dtype=torch.bool, device=order.device)

    def radii(self, eps: float | None = None) -> tuple[float, float]:
        """``(eps_in, eps_out)``. A given ``eps`` is taken as the outer radius and the inner one
        keeps the ratio ``eps_in / eps_out`` (how eps ramp-up schedules scale both radii)."""
        if eps is None or float(eps) == self.eps_out:
            return (self.eps_in, self.eps_out)
        eps = float(eps)
        inner = eps * (self.eps_in / self.eps_out) if self.eps_out > 0 else 0.0
        return (min(inner, eps), eps)

    def requests(self, logits: Tensor, eps: float | None = None) -> list[MarginRequest]:
        """Two requests, rank-0 rows only: at the inner radius, then at the outer radius."""
        order = rank_order(logits)
        accept = self.accept(order)
        return [MarginRequest(eps=r, order=order, accept=accept) for r in self.radii(eps)]

    def evaluate(self, order: Tensor, lowers: Sequence[Tensor]) -> IGRPResult:
        """``m = min(m_in, m_out)`` from rank-form bounds at ``(eps_in, eps_out)`` (differentiable)."""
        if len(lowers) != 2:
            raise ValueError(f"IGRP takes bounds at two radii (eps_in, eps_out), got {len(lowers)}")
        lower_in, lower_out = lowers
        n = order.shape[1]
        margin_in = topk_margins(lower_in[:, :1])[:, 0]  # min_{s >= 1} lower_in[:, 0, s]
        group = self.group_of(n, order.device)
        ranked_group = group[order]  # (B, n): group of the class at rank s
        outside = ranked_group != ranked_group[:, :1]  # (B, n), never rank 0
        row = lower_out[:, 0, :]  # (B, n)
        margin_out = torch.where(outside, row, row.new_full((), math.inf)).amin(dim=1)
        margin = torch.minimum(margin_in, margin_out)
        certified = margin > 0
        k = certified.long()
        pred_group = ranked_group[:, 0]
        return IGRPResult(
            margin=margin,
            certified=certified,
            k=k,
            classes=topk_class_mask(order, k),
            per_k=margin[:, None],
            margin_in=margin_in,
            margin_out=margin_out,
            verified_in=margin_in > 0,
            group_verified=margin_out > 0,
            group=pred_group,
            group_classes=group[None, :] == pred_group[:, None],
        )

    def certificate(self, cert: Certificate, result: GuaranteeResult) -> IGRPCertificate:
        """The :class:`IGRPCertificate` of a plain certificate and this guarantee's result."""
        if not isinstance(result, IGRPResult):
            raise TypeError(f"expected an IGRPResult, got {type(result).__name__}")
        base = {f.name: getattr(cert, f.name) for f in fields(Certificate)}
        base["eps"] = self.eps_in
        return IGRPCertificate(
            **base,
            margin_in=result.margin_in.detach(),
            margin_out=result.margin_out.detach(),
            verified_in=result.verified_in,
            group_verified=result.group_verified,
            group_classes=result.group_classes,
            eps_in=self.eps_in,
            eps_out=self.eps_out,
        )

    def claims(self, cert: Certificate) -> tuple[Claim, Claim]:
        """``"in"``: points with ``m_in > 0`` keep ``p`` on top against every class on the
        ``eps_in`` ball; ``"out"``: points with ``m_out > 0`` keep ``p`` above every class outside
        ``G(p)`` on the ``eps_out`` ball."""
        if not isinstance(cert, IGRPCertificate):
            raise TypeError(f"expected an IGRPCertificate (certify with an IGRP guarantee), got {type(cert).__name__}")
        top1 = torch.nn.functional.one_hot(cert.pred, cert.classes.shape[1]).bool()
        inner = cert.verified_in.nonzero(as_tuple=True)[0]
        outer = cert.group_verified.nonzero(as_tuple=True)[0]
        return (Claim("in", cert.eps_in, inner, top1[inner], ~top1[inner]),
                Claim("out", cert.eps_out, outer, top1[outer], ~cert.group_classes[outer]))

    def candidate_claims(self, order: Tensor, eps: float | None = None) -> tuple[Claim, Claim]:
        """Both claims at every point, at :meth:`radii` ``(eps)``."""
        eps_in, eps_out = self.radii(eps)
        group = self.group_of(order.shape[1], order.device)
        pred = order[:, 0]
        top1 = torch.nn.functional.one_hot(pred, order.shape[1]).bool()
        inside = group[None, :] == group[pred][:, None]
        point = torch.arange(order.shape[0], device=order.device)
        return Claim("in", eps_in, point, top1, ~top1), Claim("out", eps_out, point, top1, ~inside)

    def survivors(self, order: Tensor, claims: Sequence[Claim], survived: Sequence[Tensor]) -> Tensor:
        """``{p}`` where both claims survived, else empty."""
        both = torch.ones(order.shape[0], dtype=torch.bool, device=order.device)
        for claim, alive in zip(claims, survived):
            held = torch.zeros_like(both)
            held[claim.point.to(order.device)] = alive.to(order.device)
            both &= held
        return torch.nn.functional.one_hot(order[:, 0], order.shape[1]).bool() & both[:, None]

    def __repr__(self) -> str:
        return f"IGRP({[list(g) for g in self.groups]}, eps_in={self.eps_in:g}, eps_out={self.eps_out:g})"

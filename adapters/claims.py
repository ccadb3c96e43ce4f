"""Claims: what a guarantee asserts about a ball, in one form for every guarantee.

Every guarantee's statement is "on the ball of radius ``eps`` around ``x``, every class of ``W``
beats every class of ``L``":

    g_{W,L}(x') = min_{j in W} f_j(x') - max_{i in L} f_i(x') > 0   for all ||x' - x|| <= eps.

A top-k certificate with certified set ``T`` claims ``(W, L) = (T, not T)``; IGRP claims
``({p}, not {p})`` at ``eps_in`` and ``({p}, not G(p))`` at ``eps_out``. Attacks minimise
``g_{W,L}`` on the ball; a point of the ball with ``g_{W,L} <= 0`` breaks the claim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Claim", "claim_margin"]


def claim_margin(logits: Tensor, winners: Tensor, losers: Tensor) -> Tensor:
    """``g_{W,L} = min_{j in W} f_j - max_{i in L} f_i`` (``+inf`` when ``L`` is empty).

    Shape: ``(C, n)``, ``(C, n)`` bool, ``(C, n)`` bool -> ``(C,)``.
    """
    big = torch.finfo(logits.dtype).max
    low = torch.where(winners, logits, logits.new_full((), big)).amin(dim=1)
    high = torch.where(losers, logits, logits.new_full((), -float("inf"))).amax(dim=1)
    return low - high


@dataclass(frozen=True)
class Claim:
    """A batch of claims of one kind: row ``c`` claims ``g_{W,L} > 0`` on the ball of radius
    ``eps`` around input ``point[c]`` with ``W = winners[c]``, ``L = losers[c]``.

    Shape: ``point (C,)`` long (indices into the certified batch), ``winners (C, n)`` and
    ``losers (C, n)`` bool, disjoint, ``winners`` never empty. ``name`` tells the kinds of one
    guarantee apart (``"set"``; IGRP's ``"in"`` and ``"out"``).
    """

    name: str
    eps: float
    point: Tensor
    winners: Tensor
    losers: Tensor

    def __post_init__(self) -> None:
        rows = self.point.shape[0]
        if self.winners.shape != self.losers.shape or self.winners.shape[0] != rows:
            raise ValueError(f"claim {self.name!r}: {rows} points, winners {tuple(self.winners.shape)}, "
                             f"losers {tuple(self.losers.shape)}")
        if rows and bool((self.winners & self.losers).any()):
            raise ValueError(f"claim {self.name!r}: a class is both a winner and a loser")
        if rows and bool((~self.winners.any(dim=1)).any()):
            raise ValueError(f"claim {self.name!r}: a claim with no winning class")

    def __len__(self) -> int:
        return int(self.point.shape[0])

    def margin(self, logits: Tensor) -> Tensor:
        """:func:`claim_margin` of these claims on ``logits`` (``(C, n) -> (C,)``)."""
        return claim_margin(logits, self.winners.to(logits.device), self.losers.to(logits.device))

    def holds_for(self, labels: Tensor) -> Tensor:
        """``(C,)`` bool: the label of each claim's point is not a loser (the claim, if it holds,
        keeps the label in the winning side: VRA-style accuracy of this claim)."""
        labels = labels.to(self.losers.device).long()[self.point.to(self.losers.device)]
        return ~self.losers.gather(1, labels[:, None])[:, 0]

    @staticmethod
    def of_sets(name: str, eps: float, point: Tensor, sets: Tensor) -> "Claim":
        """Top-``|T|`` set claims: ``W = T``, ``L`` = every other class."""
        return Claim(name, float(eps), point, sets, ~sets)

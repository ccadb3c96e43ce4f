"""Affinity robustness and superclass affinity (Leino & Fredrikson 2021, supplement B)."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from relaxplug.adapters.base import Guarantee

__all__ = ["Affinity", "Superclass"]


def _normalise_sets(sets: Iterable[Iterable[int]]) -> tuple[tuple[int, ...], ...]:
    out = []
    for position, members in enumerate(sets):
        if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
            raise ValueError(f"affinity set #{position} must be a list of class indices, got {members!r}")
        members = tuple(members)
        for c in members:
            if isinstance(c, bool) or not isinstance(c, int):
                raise ValueError(f"affinity set #{position} holds a non-integer class {c!r}")
            if c < 0:
                raise ValueError(f"affinity set #{position} holds a negative class index {c}")
        if not members:
            raise ValueError(f"affinity set #{position} is empty")
        if len(set(members)) != len(members):
            raise ValueError(f"affinity set #{position} repeats a class: {list(members)}")
        out.append(tuple(sorted(members)))
    if not out:
        raise ValueError("an affinity guarantee needs at least one set")
    return tuple(out)


class Affinity(Guarantee):
    """Affinity robustness: some ``k`` with ``F^k(x) ⊆ S`` for a set ``S`` of the collection keeps
    ``F^k`` on the whole ball (Equation B1: the max of ``m^k`` over such ``k``).

    Every class is also an implicit singleton set, so ``k = 1`` is always acceptable and affinity
    robustness relaxes local robustness.

    Args:
        sets: collection of class-index sets, e.g. ``[[0, 1], [1, 2]]``; sets may overlap.
    """

    name = "affinity"

    def __init__(self, sets: Sequence[Sequence[int]]):
        self.sets = _normalise_sets(sets)
        self._membership_cache: dict[tuple[torch.device, int], Tensor] = {}

    def max_k(self, n_classes: int) -> int:
        return max(len(s) for s in self.sets)

    def validate(self, n_classes: int) -> None:
        super().validate(n_classes)
        for position, members in enumerate(self.sets):
            if len(members) > n_classes:
                raise ValueError(
                    f"affinity set #{position} has {len(members)} classes, more than the "
                    f"model's {n_classes}"
                )
            if len(members) == n_classes:
                raise ValueError(
                    f"{self.name} set #{position} holds every one of the {n_classes} classes: a set of "
                    "every class is a vacuous claim (certifies any point at any radius), as RTK K = n"
                )
            bad = [c for c in members if c >= n_classes]
            if bad:
                raise ValueError(
                    f"affinity set #{position} holds class index {bad[0]}, out of range for "
                    f"{n_classes} classes"
                )

    def membership(self, n_classes: int, device: torch.device) -> Tensor:
        """``(n_sets, n)`` bool: ``M[S, c]`` iff class ``c`` is in set ``S``."""
        key = (torch.device(device), n_classes)
        if key not in self._membership_cache:
            self.validate(n_classes)
            mask = torch.zeros(len(self.sets), n_classes, dtype=torch.bool)
            for row, members in enumerate(self.sets):
                mask[row, list(members)] = True
            self._membership_cache[key] = mask.to(device)
        return self._membership_cache[key]

    def accept(self, order: Tensor) -> Tensor:
        k_max = self.max_k(order.shape[1])
        member = self.membership(order.shape[1], order.device)  # (S, n)
        top = order[:, :k_max]  # (B, K)
        in_set = member[:, top]  # (S, B, K): rank-r class of point b lies in S
        prefix_inside = in_set.long().cumprod(dim=2).bool()  # F^k ⊆ S
        accept = prefix_inside.any(dim=0)  # (B, K)
        accept[:, 0] = True  # implicit singletons
        return accept

    def __repr__(self) -> str:
        return f"{type(self).__name__}({[list(s) for s in self.sets]})"


class Superclass(Affinity):
    """Superclass affinity: affinity robustness whose sets partition the classes (CIFAR-100's
    20 coarse classes by default when built by name as ``superclass:cifar100``)."""

    name = "superclass"

    def __init__(self, partition: Sequence[Sequence[int]]):
        super().__init__(partition)
        seen: dict[int, int] = {}
        for position, members in enumerate(self.sets):
            for c in members:
                if c in seen:
                    raise ValueError(
                        f"superclass partition: class {c} is in both set #{seen[c]} and #{position}"
                    )
                seen[c] = position
        self.classes_covered = frozenset(seen)

    def validate(self, n_classes: int) -> None:
        super().validate(n_classes)
        missing = sorted(set(range(n_classes)) - self.classes_covered)
        if missing:
            raise ValueError(
                f"superclass partition leaves classes {missing[:10]} without a superclass"
            )

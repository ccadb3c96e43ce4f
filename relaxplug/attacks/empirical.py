"""Empirical robustness: attack every claim a guarantee could make at each point.

:func:`attack_guarantee` attacks :meth:`Guarantee.candidate_claims` (for a top-k guarantee,
every acceptable set ``F^k(x)``; for IGRP, both claims) and lets the guarantee give its verdict
on the survivors (:meth:`Guarantee.survivors`). A point counts towards the *empirical robust
accuracy* when it is robust and its label lies in the classes it is robustly assigned to. A sound
certificate's claims always survive, so this is an upper bound of the VRA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from relaxplug.adapters import Guarantee, rank_order, resolve_guarantee
from relaxplug.adapters.claims import Claim
from relaxplug.attacks.claims import attack_claims
from relaxplug.attacks.pgd import batched_logits
from relaxplug.attacks.settings import AttackSettings
from relaxplug.certifiers.certify import check_inputs, resolve_eps
from relaxplug.norms import Norm

__all__ = ["AttackResult", "attack_guarantee", "claim_accuracy"]


def claim_accuracy(claims: Sequence[Claim], held: Sequence[Tensor], labels: Tensor) -> dict[str, float]:
    """Per claim name: the fraction of points with a claim of that name that ``held`` (``(C,)``
    bool per batch) and keeps the label on the winning side (:meth:`Claim.holds_for`)."""
    out: dict[str, Tensor] = {}
    for claim, ok in zip(claims, held):
        good = torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
        good[claim.point.to(labels.device)[(ok.to(labels.device) & claim.holds_for(labels).to(labels.device))]] = True
        out[claim.name] = out[claim.name] | good if claim.name in out else good
    return {name: float(v.float().mean()) if v.numel() else float("nan") for name, v in out.items()}


@dataclass(frozen=True)
class AttackResult:
    """Per-point outcome of :func:`attack_guarantee`.

    Shape: ``order (B, n)`` (clean rank order); ``claims`` the candidate claims and ``worst`` one
    ``(C,)`` tensor per claim batch (smallest ``g_{W,L}`` found, ``<= 0`` where broken);
    ``classes (B, n)`` bool (the guarantee's verdict on the survivors, empty = not robust);
    ``labels (B,)`` or ``None``.
    """

    order: Tensor
    claims: tuple[Claim, ...]
    worst: tuple[Tensor, ...]
    classes: Tensor
    labels: Tensor | None
    guarantee: str
    eps: float
    norm: Norm
    settings: AttackSettings
    seconds: float

    def __len__(self) -> int:
        return int(self.order.shape[0])

    @property
    def pred(self) -> Tensor:
        """``(B,)`` clean top-1 prediction."""
        return self.order[:, 0]

    @property
    def robust(self) -> Tensor:
        """``(B,)`` bool: the guarantee held against every attack (empirically robust)."""
        return self.classes.any(dim=1)

    @property
    def survived_k(self) -> Tensor:
        """``(B,)`` size of the surviving set (0 where not robust)."""
        return self.classes.sum(dim=1)

    def robust_correct(self, labels: Tensor | None = None) -> Tensor:
        """``(B,)`` bool: robust and the label lies in the surviving classes."""
        labels = self.labels if labels is None else labels
        if labels is None:
            raise ValueError("no labels given")
        labels = labels.to(self.classes.device).long()
        return self.classes.gather(1, labels[:, None])[:, 0]

    def robust_accuracy(self, labels: Tensor | None = None) -> float:
        """Empirical robust accuracy: an upper bound of the VRA of any sound certifier."""
        return float(self.robust_correct(labels).float().mean()) if len(self) else float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: robust rate, empirical robust accuracy, surviving set sizes, and
        per claim name (when the guarantee makes several) ``empirical_accuracy_NAME``."""
        sizes, counts = torch.unique(self.survived_k.cpu(), return_counts=True)
        record: dict[str, Any] = {
            "guarantee": self.guarantee,
            "eps": self.eps,
            "norm": self.norm.to_json(),
            "points": len(self),
            "attacked_claims": sum(len(c) for c in self.claims),
            "empirically_robust": float(self.robust.float().mean()) if len(self) else float("nan"),
            "surviving_set_sizes": {int(s): int(c) for s, c in zip(sizes, counts)},
            "attack_seconds": self.seconds,
        }
        if self.labels is not None:
            labels = self.labels.to(self.pred.device)
            record["clean_accuracy"] = float((self.pred == labels).float().mean()) if len(self) else float("nan")
            record["empirical_robust_accuracy"] = self.robust_accuracy()
            if len({c.name for c in self.claims}) > 1:
                held = [w > 0 for w in self.worst]
                for name, value in claim_accuracy(self.claims, held, labels).items():
                    record[f"empirical_accuracy_{name}"] = value
        return record


def attack_guarantee(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    guarantee: str | Guarantee,
    eps: float | None,
    norm: float | str = 2,
    settings: AttackSettings | None = None,
    *,
    sets: Sequence[Sequence[int]] | None = None,
    index_offset: int = 0,
) -> AttackResult:
    """Attack every candidate claim of ``guarantee`` at every point of ``x`` (module docstring).

    Args:
        y: labels ``(B,)`` for the empirical robust accuracy, or ``None``.
        guarantee: a name (``"rtk:3"``) or an adapter; ``sets`` serves a bare ``affinity``.
        eps: the radius (``None`` for a guarantee that carries its own radii).
        index_offset: the data-set index of ``x[0]`` (random starts are seeded per example,
            :func:`relaxplug.attacks.claims.attack_claims`).
    """
    settings = settings or AttackSettings()
    norm = Norm(norm)
    spec = resolve_guarantee(guarantee, sets=sets)
    eps = check_inputs(x, resolve_eps(spec, eps))
    start = time.perf_counter()
    logits = batched_logits(model, x, settings.batch_size)
    spec.validate(logits.shape[1])
    order = rank_order(logits)
    claims = tuple(spec.candidate_claims(order, eps))
    worst = tuple(attack_claims(model, x, claims, norm, settings, index_offset=index_offset))
    classes = spec.survivors(order, claims, [w > 0 for w in worst])
    return AttackResult(
        order=order, claims=claims, worst=worst, classes=classes,
        labels=None if y is None else torch.as_tensor(y).to(logits.device).long(),
        guarantee=repr(spec), eps=eps, norm=norm, settings=settings, seconds=time.perf_counter() - start,
    )

"""``relaxplug attack`` for IGRP: both claims of the two-radius guarantee, attacked and compared.

IGRP(groups, eps_in, eps_out) claims two things per point (``relaxplug.adapters.igrp``): the
prediction ``p`` stays the top-1 class on the ``eps_in`` ball, and the top-1 class stays inside
``G(p)`` on the ``eps_out`` ball. Per point, :func:`attack_igrp` searches

- the ``eps_in`` ball for a point where ``{p}`` is not the top-1 set
  (:func:`relaxplug.attacks.robustness.attack_sets` on the one-hot set of ``p``), and
- the ``eps_out`` ball for a point where some class outside ``G(p)`` beats ``p``
  (:func:`relaxplug.attacks.igrp_metrics.attack_group_claims`).

A claim survives when no such point is found. The empirical figures mirror
:func:`relaxplug.attacks.igrp_metrics.igrp_summary`'s certified ones, and each is an upper bound of its
certified counterpart for a sound certifier:

- empirical accuracy at ``eps_in``: the inner claim survived and ``p = y``;
- empirical group accuracy at ``eps_out``: the outer claim survived and ``y in G(p)``;
- empirical robust accuracy: both survived and ``p = y`` (bounds the IGRP VRA).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from relaxplug.adapters import IGRP, IGRPCertificate, rank_order
from relaxplug.certifiers import Certifier, get_certifier
from relaxplug.certifiers.certify import check_inputs
from relaxplug.attacks.igrp_metrics import _mean, attack_group_claims, check_igrp_certificates
from relaxplug.attacks.robustness import _model_logits, attack_sets, autoattack_accuracy

__all__ = ["IGRP_ATTACK_COLUMNS", "IGRPAttackResult", "attack_igrp", "igrp_attack_report"]

#: table columns of :func:`igrp_attack_report` records
IGRP_ATTACK_COLUMNS = (
    "guarantee", "certifier", "eps_in", "eps_out", "norm", "points", "clean_accuracy",
    "verified_accuracy_in", "empirical_accuracy_in", "group_verified_accuracy_out",
    "empirical_group_accuracy_out", "vra", "empirical_robust_accuracy", "gap", "autoattack_accuracy_in",
    "certified", "attacked", "broken",
)


@dataclass(frozen=True)
class IGRPAttackResult:
    """Per-point outcome of :func:`attack_igrp`.

    Shape: ``pred (B,)`` long; ``group_classes (B, n)`` bool (members of ``G(p)``);
    ``worst_in``, ``worst_out (B,)``: the smallest margin found on each claim's ball (top-1 set
    margin at ``eps_in``; ``f_p - max_{i not in G(p)} f_i`` at ``eps_out``), ``<= 0`` where a real
    counterexample was found.
    """

    pred: Tensor
    group_classes: Tensor
    worst_in: Tensor
    worst_out: Tensor
    seconds: float

    @property
    def survived_in(self) -> Tensor:
        return self.worst_in > 0

    @property
    def survived_out(self) -> Tensor:
        return self.worst_out > 0

    def figures(self, labels: Tensor) -> dict[str, float]:
        """The empirical accuracies of the module docstring."""
        labels = labels.to(self.pred.device).long()
        correct = self.pred == labels
        in_group = self.group_classes.gather(1, labels[:, None])[:, 0]
        return {
            "clean_accuracy": _mean(correct),
            "empirical_accuracy_in": _mean(self.survived_in & correct),
            "empirical_group_accuracy_out": _mean(self.survived_out & in_group),
            "empirical_robust_accuracy": _mean(self.survived_in & self.survived_out & correct),
        }


def attack_igrp(
    model: nn.Module,
    x: Tensor,
    guarantee: IGRP,
    norm: float = 2,
    steps: int = 50,
    restarts: int = 2,
    seed: int = 0,
    batch_size: int = 256,
    targets: int = 3,
) -> IGRPAttackResult:
    """Attack both IGRP claims at every point of ``x`` (module docstring)."""
    if not isinstance(guarantee, IGRP):
        raise TypeError(f"attack_igrp needs an IGRP guarantee, got {guarantee!r}")
    eps_in, eps_out = guarantee.radii(None)
    check_inputs(x, eps_out)
    start = time.perf_counter()
    logits = _model_logits(model, x, batch_size)
    n = logits.shape[1]
    group = guarantee.group_of(n, x.device)  # validates the partition against n
    pred = rank_order(logits)[:, 0]  # ties broken by class index, as certificates do
    group_classes = group[None, :] == group[pred][:, None]  # (B, n)
    top1 = torch.nn.functional.one_hot(pred, n).bool()
    worst_in = attack_sets(model, x, top1, eps_in, norm, steps, restarts, seed, batch_size, targets)
    worst_out = attack_group_claims(model, x, pred, group_classes, eps_out, norm, steps, restarts, targets,
                                    seed, batch_size)
    return IGRPAttackResult(pred=pred, group_classes=group_classes, worst_in=worst_in, worst_out=worst_out,
                            seconds=time.perf_counter() - start)


def igrp_attack_report(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    guarantee: IGRP,
    norm: float,
    certifier: str | Certifier | None = None,
    *,
    steps: int = 50,
    restarts: int = 2,
    targets: int = 3,
    seed: int = 0,
    batch_size: int = 256,
    autoattack: bool = True,
    autoattack_fast: bool = False,
    progress: bool = False,
    **certifier_options: Any,
) -> dict[str, Any]:
    """Certified and empirical IGRP figures side by side, every certified claim attacked.

    With a certifier, a point is *broken* when a claim its certificate makes (``verified_in``
    at ``eps_in``, ``group_verified`` at ``eps_out``) is contradicted by a point found by the
    guarantee attack, by a second attack on the certified claims
    (:func:`relaxplug.attacks.igrp_metrics.check_igrp_certificates`), or, for a correct inner claim, by
    AutoAttack at ``eps_in``. Returns a JSON-ready record (:data:`IGRP_ATTACK_COLUMNS` and more).
    """
    start = time.perf_counter()
    eps_in, eps_out = guarantee.radii(None)
    result = attack_igrp(model, x, guarantee, norm, steps, restarts, seed, batch_size, targets)
    record: dict[str, Any] = {
        "guarantee": repr(guarantee),
        "certifier": "-",
        "eps": eps_out,
        "eps_in": eps_in,
        "eps_out": eps_out,
        "norm": "inf" if norm == float("inf") else f"{norm:g}",
        "points": int(x.shape[0]),
        **result.figures(y),
        "verified_accuracy_in": float("nan"),
        "group_verified_accuracy_out": float("nan"),
        "vra": float("nan"),
        "gap": float("nan"),
        "certified": 0,
        "attacked": 0,
        "broken": 0,
        "broken_points": [],
        "attack_seconds": result.seconds,
    }
    cert: IGRPCertificate | None = None
    broken_in: set[int] = set()
    broken_out: set[int] = set()
    if certifier is not None:
        from relaxplug.evaluation.dataset import certify_dataset
        from relaxplug.attacks.igrp_metrics import igrp_summary

        cert_obj = get_certifier(certifier, **certifier_options)
        cert, _, _ = certify_dataset(model, TensorDataset(x, y), None, norm, cert_obj, guarantee,
                                     batch_size=batch_size, device=x.device, progress=progress)
        cert = cert.to(x.device)
        if not isinstance(cert, IGRPCertificate):
            raise TypeError(f"{cert_obj.name} returned a {type(cert).__name__} for {guarantee!r}")
        # the guarantee attack tried the same claims (same prediction and group) on every point
        broken_in = set((cert.verified_in & ~result.survived_in).nonzero(as_tuple=True)[0].tolist())
        broken_out = set((cert.group_verified & ~result.survived_out).nonzero(as_tuple=True)[0].tolist())
        second = check_igrp_certificates(model, x, cert, steps, restarts, targets, seed + 1, batch_size)
        broken_in |= set(second["in"])
        broken_out |= set(second["out"])
        summary = igrp_summary(cert, y)
        record.update(
            certifier=cert.certifier,
            verified_accuracy_in=summary["verified_accuracy_in"],
            group_verified_accuracy_out=summary["group_verified_accuracy_out"],
            vra=summary["igrp_verified_accuracy"],
            gap=record["empirical_robust_accuracy"] - summary["igrp_verified_accuracy"],
            certified=int(cert.certified.sum()),
            attacked=int(cert.verified_in.sum() + cert.group_verified.sum()),
            certify_seconds=cert.seconds,
        )
    if autoattack:
        aa = autoattack_accuracy(model, x, y, eps_in, norm, fast=autoattack_fast, seed=seed, batch_size=batch_size)
        record["autoattack_accuracy_in"] = aa.accuracy
        record["autoattack_attacks"] = list(aa.attacks)
        if cert is not None:
            claim = cert.verified_in & (cert.pred == y.to(cert.pred.device))
            broken_in |= set((claim & ~aa.robust.to(claim.device)).nonzero(as_tuple=True)[0].tolist())
    broken = sorted(int(i) for i in broken_in | broken_out)
    record.update(broken=len(broken), broken_points=broken, broken_in=sorted(int(i) for i in broken_in),
                  broken_out=sorted(int(i) for i in broken_out), seconds=time.perf_counter() - start)
    return record

"""IGRP metrics and checks: verified accuracy at ``eps_in``, group-verified accuracy at
``eps_out``, per-group figures, and attacks on both parts of IGRP certificates.

For an :class:`relaxplug.adapters.IGRPCertificate` on labelled points:

- *verified accuracy at eps_in*: ``m_in > 0`` and the prediction is the label;
- *group-verified accuracy at eps_out*: ``m_out > 0`` (the predicted group ``G(p)`` is kept on
  the ``eps_out`` ball) and the label lies in ``G(p)``;
- *IGRP-verified accuracy*: both (the certificate's VRA, :meth:`Certificate.vra`);
- *group accuracy*: the label lies in the predicted group (clean).

Per group ``g`` the same figures are computed over the points whose label is in ``g``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from relaxplug.adapters import IGRPCertificate
from relaxplug.attacks.pgd import pgd_set_attack
from relaxplug.certifiers.certify import check_inputs
from relaxplug.attacks.robustness import _into_ball, attack_sets

__all__ = [
    "IGRP_COLUMNS",
    "igrp_summary",
    "per_group",
    "group_margin",
    "attack_group_claims",
    "check_igrp_certificates",
]

#: table columns of :func:`igrp_summary` records
IGRP_COLUMNS = (
    "model", "certifier", "eps_in", "eps_out", "clean_accuracy", "verified_accuracy_in",
    "group_verified_accuracy_out", "igrp_verified_accuracy", "group_accuracy",
)


def _mean(mask: Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else float("nan")


def per_group(cert: IGRPCertificate, labels: Tensor, groups: Sequence[Sequence[int]], class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per group ``g``: over points labelled in ``g``, clean accuracy, verified accuracy at
    ``eps_in``, group-verified accuracy at ``eps_out`` and IGRP-verified accuracy."""
    labels = labels.to(cert.pred.device).long()
    correct = cert.pred == labels
    verified_in = cert.verified_in_correct(labels)
    group_verified = cert.group_verified_correct(labels)
    both = cert.robust_correct(labels)
    rows = []
    for index, members in enumerate(groups):
        mask = torch.zeros_like(labels, dtype=torch.bool)
        for c in members:
            mask |= labels == c
        rows.append({
            "group": index,
            "classes": [str(class_names[c]) if class_names is not None else int(c) for c in members],
            "points": int(mask.sum()),
            "clean_accuracy": _mean(correct[mask]),
            "verified_accuracy_in": _mean(verified_in[mask]),
            "group_verified_accuracy_out": _mean(group_verified[mask]),
            "igrp_verified_accuracy": _mean(both[mask]),
        })
    return rows


def igrp_summary(cert: IGRPCertificate, labels: Tensor, groups: Sequence[Sequence[int]] | None = None,
                 class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """One JSON-ready record of the IGRP figures (module docstring); ``per_group`` when ``groups``
    are given."""
    if not isinstance(cert, IGRPCertificate):
        raise TypeError(f"expected an IGRPCertificate (certify with an IGRP guarantee), got {type(cert).__name__}")
    labels = labels.to(cert.pred.device).long()
    in_group = cert.group_classes.gather(1, labels[:, None])[:, 0]
    record: dict[str, Any] = {
        "guarantee": cert.guarantee,
        "certifier": cert.certifier,
        "eps_in": cert.eps_in,
        "eps_out": cert.eps_out,
        "norm": "inf" if cert.norm == float("inf") else cert.norm,
        "points": len(cert),
        "clean_accuracy": _mean(cert.pred == labels),
        "verified_accuracy_in": _mean(cert.verified_in_correct(labels)),
        "group_verified_accuracy_out": _mean(cert.group_verified_correct(labels)),
        "igrp_verified_accuracy": cert.vra(labels),
        "group_accuracy": _mean(in_group),
        "seconds": cert.seconds,
    }
    if groups is not None:
        record["per_group"] = per_group(cert, labels, groups, class_names)
    return record


# ----------------------------------------------------------------------------- attacks


def group_margin(logits: Tensor, pred: Tensor, group_classes: Tensor) -> Tensor:
    """The outer claim's margin ``min_{i not in G} (f_p - f_i) = f_p - max_{i not in G} f_i``
    (``+inf`` when ``G`` holds every class). Shape: ``(B, n), (B,), (B, n) -> (B,)``."""
    p = logits.gather(1, pred[:, None].long())[:, 0]
    outside = torch.where(group_classes, logits.new_full((), -float("inf")), logits).amax(dim=1)
    return p - outside


class _Masked(nn.Module):
    """``f`` with the logits where ``hide`` is True pushed to the dtype's lowest value, so a set
    attack on ``{p}`` sees only ``p`` and the classes it must beat."""

    def __init__(self, model: nn.Module, hide: Tensor):
        super().__init__()
        self.model = model
        self.hide = hide

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        return torch.where(self.hide, logits.new_full((), torch.finfo(logits.dtype).min / 4), logits)


def attack_group_claims(
    model: nn.Module,
    x: Tensor,
    pred: Tensor,
    group_classes: Tensor,
    eps: float,
    norm: float = 2,
    steps: int = 50,
    restarts: int = 1,
    targets: int = 3,
    seed: int = 0,
    batch_size: int = 256,
) -> Tensor:
    """Smallest outer margin :func:`group_margin` found by PGD on the ``eps`` ball per point.

    Each point is attacked on ``f_p - max_{i not in G} f_i`` and once per target, the ``targets``
    highest clean logits outside ``G``, on ``f_p - f_i``. The value returned is the true margin at
    the best point found after moving it exactly into the closed ball, so ``<= 0`` names a real
    point of the ball whose top-1 class lies outside ``G``.
    Shape: ``x (B, ...)``, ``pred (B,)``, ``group_classes (B, n)`` -> ``(B,)``.
    """
    norm = float("inf") if float(norm) == float("inf") else float(norm)
    check_inputs(x, eps)
    if x.shape[0] == 0:
        return x.new_zeros(0)
    pred = pred.to(x.device).long()
    group_classes = group_classes.to(x.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean = torch.cat([model(x[s:s + batch_size]) for s in range(0, x.shape[0], batch_size)])
        n = clean.shape[1]
        one_hot = torch.nn.functional.one_hot(pred, n).bool()
        runs = [(torch.arange(x.shape[0], device=x.device), group_classes & ~one_hot)]  # untargeted
        outside_rank = torch.where(group_classes, clean.new_full((), -float("inf")), clean).argsort(dim=1, descending=True)
        n_outside = (~group_classes).sum(dim=1)
        for t in range(min(targets, n - 1)):
            rows = (n_outside > t).nonzero(as_tuple=True)[0]
            if rows.numel():
                keep = one_hot[rows].clone()
                keep[torch.arange(rows.numel(), device=x.device), outside_rank[rows, t]] = True
                runs.append((rows, ~keep))  # only p and target i remain
        best = torch.full((x.shape[0],), float("inf"), dtype=clean.dtype, device=x.device)
        for run, (rows, hide) in enumerate(runs):
            for s in range(0, rows.numel(), batch_size):
                part = rows[s:s + batch_size]
                _, x_adv = pgd_set_attack(_Masked(model, hide[s:s + batch_size]), x[part], one_hot[part], eps, norm,
                                          steps, restarts, seed=seed + run)
                x_adv = _into_ball(x[part], x_adv, eps, norm)
                with torch.no_grad():
                    margin = group_margin(model(x_adv), pred[part], group_classes[part])
                best[part] = torch.minimum(best[part], margin)
    finally:
        model.train(was_training)
    return best


def check_igrp_certificates(
    model: nn.Module,
    x: Tensor,
    cert: IGRPCertificate,
    steps: int = 50,
    restarts: int = 1,
    targets: int = 3,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, list[int]]:
    """Attack both parts of IGRP certificates; returns the *broken* points of each part.

    ``"in"``: points with ``verified_in`` whose top-1 class changes somewhere on the ``eps_in``
    ball; ``"out"``: points with ``group_verified`` whose top-1 class leaves ``G(p)`` somewhere on
    the ``eps_out`` ball. Both lists are empty for a sound certifier.
    """
    if not isinstance(cert, IGRPCertificate):
        raise TypeError(f"expected an IGRPCertificate, got {type(cert).__name__}")
    if len(cert) != x.shape[0]:
        raise ValueError(f"certificate covers {len(cert)} points, x has {x.shape[0]}")
    device = x.device
    broken: dict[str, list[int]] = {"in": [], "out": []}
    inner = cert.verified_in.to(device).nonzero(as_tuple=True)[0]
    if inner.numel():
        top1 = torch.nn.functional.one_hot(cert.pred.to(device)[inner], cert.group_classes.shape[1]).bool()
        worst = attack_sets(model, x[inner], top1, cert.eps_in, cert.norm, steps, restarts, seed, batch_size, targets)
        broken["in"] = sorted(int(i) for i in inner[worst <= 0].tolist())
    outer = cert.group_verified.to(device).nonzero(as_tuple=True)[0]
    if outer.numel():
        worst = attack_group_claims(model, x[outer], cert.pred.to(device)[outer], cert.group_classes.to(device)[outer],
                                    cert.eps_out, cert.norm, steps, restarts, targets, seed, batch_size)
        broken["out"] = sorted(int(i) for i in outer[worst <= 0].tolist())
    return broken

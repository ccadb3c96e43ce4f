"""Evaluation metrics of the seeds: clean and top-k accuracy, VRA, rejection rate, set sizes;
IGRP's figures (verified accuracy at ``eps_in``, group-verified accuracy at ``eps_out``, per group).

For an :class:`relaxplug.adapters.IGRPCertificate` on labelled points: *verified accuracy at
eps_in* is ``m_in > 0`` and the prediction is the label; *group-verified accuracy at eps_out* is
``m_out > 0`` and the label lies in ``G(p)``; *IGRP-verified accuracy* both (the certificate's
VRA); *group accuracy* the label lies in the predicted group (clean). Per group ``g`` the same
figures are computed over the points whose label is in ``g``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from relaxplug.adapters import IGRPCertificate
from relaxplug.adapters.certificate import Certificate
from relaxplug.norms import Norm

__all__ = ["IGRP_COLUMNS", "igrp_summary", "mean_of", "per_group", "clean_accuracy", "topk_accuracy", "vra", "rejection_rate", "set_size_histogram", "summarize"]


def clean_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of points whose top-1 prediction is the label."""
    return float((logits.argmax(1) == labels.to(logits.device)).float().mean())


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of points whose label is among the ``k`` largest logits."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return float((top == labels.to(logits.device)[:, None]).any(1).float().mean())


def vra(cert: Certificate, labels: Tensor) -> float:
    """Verified-robust accuracy (seeds, section 6.1): certified and the label in the certified
    set of the loosest certified ``k``."""
    return cert.vra(labels)


def rejection_rate(cert: Certificate) -> float:
    """Fraction of points the certifier rejects (the GloRo net would output bottom)."""
    return float((~cert.certified).float().mean())


def set_size_histogram(cert: Certificate) -> dict[int, int]:
    """``{k: count}`` over certified points (``k = 0`` counts the rejected ones)."""
    sizes, counts = torch.unique(cert.k.cpu(), return_counts=True)
    return {int(s): int(c) for s, c in zip(sizes, counts)}


def summarize(cert: Certificate, logits: Tensor, labels: Tensor, topk: tuple[int, ...] = (1, 3, 5)) -> dict[str, Any]:
    """One record of every metric, JSON-ready."""
    labels = labels.to(logits.device)
    record: dict[str, Any] = {
        "guarantee": cert.guarantee,
        "certifier": cert.certifier,
        "eps": cert.eps,
        "norm": Norm(cert.norm).to_json(),
        "points": len(cert),
        "clean_accuracy": clean_accuracy(logits, labels),
        "vra": vra(cert, labels),
        "rejection_rate": rejection_rate(cert),
        "certified_set_sizes": set_size_histogram(cert),
        "seconds": cert.seconds,
    }
    for k in topk:
        if k < logits.shape[1]:
            record[f"top{k}_accuracy"] = topk_accuracy(logits, labels, k)
    radius = cert.radius[torch.isfinite(cert.radius)]
    if radius.numel():
        record["median_radius"] = float(radius.median())
    if isinstance(cert, IGRPCertificate):  # both parts of IGRP (igrp_summary)
        record["eps_in"], record["eps_out"] = cert.eps_in, cert.eps_out
        record["verified_accuracy_in"] = mean_of(cert.verified_in_correct(labels))
        record["group_verified_accuracy_out"] = mean_of(cert.group_verified_correct(labels))
    return record


#: table columns of :func:`igrp_summary` records
IGRP_COLUMNS = (
    "model", "certifier", "eps_in", "eps_out", "clean_accuracy", "verified_accuracy_in",
    "group_verified_accuracy_out", "igrp_verified_accuracy", "group_accuracy",
)


def mean_of(mask: Tensor) -> float:
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
            "clean_accuracy": mean_of(correct[mask]),
            "verified_accuracy_in": mean_of(verified_in[mask]),
            "group_verified_accuracy_out": mean_of(group_verified[mask]),
            "igrp_verified_accuracy": mean_of(both[mask]),
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
        "norm": Norm(cert.norm).to_json(),
        "points": len(cert),
        "clean_accuracy": mean_of(cert.pred == labels),
        "verified_accuracy_in": mean_of(cert.verified_in_correct(labels)),
        "group_verified_accuracy_out": mean_of(cert.group_verified_correct(labels)),
        "igrp_verified_accuracy": cert.vra(labels),
        "group_accuracy": mean_of(in_group),
        "seconds": cert.seconds,
    }
    if groups is not None:
        record["per_group"] = per_group(cert, labels, groups, class_names)
    return record


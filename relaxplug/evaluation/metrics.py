"""Evaluation metrics of the seeds: clean and top-k accuracy, VRA, rejection rate, set sizes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from relaxplug.adapters import IGRPCertificate
from relaxplug.adapters.certificate import Certificate

__all__ = ["clean_accuracy", "topk_accuracy", "vra", "rejection_rate", "set_size_histogram", "summarize"]


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
        "norm": "inf" if cert.norm == float("inf") else cert.norm,
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
    if isinstance(cert, IGRPCertificate):  # both parts of IGRP (relaxplug.attacks.igrp_metrics)
        record["eps_in"], record["eps_out"] = cert.eps_in, cert.eps_out
        record["verified_accuracy_in"] = float(cert.verified_in_correct(labels).float().mean()) if len(cert) else float("nan")
        record["group_verified_accuracy_out"] = float(cert.group_verified_correct(labels).float().mean()) if len(cert) else float("nan")
    return record

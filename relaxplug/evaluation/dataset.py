"""Certify a whole data set in batches, with a progress bar."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from relaxplug.adapters import Guarantee
from relaxplug.adapters.certificate import Certificate
from relaxplug.certifiers import Certifier, get_certifier
from relaxplug.certifiers.certify import certify
from relaxplug.evaluation.metrics import summarize

__all__ = ["certify_dataset", "evaluate"]


def certify_dataset(
    model: nn.Module,
    dataset: Dataset,
    eps: float,
    norm: float | str = 2,
    certifier: str | Certifier = "gloro",
    guarantee: str | Guarantee = "standard",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    progress: bool = True,
    sets: Sequence[Sequence[int]] | None = None,
    **certifier_options,
) -> tuple[Certificate, Tensor, Tensor]:
    """Certify every point of ``dataset``; returns ``(certificate, logits, labels)``."""
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    cert_obj = get_certifier(certifier, **certifier_options)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    parts, logits, labels = [], [], []
    model = model.to(device).eval()
    for x, y in tqdm(loader, desc=f"certify {cert_obj.name}", disable=not progress, leave=False):
        x = x.to(device)
        parts.append(certify(model, x, eps, norm, cert_obj, guarantee, sets=sets).to("cpu"))
        with torch.no_grad():
            logits.append(model(x).cpu())
        labels.append(torch.as_tensor(y).long())
    if not parts:
        raise ValueError("the data set is empty")
    return Certificate.concat(parts), torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, dataset: Dataset, eps: float, **kwargs: Any) -> dict[str, Any]:
    """Certify ``dataset`` and return :func:`relaxplug.evaluation.metrics.summarize`'s record."""
    cert, logits, labels = certify_dataset(model, dataset, eps, **kwargs)
    return summarize(cert, logits, labels)

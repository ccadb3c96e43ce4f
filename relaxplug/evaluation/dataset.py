"""Certify a whole data set in batches, with a progress bar."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from relaxplug import distributed
from relaxplug.adapters import Guarantee
from relaxplug.adapters.certificate import Certificate
from relaxplug.certifiers import Certifier, get_certifier
from relaxplug.certifiers.certify import certify
from relaxplug.distributed import DistributedContext
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
    context: DistributedContext | None = None,
    **certifier_options,
) -> tuple[Certificate, Tensor, Tensor] | None:
    """Certify every point of ``dataset``; returns ``(certificate, logits, labels)``.

    With a distributed ``context`` (torchrun, ``docs/distributed.md``) each rank certifies its
    block of whole batches (the batches of a one-process run) and rank 0 returns the gathered
    results in data-set order; the other ranks return ``None``.
    """
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    if context is not None and context.distributed:
        if len(dataset) == 0:
            raise ValueError("the data set is empty")
        shard = distributed.shard_range(len(dataset), context, batch_size)
        mine = _certify_batches(model, Subset(dataset, shard), eps, norm, certifier, guarantee, batch_size, device,
                                progress and context.is_main, sets, certifier_options) if len(shard) else None
        parts = distributed.gather_to_main(mine, context)
        if parts is None:
            return None
        parts = [part for part in parts if part is not None]
        return (Certificate.concat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                torch.cat([p[2] for p in parts]))
    return _certify_batches(model, dataset, eps, norm, certifier, guarantee, batch_size, device, progress, sets,
                            certifier_options)


def _certify_batches(model: nn.Module, dataset: Dataset, eps, norm, certifier, guarantee, batch_size: int, device,
                     progress: bool, sets, certifier_options: dict) -> tuple[Certificate, Tensor, Tensor]:
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

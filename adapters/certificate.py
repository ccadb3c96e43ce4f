"""The per-point certificate every certifier returns."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

__all__ = ["Certificate"]


@dataclass(frozen=True)
class Certificate:
    """Outcome of certifying a batch.

    Shape: ``pred (B,)`` long, ``certified (B,)`` bool, ``k (B,)`` long (loosest certified top-k,
    0 where rejected), ``classes (B, n)`` bool (the certified set ``F^k(x)``), ``margin (B,)``
    (``m(x)``, positive iff certified), ``radius (B,)`` (largest certified radius, NaN where the
    certifier does not compute one).
    """

    pred: Tensor
    certified: Tensor
    k: Tensor
    classes: Tensor
    margin: Tensor
    radius: Tensor
    guarantee: str
    certifier: str
    eps: float
    norm: float
    seconds: float

    def __len__(self) -> int:
        return int(self.pred.shape[0])

    def check_labels(self, labels: Tensor) -> Tensor:
        """``labels`` as a ``(B,)`` long tensor on the certificate's device; ``ValueError`` when
        their count differs from the points' or a label is not a class index ``0..n-1``."""
        try:
            labels = torch.as_tensor(labels).to(self.classes.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"labels must be integer class indices: {error}") from None
        if labels.dtype == torch.bool or labels.is_complex():
            raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
        if labels.ndim != 1 or labels.shape[0] != len(self):
            raise ValueError(f"labels must have shape ({len(self)},), got {tuple(labels.shape)}")
        if labels.is_floating_point() and bool((labels != labels.round()).any()):
            raise ValueError("labels must be integer class indices")
        labels = labels.long()
        n = self.classes.shape[1]
        bad = (labels < 0) | (labels >= n)
        if bool(bad.any()):
            raise ValueError(f"label {int(labels[bad][0])} is out of range for {n} classes")
        return labels

    def robust_correct(self, labels: Tensor) -> Tensor:
        """``(B,)`` bool: certified and the label lies in the certified set (the seeds' VRA)."""
        labels = self.check_labels(labels)
        inside = self.classes.gather(1, labels[:, None])[:, 0]
        return self.certified & inside

    def vra(self, labels: Tensor) -> float:
        """Verified-robust accuracy: fraction certified with the label in the certified set."""
        return float(self.robust_correct(labels).float().mean()) if len(self) else float("nan")

    def to(self, device: torch.device | str) -> "Certificate":
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)

    @staticmethod
    def concat(parts: list["Certificate"]) -> "Certificate":
        """Join certificates of consecutive chunks of one batch (times are added)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        tensors = {
            f.name: torch.cat([getattr(p, f.name) for p in parts])
            for f in fields(first)
            if isinstance(getattr(first, f.name), Tensor)
        }
        return replace(first, seconds=sum(p.seconds for p in parts), **tensors)

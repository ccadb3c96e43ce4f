"""Standard local robustness: only ``k = 1`` is acceptable (the top-1 prediction is kept)."""

from __future__ import annotations

import torch
from torch import Tensor

from relaxplug.adapters.base import Guarantee

__all__ = ["Standard"]


class Standard(Guarantee):
    """Top-1 (local) robustness: certified iff ``m^1(x) > 0``."""

    name = "standard"

    def max_k(self, n_classes: int) -> int:
        return 1

    def accept(self, order: Tensor) -> Tensor:
        return torch.ones(order.shape[0], 1, dtype=torch.bool, device=order.device)

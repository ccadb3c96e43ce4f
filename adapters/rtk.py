"""Relaxed top-K (RTK) robustness (Leino & Fredrikson 2021, Definition 3)."""

from __future__ import annotations

import torch
from torch import Tensor

from relaxplug.adapters.base import Guarantee

__all__ = ["RTK"]


class RTK(Guarantee):
    """RTK robustness: some ``k <= K`` has ``F^k(x') = F^k(x)`` on the whole ball, i.e.
    ``m(x) = max_{k <= K} m^k(x)`` (Equation 1 of the paper) is positive.

    Args:
        K: the largest acceptable top-k set, ``1 <= K < n_classes``. ``RTK(1)`` is standard
            robustness.
    """

    name = "rtk"

    def __init__(self, K: int):
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"RTK needs an integer K >= 1, got {K!r}")
        self.K = K

    def max_k(self, n_classes: int) -> int:
        return self.K

    def validate(self, n_classes: int) -> None:
        super().validate(n_classes)
        if self.K >= n_classes:
            raise ValueError(
                f"RTK K={self.K} must be smaller than the number of classes ({n_classes}); "
                "a top-n set is every class and certifies nothing"
            )

    def accept(self, order: Tensor) -> Tensor:
        return torch.ones(order.shape[0], self.K, dtype=torch.bool, device=order.device)

    def __repr__(self) -> str:
        return f"RTK({self.K})"

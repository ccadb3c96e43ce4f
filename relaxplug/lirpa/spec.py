"""Spec rows: which margins ``f_j - f_i`` a request needs, as auto_LiRPA spec matrices ``C``.

Each row of ``C`` is ``e_{o_r} - e_{o_s}`` for a candidate rank ``r`` and an opponent rank ``s > r``
(``o`` the ranking of the clean logits); only the rows a request needs are built
(``MarginRequest.needed_rows``: at most ``K n - K(K+1)/2`` per point).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from relaxplug.adapters import MarginRequest

__all__ = ["SpecRows", "spec_matrix", "spec_rows"]


@dataclass(frozen=True)
class SpecRows:
    """The pairs a request needs, per point: row ``t`` of point ``b`` bounds
    ``f_{o_r} - f_{o_s}`` with ``r = rank_row[b, t]``, ``s = rank_col[b, t]``; rows with
    ``valid[b, t] = False`` pad the batch to a common row count and are ignored.

    Shape: all ``(B, R)`` with ``R`` the largest per-point count of needed pairs.
    """

    rank_row: Tensor
    rank_col: Tensor
    valid: Tensor

    @property
    def rows(self) -> int:
        return int(self.rank_row.shape[1])


def spec_rows(request: MarginRequest, n_classes: int) -> SpecRows:
    """Needed pairs ``(r, s)``: ``s > r`` and ``request.needed_rows()[b, r]``, compacted per point."""
    needed = request.needed_rows()
    k = request.n_candidates
    device = needed.device
    r, s = torch.triu_indices(k, n_classes, offset=1, device=device)  # every r < K, s > r
    valid = needed[:, r]  # (B, P)
    if valid.shape[0] == 0:
        empty = torch.zeros(0, 0, dtype=torch.long, device=device)
        return SpecRows(empty, empty, empty.bool())
    width = int(valid.sum(dim=1).max())
    # needed pairs first, in (r, s) order; then padding
    perm = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :width]
    return SpecRows(r[perm], s[perm], valid.gather(1, perm))


def spec_matrix(order: Tensor, rows: SpecRows, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    """``(B, stop - start, n)`` spec matrix of rows ``start:stop``: ``e_{o_r} - e_{o_s}``, zero rows
    for padding."""
    batch, n = order.shape
    j = order.gather(1, rows.rank_row[:, start:stop])
    i = order.gather(1, rows.rank_col[:, start:stop])
    value = rows.valid[:, start:stop].to(dtype)[..., None]
    c = torch.zeros(batch, stop - start, n, dtype=dtype, device=order.device)
    c.scatter_(2, j[..., None], value)
    c.scatter_(2, i[..., None], -value)
    return c

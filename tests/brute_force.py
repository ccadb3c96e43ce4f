"""Reference answers computed from the definitions, with plain Python loops.

For a linear model ``f(x) = W x + b`` the exact minimum of ``f_j - f_i`` over the L2 ball of
radius ``eps`` is ``f_j(x) - f_i(x) - eps ||w_j - w_i||_2`` (and ``eps ||w_j - w_i||_1`` for
the L-inf ball), so top-k robustness is decided exactly.
"""

from __future__ import annotations

import itertools

import torch


def ranked(logits: list[float]) -> list[int]:
    return sorted(range(len(logits)), key=lambda c: (-logits[c], c))


def acceptable(kind: str, k: int, top: list[int], K: int = 1, sets=()) -> bool:
    if kind == "standard":
        return k == 1
    if kind == "rtk":
        return k <= K
    if kind == "affinity":
        return k == 1 or any(set(top) <= set(s) for s in sets)
    raise ValueError(kind)


def certify_linear(W, b, x, eps, kind, K=1, sets=(), dual_norm=2):
    """Returns (certified, loosest k, certified set, margin) from the definition."""
    n = len(W)
    logits = [sum(wi * xi for wi, xi in zip(W[c], x)) + b[c] for c in range(n)]
    order = ranked(logits)
    best_margin = None
    best = (False, 0, set())
    for k in range(1, n):
        top = order[:k]
        if not acceptable(kind, k, top, K, sets):
            continue
        worst = min(
            logits[j] - logits[i] - eps * _norm([a - c for a, c in zip(W[j], W[i])], dual_norm)
            for j in top
            for i in range(n)
            if i not in top
        )
        best_margin = worst if best_margin is None else max(best_margin, worst)
        if worst > 0:
            best = (True, k, set(top))
    return best[0], best[1], best[2], best_margin


def _norm(v, p):
    if p == 2:
        return sum(a * a for a in v) ** 0.5
    if p == 1:
        return sum(abs(a) for a in v)
    raise ValueError(p)


def all_affinity_collections(n: int):
    """A few collections of sets over n classes, overlapping ones included."""
    classes = list(range(n))
    pairs = list(itertools.combinations(classes, 2))
    yield [list(p) for p in pairs[:2]]
    yield [classes[: n // 2], classes[n // 2 :]]
    yield [[0, 1, 2], [2, 3]] if n >= 4 else [[0, 1]]


def full_sort_order(logits):
    """Rank order by a stable sort of all ``n`` logits (the reference for the top-K selection)."""
    return torch.sort(logits, dim=1, descending=True, stable=True).indices


def topk_margins_by_suffix_scan(lower):
    """The reference: suffix minima over all ``n`` columns (padded with +inf), then prefix minima."""
    batch, k_max, _ = lower.shape
    padded = torch.cat([lower, lower.new_full((batch, k_max, 1), float("inf"))], dim=2)
    suffix = padded.flip(2).cummin(dim=2).values.flip(2)[:, :, 1 : k_max + 1]
    return torch.diagonal(suffix.cummin(dim=1).values, dim1=1, dim2=2)

"""EMMA (Hu et al. 2024) and logit annealing (LA; Lai et al., ICML 2025), composed with every
guarantee.

Standard EMMA. For label ``y``, opponent ``i`` and ``K_yi`` the Lipschitz constant of
``f_y - f_i``, the adaptive radius is ``eps_yi = eps * clip((f_y - f_i) / (eps K_yi), floor, 1)``,
*detached* (the radius at which ``i`` would catch up with ``y``, capped at ``eps``), and the loss
is the cross-entropy of the logits ``f_i + eps_yi K_yi`` (``i != y``) and ``f_y`` against ``y``:

    EMMA = log(1 + sum_{i != y} exp(-l_yi)),   l_ji = f_j - f_i - eps_ji K_ji.

Relaxed guarantees (derived from Equation B1, ``docs/sota.md``). A guarantee certifies with
``m = max over acceptable k of m^k``, ``m^k = min_{j in F^k, i not in F^k} l_ji``. EMMA's loss is
``softplus(-smin_i l_yi)`` with ``smin`` the soft minimum ``-log sum exp(-.)``, i.e. ``m^1`` with
its hard minimum made soft, for the top-1 set ``{y}``. The generalization keeps B1's structure:

1. Rank the classes *label first* (``y``, then the others by decreasing logit, ties by index),
   so every candidate set ``F^k`` contains the label (for ``k > rank(y)`` it is the actual
   top-k set; otherwise the set the loss pushes the label into). Acceptability is the
   guarantee's own (``Guarantee.accept`` on that order).
2. Every pair ``(j, i)``, ``j in F^k``, ``i not in F^k``, gets its own adaptive radius
   ``eps_ji`` (detached) and term ``l_ji``; ``m^k_soft = smin_{j, i} l_ji``.
3. ``k* = argmax`` over acceptable ``k`` of ``m^k_soft`` (the max of B1; gradients reach the
   selected set only, as through a max), and the loss reads the *robust logits*
   ``[0, -l_ji for the pairs of F^{k*}]`` with target index 0: cross-entropy gives
   ``softplus(-m^{k*}_soft)`` (EMMA), the annealed cross-entropy gives LA.

For the standard guarantee ``k* = 1`` and ``F^1 = {y}``: exactly EMMA (and exactly LA on EMMA's
logits). Guarantees with several radii (IGRP) accept only ``k = 1``; each opponent then takes
the largest radius at which the guarantee reads its pair (found by probing the guarantee's own
``evaluate``), e.g. ``eps_out`` for classes outside the label's group and ``eps_in`` inside it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from relaxplug.adapters import Guarantee
from relaxplug.certifiers.gloro import rank_pairs

__all__ = [
    "label_first_order",
    "emma_pair_bounds",
    "pair_radii",
    "robust_logits",
    "emma_loss",
    "annealed_cross_entropy",
    "logit_annealing_loss",
    "MARGIN_LOSSES",
]

#: losses of this module by name (the ``loss`` of a GloRo training config)
MARGIN_LOSSES = ("emma", "la")

#: smallest adaptive radius, as a fraction of the guarantee's radius (EMMA's 0.01)
EMMA_FLOOR = 0.01


def label_first_order(logits: Tensor, labels: Tensor) -> Tensor:
    """The label, then the other classes by decreasing logit (ties by class index). ``(B, n)``."""
    batch, n = logits.shape
    labels = labels.long()
    order = torch.sort(logits.detach(), dim=1, descending=True, stable=True).indices
    rest = order[order != labels[:, None]].reshape(batch, n - 1)
    return torch.cat([labels[:, None], rest], dim=1)


def emma_pair_bounds(logits: Tensor, order: Tensor, pair_lipschitz: Tensor, radius: Tensor | float, n_candidates: int, floor: float = EMMA_FLOOR) -> Tensor:
    """Rank-form ``l[b, r, s] = gap_rs - eps_rs K_rs`` with the adaptive radius
    ``eps_rs = R_rs * clip(gap_rs / (R_rs K_rs), floor, 1)`` (detached) for ranks ``r < K``.

    Args:
        logits: ``(B, n)``; order: ``(B, n)``; pair_lipschitz: ``(n, n)`` ``K_ji``.
        radius: the guarantee's radius ``R``, a number or ``(B, K, n)`` per pair (0: radius 0).
    Returns: ``(B, K, n)``; entries ``s <= r`` are meaningless.
    """
    ranked = logits.gather(1, order)  # (B, n)
    gaps = ranked[:, :n_candidates, None] - ranked[:, None, :]  # (B, K, n)
    lipschitz = rank_pairs(pair_lipschitz, order, n_candidates)  # (B, K, n)
    radius_t = torch.as_tensor(radius, dtype=gaps.dtype, device=gaps.device)
    full = radius_t * lipschitz
    tiny = torch.finfo(gaps.dtype).tiny
    fraction = (gaps / full.clamp_min(tiny)).clamp(floor, 1.0)
    adaptive = (fraction * radius_t).detach()
    return gaps - adaptive * lipschitz


def pair_radii(guarantee: Guarantee, order: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """For a guarantee of several radii that accepts only ``k = 1``: which rank-0 pairs its
    ``evaluate`` reads, and the largest radius each is read at.

    Probes ``evaluate`` with one pair at a time set negative (all others positive): the margin
    turns non-positive iff that pair is one the guarantee's minimum reads. Returns
    ``(needed (B, n) bool, radius (B, n))``.
    """
    radii = guarantee.radii(eps)
    batch, n = order.shape
    device = order.device
    probe_order = order.repeat_interleave(n, dim=0)  # row b*n + s probes pair (0, s) of point b
    rows = torch.arange(batch * n, device=device)
    cols = rows % n
    needed = torch.zeros(batch, n, dtype=torch.bool, device=device)
    radius = torch.zeros(batch, n, dtype=torch.float64, device=device)
    with torch.no_grad():
        for t, r in enumerate(radii):
            lowers = [torch.ones(batch * n, 1, n, dtype=torch.float64, device=device) for _ in radii]
            lowers[t][rows, 0, cols] = -1.0
            hit = (guarantee.evaluate(probe_order, lowers).margin <= 0).reshape(batch, n)
            hit[:, 0] = False
            needed |= hit
            radius = torch.where(hit, radius.clamp_min(float(r)), radius)
    return needed, radius


def robust_logits(logits: Tensor, labels: Tensor, pair_lipschitz: Tensor, eps: float, guarantee: Guarantee, floor: float = EMMA_FLOOR) -> Tensor:
    """``[0, -l_ji for the pairs of the selected set]`` (module docstring), ``-inf`` elsewhere.

    Shape: ``(B, n)`` logits, ``(B,)`` labels -> ``(B, 1 + P)``; the target is index 0.
    """
    batch, n = logits.shape
    order = label_first_order(logits, labels)
    radii = guarantee.radii(eps)
    neg_inf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    if len(radii) == 1:
        k_max = guarantee.max_k(n)
        accept = guarantee.accept(order)  # (B, K)
        terms = -emma_pair_bounds(logits, order, pair_lipschitz, float(radii[0]), k_max, floor)  # (B, K, n)
        ranks_r = torch.arange(k_max, device=logits.device)
        ranks_s = torch.arange(n, device=logits.device)
        ks = torch.arange(1, k_max + 1, device=logits.device)
        # pairs[k-1, r, s]: r < k <= s, the pairs of F^k
        pairs = (ranks_r[None, :, None] < ks[:, None, None]) & (ranks_s[None, None, :] >= ks[:, None, None])
        masked = torch.where(pairs[None], terms[:, None], neg_inf)  # (B, K sets, K, n)
        soft_margin = -torch.logsumexp(masked.flatten(2), dim=2)  # (B, K)
        choice = torch.where(accept, soft_margin.detach(), neg_inf).argmax(dim=1)  # (B,)
        selected = torch.where(pairs[choice], terms, neg_inf).flatten(1)  # (B, K n)
    else:
        if guarantee.max_k(n) != 1:
            raise ValueError(f"EMMA/LA for {guarantee!r}: a guarantee of several radii must accept only k = 1")
        needed, radius = pair_radii(guarantee, order, eps)
        terms = -emma_pair_bounds(logits, order, pair_lipschitz, radius[:, None].to(logits.dtype), 1, floor)[:, 0]
        selected = torch.where(needed, terms, neg_inf)  # (B, n)
    return torch.cat([logits.new_zeros(batch, 1), selected], dim=1)


def emma_loss(logits: Tensor, labels: Tensor, pair_lipschitz: Tensor, eps: float, guarantee: Guarantee, floor: float = EMMA_FLOOR) -> Tensor:
    """EMMA for ``guarantee``: cross-entropy of :func:`robust_logits` against index 0 (mean)."""
    robust = robust_logits(logits, labels, pair_lipschitz, eps, guarantee, floor)
    return F.cross_entropy(robust, robust.new_zeros(robust.shape[0], dtype=torch.long))


def annealed_cross_entropy(logits: Tensor, target: Tensor, temperature: float = 0.75, offset: float = 2.0, gamma: float = 5.0) -> Tensor:
    """LA's annealed cross-entropy (mean): ``T (1 - p_t)^gamma CE((z - offset e_t) / T, t)`` with
    ``p_t = exp(-CE)``: the target logit is lowered by ``offset`` and points already well
    separated (``p_t`` near 1) are annealed away."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    shifted = logits - offset * F.one_hot(target, logits.shape[1]).to(logits.dtype)
    ce = F.cross_entropy(shifted / temperature, target, reduction="none")
    p_t = torch.exp(-ce)
    return ((1 - p_t) ** gamma * ce * temperature).mean()


def logit_annealing_loss(
    logits: Tensor,
    labels: Tensor,
    pair_lipschitz: Tensor,
    eps: float,
    guarantee: Guarantee,
    temperature: float = 0.75,
    offset: float = 2.0,
    gamma: float = 5.0,
    floor: float = EMMA_FLOOR,
) -> Tensor:
    """LA with EMMA's adaptive radii (BRONet's default): :func:`annealed_cross_entropy` of
    :func:`robust_logits` against index 0."""
    robust = robust_logits(logits, labels, pair_lipschitz, eps, guarantee, floor)
    target = robust.new_zeros(robust.shape[0], dtype=torch.long)
    return annealed_cross_entropy(robust, target, temperature, offset, gamma)

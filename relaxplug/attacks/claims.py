"""Attack claims and check certificates: one code path for every guarantee.

:func:`attack_claims` returns, per claim, the smallest ``g_{W,L}`` PGD finds on its ball; a value
``<= 0`` is verified (recomputed at the counterexample after moving it exactly into the closed
ball), so it names a real point where the claim fails. :func:`check_certificates` attacks what a
certificate asserts (:meth:`relaxplug.adapters.Guarantee.claims`) and returns the broken points.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from relaxplug.adapters import Guarantee
from relaxplug.adapters.certificate import Certificate
from relaxplug.adapters.claims import Claim, claim_margin
from relaxplug.attacks.pgd import batched_logits, into_ball, pgd_claim_attack, row_seeds
from relaxplug.attacks.settings import AttackSettings
from relaxplug.modes import eval_mode
from relaxplug.norms import Norm

__all__ = ["attack_claims", "check_certificates", "ClaimCheck"]


def _runs(clean: Tensor, winners: Tensor, losers: Tensor, targets: int,
          pair_winner: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The rows PGD attacks for claims ``(W, L)``: ``(claim row (R,), W' (R, n), L' (R, n))``.

    Every claim once on ``g_{W,L}`` itself, and per *target* (its ``targets`` highest clean
    losers ``i``) on ``min_W f - f_i`` and, when ``|W| > 1``, on ``f_j - f_i`` for one winner
    ``j``: ``pair_winner(claim rows, targets)`` (default: the lowest clean winner). As
    AutoAttack's targeted runs complement its untargeted one, descent on a single pair cannot
    stall where the min/max of ``g_{W,L}`` does (e.g. on a linear model)."""
    rows = torch.arange(clean.shape[0], device=clean.device)
    out_rows, out_w, out_l = [rows], [winners], [losers]
    if targets > 0:
        low = torch.finfo(clean.dtype).min
        by_loser = torch.where(losers, clean, clean.new_full((), low)).argsort(dim=1, descending=True, stable=True)
        weakest = torch.where(winners, clean, clean.new_full((), torch.finfo(clean.dtype).max)).argmin(dim=1)
        several = winners.sum(dim=1) > 1
        n_losers = losers.sum(dim=1)
        for t in range(min(targets, clean.shape[1] - 1)):
            row = rows[n_losers > t]
            target = torch.nn.functional.one_hot(by_loser[row, t], clean.shape[1]).bool()
            out_rows.append(row)
            out_w.append(winners[row])
            out_l.append(target)
            pair = row[several[row]]
            if pair.numel():
                j = weakest[pair] if pair_winner is None else pair_winner(pair, by_loser[pair, t])
                out_rows.append(pair)
                out_w.append(torch.nn.functional.one_hot(j, clean.shape[1]).bool())
                out_l.append(target[several[row]])
    return torch.cat(out_rows), torch.cat(out_w), torch.cat(out_l)


def _input_gradients(model: nn.Module, x: Tensor, classes: Tensor, batch_size: int) -> Tensor:
    """``(R, d)``: the gradient of logit ``classes[r]`` at ``x[r]``, per row (eval mode)."""
    parts = []
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            part = x[start:start + batch_size].detach().requires_grad_(True)
            logit = model(part).gather(1, classes[start:start + batch_size, None])
            (grad,) = torch.autograd.grad(logit.sum(), part)
            parts.append(grad.flatten(1))
    return torch.cat(parts)


def _closest_winner(model: nn.Module, xs: Tensor, clean: Tensor, winners: Tensor, norm: Norm,
                    batch_size: int) -> Callable[[Tensor, Tensor], Tensor]:
    """``pair_winner`` of :func:`_runs`: per claim row and target ``i``, the winner ``j`` whose pair the
    first-order model at the clean point flips at the smallest radius,
    ``argmin_j (f_j - f_i) / ||grad f_j - grad f_i||_*`` (dual norm; exact for a linear model, where the
    lowest winner need not be the one that falls first)."""
    dual = 1.0 if norm == math.inf else 2.0

    def choose(rows: Tensor, target: Tensor) -> Tensor:
        x, clean_rows, mask = xs[rows], clean[rows], winners[rows]
        slots = int(mask.sum(dim=1).max())
        ranked = torch.where(mask, clean_rows, clean_rows.new_full((), -math.inf)).argsort(dim=1, descending=True)
        toward = _input_gradients(model, x, target, batch_size)
        best = torch.full((rows.numel(),), math.inf, dtype=clean.dtype, device=clean.device)
        choice = ranked[:, 0].clone()
        for slot in range(slots):
            j = ranked[:, slot]
            gap = clean_rows.gather(1, j[:, None])[:, 0] - clean_rows.gather(1, target[:, None])[:, 0]
            size = (_input_gradients(model, x, j, batch_size) - toward).norm(p=dual, dim=1)
            radius = gap / size.clamp_min(torch.finfo(size.dtype).tiny)
            better = mask.gather(1, j[:, None])[:, 0] & (radius < best)
            best = torch.where(better, radius, best)
            choice = torch.where(better, j, choice)
        return choice

    return choose


def _occurrence(keys: Tensor) -> Tensor:
    """``(R,)``: how many earlier entries of ``keys`` ``(R,)`` hold the same value."""
    order = torch.argsort(keys, stable=True)
    ordered = keys[order]
    position = torch.arange(keys.numel())
    first = torch.ones(keys.numel(), dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    group_start = torch.cummax(torch.where(first, position, torch.zeros_like(position)), dim=0).values
    out = torch.empty_like(position)
    out[order] = position - group_start
    return out


def _attack_batch(model: nn.Module, x: Tensor, claim: Claim, norm: Norm, settings: AttackSettings, seed: int,
                  index_offset: int = 0) -> Tensor:
    """Smallest verified ``g_{W,L}`` found per row of one claim batch: ``(C,)``.

    Each PGD run draws its random starts from its own seed: ``seed`` hashed with the data-set index
    of its point (``index_offset + point``), the claim's rank among that point's claims and the
    run's rank among that claim's runs, so a point is attacked alike in any batch or process."""
    if len(claim) == 0:
        return x.new_zeros(0)
    xs = x[claim.point.to(x.device)]
    winners, losers = claim.winners.to(x.device), claim.losers.to(x.device)
    clean = batched_logits(model, xs, settings.batch_size)
    rows, run_w, run_l = _runs(clean, winners, losers, settings.targets,
                               _closest_winner(model, xs, clean, winners, norm, settings.batch_size))
    point = claim.point.cpu().long()
    rows_cpu = rows.cpu()
    seeds = row_seeds(seed, index_offset + point[rows_cpu], _occurrence(point)[rows_cpu], _occurrence(rows_cpu))
    worst = torch.empty(rows.numel(), dtype=clean.dtype, device=x.device)
    chunks = tqdm(range(0, rows.numel(), settings.batch_size), desc=f"attack claim {claim.name!r} (eps={claim.eps:g})",
                  unit="batch", disable=not settings.progress, leave=False)
    for start in chunks:
        part = slice(start, start + settings.batch_size)
        r = rows[part]
        _, x_adv = pgd_claim_attack(model, xs[r], run_w[part], run_l[part], claim.eps, norm, settings.steps,
                                    settings.restarts, settings.step_size, seeds[part])
        x_adv = into_ball(xs[r], x_adv, claim.eps, norm)
        with eval_mode(model), torch.no_grad():
            worst[part] = claim_margin(model(x_adv), winners[r], losers[r])
    best = torch.full((len(claim),), float("inf"), dtype=clean.dtype, device=x.device)
    return best.scatter_reduce(0, rows, worst, reduce="amin")


def attack_claims(
    model: nn.Module,
    x: Tensor,
    claims: Sequence[Claim],
    norm: float | str,
    settings: AttackSettings | None = None,
    *,
    index_offset: int = 0,
) -> list[Tensor]:
    """Attack every claim: one ``(C,)`` tensor per claim batch, the smallest verified ``g_{W,L}``
    found on its ball (``<= 0``: broken at a real point of the closed ball).

    ``index_offset`` is the data-set index of ``x[0]``: random starts are seeded per example by its
    data-set index (and per claim batch), not by its position in ``x``."""
    settings = settings or AttackSettings()
    norm = Norm(norm)
    return [_attack_batch(model, x, claim, norm, settings, settings.seed + 1000 * index, index_offset)
            for index, claim in enumerate(claims)]


class ClaimCheck(dict):
    """``{claim name: sorted broken point indices}`` of :func:`check_certificates`; ``points``
    is the sorted union (empty for a sound certifier)."""

    @property
    def points(self) -> list[int]:
        return sorted(set().union(*self.values())) if self else []


def check_certificates(
    model: nn.Module,
    x: Tensor,
    cert: Certificate,
    guarantee: Guarantee | None = None,
    settings: AttackSettings | None = None,
) -> ClaimCheck:
    """Attack every claim ``cert`` makes (:meth:`Guarantee.claims`; ``guarantee=None`` reads
    the certified top-k sets, as the base class does) in ``cert.norm``.

    Returns:
        a :class:`ClaimCheck`: per claim name, the points where a point of the closed ball
        breaks the claim.
    """
    if len(cert) != x.shape[0]:
        raise ValueError(f"certificate covers {len(cert)} points, x has {x.shape[0]}")
    if guarantee is None and type(cert) is not Certificate:
        raise TypeError(f"a {type(cert).__name__} carries claims of its own guarantee: pass the guarantee "
                        f"({cert.guarantee}) to check them")
    claims = (guarantee or Guarantee()).claims(cert.to(x.device))
    worst = attack_claims(model, x, claims, cert.norm, settings)
    check = ClaimCheck()
    for claim, margin in zip(claims, worst):
        broken = claim.point[margin <= 0].tolist()
        check[claim.name] = sorted(set(check.get(claim.name, [])) | {int(i) for i in broken})
    return check

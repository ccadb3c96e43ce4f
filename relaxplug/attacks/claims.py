"""Attack claims and check certificates: one code path for every guarantee.

:func:`attack_claims` returns, per claim, the smallest ``g_{W,L}`` PGD finds on its ball; a value
``<= 0`` is verified (recomputed at the counterexample after moving it exactly into the closed
ball), so it names a real point where the claim fails. :func:`check_certificates` attacks what a
certificate asserts (:meth:`relaxplug.adapters.Guarantee.claims`) and returns the broken points.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from relaxplug.adapters import Guarantee
from relaxplug.adapters.certificate import Certificate
from relaxplug.adapters.claims import Claim, claim_margin
from relaxplug.attacks.pgd import batched_logits, into_ball, pgd_claim_attack
from relaxplug.attacks.settings import AttackSettings
from relaxplug.modes import eval_mode
from relaxplug.norms import Norm

__all__ = ["attack_claims", "check_certificates", "ClaimCheck"]


def _runs(clean: Tensor, winners: Tensor, losers: Tensor, targets: int) -> tuple[Tensor, Tensor, Tensor]:
    """The rows PGD attacks for claims ``(W, L)``: ``(claim row (R,), W' (R, n), L' (R, n))``.

    Every claim once on ``g_{W,L}`` itself, and per *target* (its ``targets`` highest clean
    losers ``i``) on ``min_W f - f_i`` and, when ``|W| > 1``, on ``f_j - f_i`` for the lowest
    clean winner ``j``. As AutoAttack's targeted runs complement its untargeted one, descent on
    a single pair cannot stall where the min/max of ``g_{W,L}`` does (e.g. on a linear model)."""
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
                out_rows.append(pair)
                out_w.append(torch.nn.functional.one_hot(weakest[pair], clean.shape[1]).bool())
                out_l.append(target[several[row]])
    return torch.cat(out_rows), torch.cat(out_w), torch.cat(out_l)


def _attack_batch(model: nn.Module, x: Tensor, claim: Claim, norm: Norm, settings: AttackSettings, seed: int) -> Tensor:
    """Smallest verified ``g_{W,L}`` found per row of one claim batch: ``(C,)``."""
    if len(claim) == 0:
        return x.new_zeros(0)
    xs = x[claim.point.to(x.device)]
    winners, losers = claim.winners.to(x.device), claim.losers.to(x.device)
    clean = batched_logits(model, xs, settings.batch_size)
    rows, run_w, run_l = _runs(clean, winners, losers, settings.targets)
    worst = torch.empty(rows.numel(), dtype=clean.dtype, device=x.device)
    chunks = tqdm(range(0, rows.numel(), settings.batch_size), desc=f"attack claim {claim.name!r} (eps={claim.eps:g})",
                  unit="batch", disable=not settings.progress, leave=False)
    for chunk, start in enumerate(chunks):
        part = slice(start, start + settings.batch_size)
        r = rows[part]
        _, x_adv = pgd_claim_attack(model, xs[r], run_w[part], run_l[part], claim.eps, norm, settings.steps,
                                    settings.restarts, settings.step_size, seed + chunk)
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
) -> list[Tensor]:
    """Attack every claim: one ``(C,)`` tensor per claim batch, the smallest verified ``g_{W,L}``
    found on its ball (``<= 0``: broken at a real point of the closed ball)."""
    settings = settings or AttackSettings()
    norm = Norm(norm)
    return [_attack_batch(model, x, claim, norm, settings, settings.seed + 1000 * index)
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

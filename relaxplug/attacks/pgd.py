"""PGD on claims: search the ball for a point where ``g_{W,L} = min_W f - max_L f <= 0``.

A claim (:class:`relaxplug.adapters.claims.Claim`) says ``g_{W,L} > 0`` on the whole ball; PGD
minimises ``g_{W,L}`` over it. The top-k set form ``g_T = g_{T, not T}`` is
:func:`set_margin`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from relaxplug.adapters.claims import claim_margin
from relaxplug.modes import eval_mode
from relaxplug.norms import Norm

__all__ = ["set_margin", "pgd_claim_attack", "pgd_set_attack", "project", "into_ball", "batched_logits", "row_seeds"]


def set_margin(logits: Tensor, sets: Tensor) -> Tensor:
    """``g_T = min_{j in T} f_j - max_{i not in T} f_i``. Shape: ``(B, n), (B, n) bool -> (B,)``."""
    return claim_margin(logits, sets, ~sets)


def batched_logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """``model(x)`` in eval mode, without gradients, ``batch_size`` rows at a time."""
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)])


def _flat_norm(v: Tensor, norm: float) -> Tensor:
    return v.flatten(1).norm(p=norm, dim=1).view(-1, *([1] * (v.ndim - 1)))


def project(delta: Tensor, eps: float, norm: float | str) -> Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps``."""
    if Norm(norm) == math.inf:
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)


def into_ball(x: Tensor, x_adv: Tensor, eps: float, norm: float | str) -> Tensor:
    """``x_adv`` moved (if at all) so that ``||x_adv - x|| <= eps`` holds in float64 for the
    stored values: PGD projects in the working dtype, where rounding can leave a counterexample
    an ulp outside the ball (rows that stay outside fall back to ``x``).
    Shape: ``(B, ...)`` twice -> ``(B, ...)``."""
    inf = Norm(norm) == math.inf

    def outside(candidate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        delta = (candidate.double() - x.double()).flatten(1)
        size = delta.abs().amax(dim=1) if inf else delta.norm(dim=1)
        return size > eps, delta, size

    out = x_adv.clone()
    for shrink in (1.0, 1 - 1e-6, 1 - 1e-5, 1 - 1e-4):
        mask, delta, size = outside(out)
        if not bool(mask.any()):
            return out
        if inf:
            clipped = delta.clamp(-eps * shrink, eps * shrink)
        else:
            clipped = delta * (eps * shrink / size.clamp_min(1e-300))[:, None]
        out[mask] = (x.double() + clipped.view_as(x)).to(x.dtype)[mask]
    out[outside(out)[0]] = x[outside(out)[0]]
    return out


def row_seeds(seed: int, *keys: Tensor) -> list[int]:
    """One seed per row from ``seed`` and integer key columns ``(R,)`` each (e.g. the example's
    data-set index): a hash of the keys, so a row's random starts depend on what the row is, not on
    the batch, process or position it is attacked in."""
    columns = [key.tolist() for key in keys]
    return [int.from_bytes(hashlib.blake2b(repr((seed, *row)).encode(), digest_size=8).digest(), "little") >> 1
            for row in zip(*columns)]


def _random_start(x: Tensor, eps: float, inf: bool, generator: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x)
    if inf:
        return (torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1) * eps
    radius = torch.rand(x.shape[0], generator=generator, device="cpu").to(x) ** (1 / max(x[0].numel(), 1))
    return noise / _flat_norm(noise, 2).clamp_min(1e-12) * (eps * radius).view(-1, *([1] * (x.ndim - 1)))


def _starts(x: Tensor, eps: float, inf: bool, generators: list[torch.Generator]) -> Tensor:
    """Random starts from one generator for the batch, or one per row."""
    if x.shape[0] == 0:
        return torch.zeros_like(x)
    if len(generators) == 1:
        return _random_start(x, eps, inf, generators[0])
    return torch.cat([_random_start(x[i:i + 1], eps, inf, g) for i, g in enumerate(generators)])


def pgd_claim_attack(
    model: nn.Module,
    x: Tensor,
    winners: Tensor,
    losers: Tensor,
    eps: float,
    norm: float | str = 2,
    steps: int = 50,
    restarts: int = 2,
    step_size: float | None = None,
    seed: int | Sequence[int] = 0,
) -> tuple[Tensor, Tensor]:
    """Minimise ``g_{W,L}`` over the ball with projected gradient descent (steepest descent
    for the norm: sign steps for L-inf, normalised gradients for L2), from the clean point and
    ``restarts`` random starts.

    Args:
        seed: one seed for the batch's random starts, or one per row (:func:`row_seeds`): each
            row then draws its starts from its own generator, whatever else is in the batch.
    Returns:
        ``(worst margin (B,), x_adv (B, ...))``: the smallest ``g_{W,L}`` found and where.
    """
    inf = Norm(norm) == math.inf
    if not isinstance(seed, int) and len(seed) != x.shape[0]:
        raise ValueError(f"{len(seed)} seeds for {x.shape[0]} rows")
    generators = [torch.Generator().manual_seed(s) for s in ([seed] if isinstance(seed, int) else seed)]
    base = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    with eval_mode(model):
        with torch.no_grad():
            best = claim_margin(model(x), winners, losers)
        best_x = x.clone()
        for restart in range(restarts + 1):
            delta = torch.zeros_like(x) if restart == 0 else _starts(x, eps, inf, generators)
            for step in range(steps):
                delta.requires_grad_(True)
                margin = claim_margin(model(x + delta), winners, losers)
                (grad,) = torch.autograd.grad(margin.sum(), delta)
                with torch.no_grad():
                    improved = margin.detach() < best
                    best = torch.where(improved, margin.detach(), best)
                    best_x[improved] = (x + delta.detach())[improved]
                    lr = base * 0.5 * (1 + math.cos(math.pi * step / steps)) + base * 0.05
                    move = grad.sign() if inf else grad / _flat_norm(grad, 2).clamp_min(1e-12)
                    delta = project(delta.detach() - lr * move, eps, norm)
            with torch.no_grad():
                margin = claim_margin(model(x + delta), winners, losers)
                improved = margin < best
                best = torch.where(improved, margin, best)
                best_x[improved] = (x + delta)[improved]
    return best, best_x


def pgd_set_attack(
    model: nn.Module,
    x: Tensor,
    sets: Tensor,
    eps: float,
    norm: float | str = 2,
    steps: int = 50,
    restarts: int = 2,
    step_size: float | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """:func:`pgd_claim_attack` on top-k set claims ``(T, not T)``; ``sets`` ``(B, n)`` bool."""
    return pgd_claim_attack(model, x, sets, ~sets, eps, norm, steps, restarts, step_size, seed)

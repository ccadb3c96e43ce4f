"""PGD attacks on top-k sets: search the ball for a point where a given set stops being the top-k.

For a class set ``T`` (``|T| = k``), ``T`` is the top-k set at ``x'`` iff
``g_T(x') = min_{j in T} f_j(x') - max_{i not in T} f_i(x') > 0``. A certificate claims
``g_T > 0`` on the whole ball for its certified set; any ``x'`` in the ball with
``g_T(x') <= 0`` is a counterexample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["set_margin", "pgd_set_attack", "project"]


def set_margin(logits: Tensor, sets: Tensor) -> Tensor:
    """``g_T = min_{j in T} f_j - max_{i not in T} f_i``. Shape: ``(B, n), (B, n) bool -> (B,)``."""
    big = torch.finfo(logits.dtype).max
    inside = torch.where(sets, logits, logits.new_full((), big)).amin(dim=1)
    outside = torch.where(sets, logits.new_full((), -big), logits).amax(dim=1)
    return inside - outside


def _flat_norm(v: Tensor, norm: float) -> Tensor:
    return v.flatten(1).norm(p=norm, dim=1).view(-1, *([1] * (v.ndim - 1)))


def project(delta: Tensor, eps: float, norm: float) -> Tensor:
    """Project perturbations onto the ``norm`` ball of radius ``eps``."""
    if norm == float("inf"):
        return delta.clamp(-eps, eps)
    if norm == 2:
        scale = (eps / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)
        return delta * scale
    raise ValueError(f"attacks support norms 2 and inf, got {norm}")


def _random_start(x: Tensor, eps: float, norm: float, generator: torch.Generator | None) -> Tensor:
    noise = torch.randn(x.shape, generator=generator, device="cpu").to(x)
    if norm == float("inf"):
        return (torch.rand(x.shape, generator=generator, device="cpu").to(x) * 2 - 1) * eps
    radius = torch.rand(x.shape[0], generator=generator, device="cpu").to(x) ** (1 / max(x[0].numel(), 1))
    return noise / _flat_norm(noise, 2).clamp_min(1e-12) * (eps * radius).view(-1, *([1] * (x.ndim - 1)))


def pgd_set_attack(
    model: nn.Module,
    x: Tensor,
    sets: Tensor,
    eps: float,
    norm: float = 2,
    steps: int = 50,
    restarts: int = 2,
    step_size: float | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Minimise ``g_T`` over the ball with projected gradient descent.

    Args:
        sets: ``(B, n)`` bool, the set ``T`` to break per point.
        step_size: defaults to ``2.5 * eps / steps`` (Madry et al.), decayed by cosine.
        restarts: random starts in addition to the clean point.
    Returns:
        ``(worst margin (B,), x_adv (B, ...))``: the smallest ``g_T`` found and where.
    """
    norm = float(norm)
    generator = torch.Generator().manual_seed(seed)
    base = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        best = set_margin(model(x), sets)
    best_x = x.clone()
    try:
        for restart in range(restarts + 1):
            delta = torch.zeros_like(x) if restart == 0 else _random_start(x, eps, norm, generator)
            for step in range(steps):
                delta.requires_grad_(True)
                margin = set_margin(model(x + delta), sets)
                (grad,) = torch.autograd.grad(margin.sum(), delta)
                with torch.no_grad():
                    improved = margin.detach() < best
                    best = torch.where(improved, margin.detach(), best)
                    best_x[improved] = (x + delta.detach())[improved]
                    lr = base * 0.5 * (1 + math.cos(math.pi * step / steps)) + base * 0.05
                    if norm == float("inf"):
                        move = grad.sign()
                    else:
                        move = grad / _flat_norm(grad, 2).clamp_min(1e-12)
                    delta = project(delta.detach() - lr * move, eps, norm)
            with torch.no_grad():
                margin = set_margin(model(x + delta), sets)
                improved = margin < best
                best = torch.where(improved, margin, best)
                best_x[improved] = (x + delta)[improved]
    finally:
        model.train(was_training)
    return best, best_x

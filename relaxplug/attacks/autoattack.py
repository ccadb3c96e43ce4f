"""AutoAttack (Croce & Hein 2020) on top-1 claims: the reference attack for standard robustness."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from relaxplug.adapters import rank_order
from relaxplug.attacks.pgd import batched_logits, into_ball
from relaxplug.attacks.settings import AttackSettings
from relaxplug.certifiers.certify import check_inputs
from relaxplug.modes import eval_mode
from relaxplug.norms import Norm

__all__ = ["AutoAttackResult", "autoattack_accuracy"]


@dataclass(frozen=True)
class AutoAttackResult:
    """AutoAttack outcome for the standard guarantee. Shape: ``robust (B,)`` bool (the
    prediction at ``x_adv``, projected into the closed ball, is the label), ``x_adv (B, ...)``."""

    robust: Tensor
    x_adv: Tensor
    attacks: tuple[str, ...]
    seconds: float

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if self.robust.numel() else float("nan")

    def __float__(self) -> float:
        return self.accuracy


def _import_autoattack():
    try:
        from pyautoattack import AutoAttack  # the package index's "pyautoattack"
    except ImportError:
        try:
            from autoattack import AutoAttack  # github.com/fra31/auto-attack
        except ImportError:
            raise ImportError("AutoAttack is not installed: pip install pyautoattack") from None
    return AutoAttack


class _BoxWrapper(nn.Module):
    """``z -> model(low + scale * z)``: AutoAttack clips to ``[0, 1]``; this maps ``[0, 1]`` onto the
    box ``[low, low + scale]`` of the input space. One scalar ``scale``, so a ``norm`` ball of radius
    ``eps`` in ``x`` is the ball of radius ``eps / scale`` in ``z``."""

    def __init__(self, model: nn.Module, low: float, scale: float):
        super().__init__()
        self.model = model
        self.low = low
        self.scale = scale

    def forward(self, z: Tensor) -> Tensor:
        return self.model(self.low + self.scale * z)


def autoattack_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: float | str = 2,
    settings: AttackSettings | None = None,
    *,
    box: tuple[float, float] | None = None,
) -> AutoAttackResult:
    """Robust accuracy of the standard (top-1) guarantee under AutoAttack.

    Args:
        settings: ``autoattack_fast`` runs ``version='custom'`` with APGD-CE and APGD-T,
            ``autoattack_iterations`` iterations and at most 3 target classes, instead of the
            full ``'standard'`` ensemble (APGD-CE, APGD-T, FAB-T, Square, 100 iterations);
            ``seed`` and ``batch_size`` are passed on.
        box: the input domain AutoAttack may not leave (``(0, 1)`` for images as AutoAttack
            assumes); ``None`` (default) leaves the ball unclipped, as certificates are.
    Returns:
        an :class:`AutoAttackResult`; ``float(result)`` is the robust accuracy.
    """
    settings = settings or AttackSettings()
    fast, n_iter, seed, batch_size = settings.autoattack_fast, settings.autoattack_iterations, settings.seed, settings.batch_size
    norm = Norm(norm)
    eps = check_inputs(x, eps)
    AutoAttack = _import_autoattack()
    start = time.perf_counter()
    labels = torch.as_tensor(y).to(x.device).long()
    n_classes = batched_logits(model, x[:1], 1).shape[1]
    if box is None:
        low, high = float(x.min()) - eps, float(x.max()) + eps
    else:
        low, high = (float(v) for v in box)
    scale = max(high - low, 1e-12)
    wrapped = _BoxWrapper(model, low, scale)
    z = ((x - low) / scale).clamp(0, 1)
    with eval_mode(model):
        attack = AutoAttack(wrapped, norm="Linf" if norm == float("inf") else "L2", eps=eps / scale, seed=seed,
                            version="custom" if fast else "standard", device=x.device)
        attack.verbose = settings.progress  # AutoAttack prints its own per-attack progress
        if fast:
            attack.attacks_to_run = ["apgd-ce", "apgd-t"]
            for sub in (attack.apgd, attack.apgd_targeted):
                sub.n_iter = n_iter
                sub.n_restarts = 1
            attack.apgd_targeted.n_target_classes = 3
        attack.apgd_targeted.n_target_classes = min(attack.apgd_targeted.n_target_classes, n_classes - 1)
        attack.fab.n_target_classes = min(attack.fab.n_target_classes, n_classes - 1)
        dropped = set()
        if n_classes < 4:  # the targeted DLR loss needs a 4th class
            dropped |= {"apgd-t", "apgd-dlr"}
        if x.ndim != 4:  # Square samples square windows of (C, H, W) images
            dropped.add("square")
        attack.attacks_to_run = [a for a in attack.attacks_to_run if a not in dropped]
        runs = tuple(attack.attacks_to_run)
        result = attack.run_standard_evaluation(z, labels, batch_size=batch_size) if _keyword_batch(attack) \
            else attack.run_standard_evaluation(z, labels, bs=batch_size)
        z_adv = result[0] if isinstance(result, tuple) else result
        with torch.no_grad():
            x_adv = into_ball(x, (low + scale * z_adv.to(x.dtype)).detach(), eps, norm)
            if box is not None:
                x_adv = torch.maximum(torch.minimum(x_adv, x.new_tensor(high)), x.new_tensor(low))
            robust = rank_order(batched_logits(model, x_adv, batch_size))[:, 0] == labels
    return AutoAttackResult(robust=robust, x_adv=x_adv, attacks=runs, seconds=time.perf_counter() - start)


def _keyword_batch(attack: Any) -> bool:
    return "batch_size" in inspect.signature(attack.run_standard_evaluation).parameters


"""CROWN-IBP certified training (Zhang et al. 2020) through auto_LiRPA, standard and IGRP.

For a batch with labels ``y`` the spec ``C`` has one row ``e_y - e_i`` per ``i != y``; the bound
method gives lower bounds ``l_i <= f_y(x') - f_i(x')`` over the ball. CROWN-IBP mixes two of them,

    l = beta * l_CROWN-IBP + (1 - beta) * l_IBP,

and the robust loss is the cross-entropy of ``-l`` with a zero logit for ``y``:

    L_rob(l) = log(1 + sum_i exp(-l_i)),      L = kappa * CE(f(x), y) + (1 - kappa) * L_rob.

The schedule (CROWN-IBP's): ``warmup_epochs`` of natural training (``eps = 0``), then per batch a
linear ramp of ``eps`` from 0 to its final value over ``eps_ramp_epochs`` epochs, with ``kappa``
and ``beta`` moving from their start to their end values (``1 -> 0`` by default) on the same
progress; after the ramp all three stay at their final values.

IGRP (Wang et al., seed ``003``): ``L_rob = L_inner + L_outer`` with ``L_inner = L_rob`` over the
classes of ``y``'s group (similar classes) on bounds at ``eps_in``, and ``L_outer = L_rob`` over
the classes outside it (dissimilar classes) on bounds at ``eps_out``; both radii ramp together.

The bounds are computed on a *shared* lowered form of the model
(:func:`relaxplug.lirpa.shared_lirpa_form`): its ``MinMax`` and ``InvertibleDownsample`` layers are
replaced by their exact ``lirpa_form`` rewrites (which hold only fixed buffers) while every
parameterised layer is the training model's own module, so the auto_LiRPA graph reads the current
weights and gradients reach the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxplug.adapters import IGRP, Guarantee, Standard
from relaxplug.lirpa import IdentityPrefix, l2_input_is_safe, shared_lirpa_form
from relaxplug.lirpa import api

from relaxplug.training.schedules import Schedule, parse_schedule

__all__ = [
    "CrownIBPLoss",
    "CrownIBPSchedule",
    "LirpaBounds",
    "StepLoss",
    "igrp_robust_losses",
    "margin_spec",
    "robust_cross_entropy",
]


# ----------------------------------------------------------------------------- bounds


class LirpaBounds:
    """auto_LiRPA ``BoundedModule`` of :func:`relaxplug.lirpa.shared_lirpa_form` for training:
    differentiable lower bounds of ``C f(x')`` over an L-inf or L2 ball.

    L2 balls on a model whose input first meets a layer other than linear/convolution are
    bounded behind a fixed identity layer (:mod:`relaxplug.lirpa.guard`).

    Args:
        model: the training model (its parameters are shared, not copied).
        example: ``(B, ...)`` example input (shape, device, dtype).
        norm: ``inf`` or ``2``.
    """

    def __init__(self, model: nn.Module, example: Tensor, norm: float):
        if float(norm) not in (2.0, math.inf):
            raise ValueError(f"CROWN-IBP training supports norms 2 and inf, got {norm!r}")
        self.norm = float(norm)
        example = example[:1].detach()
        form = shared_lirpa_form(model, example)
        self.bounded = api.convert(form, example)
        if self.norm != math.inf and not l2_input_is_safe(self.bounded):
            self.bounded = api.convert(IdentityPrefix(example.shape[1:], form, example), example)

    def lower(self, x: Tensor, c: Tensor, eps: float, beta: float) -> Tensor:
        """``beta * l_CROWN-IBP + (1 - beta) * l_IBP`` for spec ``c`` ``(B, R, n)``; ``(B, R)``.

        One auto_LiRPA pass: the CROWN-IBP call leaves its IBP bound of ``C f`` behind, read back
        with ``reuse_ibp``; ``beta = 0`` runs IBP alone.
        """
        inputs = (api.bounded_tensor(x, eps, self.norm),)
        if beta <= 0.0:
            lower, _ = api.compute_bounds(self.bounded, inputs, C=c, method="IBP", bound_upper=False)
            return lower
        crown, _ = api.compute_bounds(self.bounded, inputs, C=c, method="CROWN-IBP", bound_upper=False)
        if beta >= 1.0:
            return crown
        ibp, _ = api.compute_bounds(self.bounded, C=c, method="IBP", reuse_ibp=True)
        return beta * crown + (1.0 - beta) * ibp


# ----------------------------------------------------------------------------- losses


def margin_spec(y: Tensor, n_classes: int, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Spec rows ``e_y - e_i`` for every ``i != y``, in increasing ``i``.

    Returns: ``C (B, n - 1, n)`` and ``others (B, n - 1)`` (the class ``i`` of each row).
    """
    batch = y.shape[0]
    classes = torch.arange(n_classes, device=y.device).expand(batch, n_classes)
    others = classes[classes != y[:, None]].view(batch, n_classes - 1)
    c = F.one_hot(y, n_classes).to(dtype)[:, None, :] - F.one_hot(others, n_classes).to(dtype)
    return c, others


def robust_cross_entropy(lower: Tensor, mask: Tensor | None = None) -> Tensor:
    """CROWN-IBP's robust loss: cross-entropy of ``[0, -l_1, ..., -l_R]`` against the zero logit,
    ``mean_b log(1 + sum_{i in mask} exp(-l_i))``; rows outside ``mask`` are left out (a point
    with none contributes 0). Shape: ``(B, R)``, mask ``(B, R)`` bool."""
    logits = -lower
    if mask is not None:
        logits = torch.where(mask, logits, logits.new_full((), -math.inf))
    padded = torch.cat([logits.new_zeros(logits.shape[0], 1), logits], dim=1)
    return torch.logsumexp(padded, dim=1).mean()


def igrp_robust_losses(lower_in: Tensor, lower_out: Tensor, y: Tensor, others: Tensor, group_of: Tensor) -> tuple[Tensor, Tensor]:
    """``(L_inner, L_outer)``: the robust loss over ``y``'s group on the ``eps_in`` bounds and
    over the other classes on the ``eps_out`` bounds. Shape: bounds and ``others`` ``(B, n - 1)``,
    ``y (B,)``, ``group_of (n,)``."""
    same = group_of[others] == group_of[y][:, None]  # (B, n - 1)
    return robust_cross_entropy(lower_in, same), robust_cross_entropy(lower_out, ~same)


# ----------------------------------------------------------------------------- schedule


def _at(schedule: Schedule, progress: float) -> float:
    """``schedule``'s value at ``progress`` in [0, 1] of the ramp (its shape; span ignored)."""
    p = min(max(progress, 0.0), 1.0)
    if schedule.start == schedule.end:
        return schedule.start
    if schedule.shape == "log":
        return schedule.start + (schedule.end - schedule.start) * math.log1p((math.e - 1) * p)
    if schedule.shape == "exp":
        return schedule.start * (schedule.end / schedule.start) ** p
    return schedule.start + (schedule.end - schedule.start) * p


@dataclass(frozen=True)
class CrownIBPSchedule:
    """Per-batch ``(eps factor, kappa, beta)``: natural warm-up, then a linear eps ramp along which
    ``kappa`` and ``beta`` go from start to end (Zhang et al. 2020).

    Args:
        warmup_epochs: epochs at ``eps = 0`` (natural training).
        ramp_epochs: epochs of the linear ramp (0: the full radius at once).
        kappa: natural-loss weight, e.g. ``"1 -> 0"``.
        beta: CROWN-IBP weight in the bound mix, e.g. ``"1 -> 0"`` (``"0"``: pure IBP).
    """

    warmup_epochs: int = 0
    ramp_epochs: int = 0
    kappa: Schedule = Schedule(1.0, 0.0)
    beta: Schedule = Schedule(1.0, 0.0)

    @classmethod
    def parse(cls, warmup_epochs: int, ramp_epochs: int, kappa: str | float | None, beta: str | float | None) -> "CrownIBPSchedule":
        """Build from config values (``None`` kappa/beta: ``"1 -> 0"``)."""
        return cls(int(warmup_epochs), int(ramp_epochs), parse_schedule("1 -> 0" if kappa is None else kappa),
                   parse_schedule("1 -> 0" if beta is None else beta))

    def progress(self, step: int, steps_per_epoch: int) -> float:
        """Ramp progress in [0, 1] after global batch ``step`` (0-based); 0 during warm-up."""
        start = self.warmup_epochs * steps_per_epoch
        if step < start:
            return 0.0
        length = self.ramp_epochs * steps_per_epoch
        return 1.0 if length == 0 else min(1.0, (step - start + 1) / length)

    def at(self, step: int, steps_per_epoch: int) -> tuple[float, float, float]:
        """``(eps factor, kappa, beta)`` at global batch ``step``."""
        p = self.progress(step, steps_per_epoch)
        if step < self.warmup_epochs * steps_per_epoch:
            return 0.0, self.kappa.start, self.beta.start
        return p, _at(self.kappa, p), _at(self.beta, p)


# ----------------------------------------------------------------------------- the training loss


@dataclass
class StepLoss:
    """One step's loss and figures: ``bound_correct`` counts points whose training bounds already
    verify the guarantee's trained margins (all ``l_i > 0`` over the rows in the loss)."""

    loss: Tensor
    logits: Tensor
    bound_correct: int
    eps: float
    kappa: float
    beta: float


class CrownIBPLoss:
    """The CROWN-IBP training loss for ``Standard`` (radius ``eps``) or ``IGRP`` (its
    ``eps_in``/``eps_out``), following :class:`CrownIBPSchedule`.

    Args:
        model: the training model (bounds share its parameters).
        guarantee: ``Standard()`` or an ``IGRP``.
        eps: final radius for ``Standard`` (ignored for IGRP, which carries its radii).
        norm: ``inf`` or ``2``.
        schedule: the ramp.
        example: an input batch (shape, device, dtype).
        n_classes: number of classes.
    """

    def __init__(self, model: nn.Module, guarantee: Guarantee, eps: float, norm: float, schedule: CrownIBPSchedule,
                 example: Tensor, n_classes: int):
        if isinstance(guarantee, IGRP):
            guarantee.validate(n_classes)
            self.radii: Sequence[float] = guarantee.radii(None)
            self.group_of: Tensor | None = guarantee.group_of(n_classes, example.device)
        elif isinstance(guarantee, Standard):
            if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
                raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
            self.radii = (float(eps),)
            self.group_of = None
        else:
            raise ValueError(f"CROWN-IBP training supports the standard and IGRP guarantees, got {guarantee!r}")
        self.model = model
        self.guarantee = guarantee
        self.schedule = schedule
        self.n_classes = int(n_classes)
        self.bounds = LirpaBounds(model, example, norm)

    def __call__(self, x: Tensor, y: Tensor, step: int, steps_per_epoch: int) -> StepLoss:
        factor, kappa, beta = self.schedule.at(step, steps_per_epoch)
        logits = self.model(x)
        natural = F.cross_entropy(logits, y)
        if factor <= 0.0 or all(r == 0 for r in self.radii):
            return StepLoss(natural, logits, 0, 0.0, kappa, beta)
        c, others = margin_spec(y, self.n_classes, x.dtype)
        if self.group_of is None:
            lower = self.bounds.lower(x, c, factor * self.radii[0], beta)  # (B, n - 1)
            robust = robust_cross_entropy(lower)
            verified = (lower > 0).all(dim=1)
        else:
            lower_in = self.bounds.lower(x, c, factor * self.radii[0], beta)
            lower_out = self.bounds.lower(x, c, factor * self.radii[1], beta)
            inner, outer = igrp_robust_losses(lower_in, lower_out, y, others, self.group_of)
            robust = inner + outer
            same = self.group_of[others] == self.group_of[y][:, None]
            verified = torch.where(same, lower_in, lower_out).gt(0).all(dim=1)
        loss = kappa * natural + (1.0 - kappa) * robust
        return StepLoss(loss, logits, int(verified.sum()), factor * self.radii[-1], kappa, beta)

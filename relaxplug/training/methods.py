"""Training methods by name, each with its own typed config section.

A method turns a batch into a loss; the loop (:mod:`relaxplug.training.trainer`) owns data,
optimizer, schedules of the learning rate, checkpoints. Registered here:

- ``gloro``: GloRo-instrumented certified training for any guarantee through
  :class:`relaxplug.GloRoNet` (section: ``loss``, ``trades_lambda``, ``power_iterations``);
  the training radius ramps per epoch from ``eps_min`` to ``eps`` over ``eps_ramp_epochs``:
  ``eps_e = eps_min + (eps - eps_min) min(1, (e + 1) / eps_ramp_epochs)``.
- ``crown-ibp``: CROWN-IBP bounds through auto_LiRPA, standard and IGRP guarantees, norms 2
  and inf (section: ``warmup_epochs``, ``kappa``, ``beta``; :mod:`relaxplug.training.crown_ibp`).
- ``natural``: plain cross-entropy (no section keys).

A new method: subclass :class:`TrainingMethod`, give it a frozen dataclass ``Section`` and
register it with ``@register_method("name")``; its YAML section is the key ``name``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from relaxplug.adapters import Guarantee
from relaxplug.registry import Registry
from relaxplug.training.crown_ibp import CrownIBPLoss, CrownIBPSchedule
from relaxplug.training.losses import GLORO_LOSSES, MARGIN_LOSSES
from relaxplug.training.schedules import parse_schedule
from relaxplug.training.wrapper import GloRoNet

__all__ = [
    "METHODS",
    "CrownIBPMethod",
    "CrownIBPSection",
    "GloRoMethod",
    "GloRoSection",
    "NaturalMethod",
    "NaturalSection",
    "RunSettings",
    "StepResult",
    "TrainingMethod",
    "list_methods",
    "register_method",
]

METHODS: Registry[type] = Registry("training method")


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator registering a :class:`TrainingMethod` subclass under ``name``."""
    return METHODS.register(name)


def list_methods() -> list[str]:
    return METHODS.names()


@dataclass(frozen=True)
class RunSettings:
    """The run-level settings a method reads (from the config's common keys)."""

    eps: float
    epochs: int
    norm: float = 2.0
    guarantee: str = "standard"
    eps_min: float = 0.0
    eps_ramp_epochs: int = 0

    def ramped_eps(self, epoch: int) -> float:
        """Per-epoch training radius from ``eps_min`` to ``eps`` (module docstring)."""
        if not self.eps_ramp_epochs:
            return self.eps
        return self.eps_min + (self.eps - self.eps_min) * min(1.0, (epoch + 1) / self.eps_ramp_epochs)

    @property
    def guarantee_kind(self) -> str:
        return str(self.guarantee).strip().partition(":")[0].lower()


@dataclass
class StepResult:
    """One batch: the loss, the clean logits, how many points the training bounds already
    verify, and figures for the epoch record."""

    loss: Tensor
    logits: Tensor
    robust_correct: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


class TrainingMethod:
    """A training method (module docstring). ``module`` is what the optimizer trains and what
    the step calls; ``model`` is the plain model that checkpoints and certifiers see."""

    Section: ClassVar[type]
    needs_guarantee: ClassVar[bool] = True

    @classmethod
    def check(cls, section: Any, run: RunSettings) -> None:
        """Reject settings the method cannot train (raise ``ValueError`` naming them)."""

    def __init__(self, model: nn.Module, guarantee: Guarantee | None, section: Any, run: RunSettings,
                 example: Tensor, n_classes: int):
        self.model = model
        self.module: nn.Module = model
        self.guarantee = guarantee
        self.section = section
        self.run = run

    def begin_epoch(self, epoch: int) -> dict[str, Any]:
        """Set per-epoch schedules; returns figures for the epoch record."""
        return {"eps": self.run.eps}

    def step(self, x: Tensor, y: Tensor, step: int, steps_per_epoch: int) -> StepResult:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def _check_norm(method: str, norm: float, allowed: tuple[float, ...]) -> None:
    if norm not in allowed:
        names = " or ".join("inf" if a == math.inf else f"{a:g}" for a in allowed)
        raise ValueError(f"method {method} trains for norm {names}, got {norm:g}")


@dataclass(frozen=True)
class GloRoSection:
    """``loss``: ``ce``, ``trades``, ``emma`` or ``la`` (EMMA and logit annealing,
    :mod:`relaxplug.training.margin_losses`); ``trades_lambda``: a schedule (Table F1 notation);
    ``power_iterations``: per layer and batch; ``la_temperature``, ``la_offset``, ``la_gamma``:
    logit annealing's (Lai et al. 2025: 0.75, 2.0, 5.0)."""

    loss: str = "trades"
    trades_lambda: str = "0.01 -> 1.2 log half"
    power_iterations: int = 2
    la_temperature: float = 0.75
    la_offset: float = 2.0
    la_gamma: float = 5.0

    def __post_init__(self) -> None:
        known = sorted(GLORO_LOSSES) + list(MARGIN_LOSSES)
        if self.loss not in known:
            raise ValueError(f"gloro.loss must be one of {known}, got {self.loss!r}")
        for name in ("la_temperature", "la_offset", "la_gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"gloro.{name} must be a finite number >= 0, got {value!r}")
        if self.la_temperature == 0:
            raise ValueError("gloro.la_temperature must be > 0")
        parse_schedule(self.trades_lambda)
        value = self.power_iterations
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"gloro.power_iterations must be a positive integer, got {value!r}")


@register_method("gloro")
class GloRoMethod(TrainingMethod):
    """GloRo training through :class:`relaxplug.GloRoNet` (the one GloRo training path)."""

    Section = GloRoSection

    @classmethod
    def check(cls, section: GloRoSection, run: RunSettings) -> None:
        _check_norm("gloro", run.norm, (2.0,))

    def __init__(self, model, guarantee, section: GloRoSection, run, example, n_classes):
        super().__init__(model, guarantee, section, run, example, n_classes)
        self.net = GloRoNet(model, run.eps, guarantee, input_shape=example.shape[1:], loss=section.loss,
                            power_iterations=section.power_iterations,
                            annealing=(section.la_temperature, section.la_offset, section.la_gamma))
        self.module = self.net
        self.lam = parse_schedule(section.trades_lambda)

    def begin_epoch(self, epoch: int) -> dict[str, Any]:
        self.net.trades_lambda = self.lam(epoch, self.run.epochs)
        self.net.eps = self.run.ramped_eps(epoch)
        return {"trades_lambda": self.net.trades_lambda if self.section.loss == "trades" else None,
                "eps": self.net.eps}

    def step(self, x, y, step, steps_per_epoch) -> StepResult:
        instrumented = self.net(x)  # (B, n + 1)
        loss = self.net.criterion(instrumented, y)
        return StepResult(loss, instrumented[:, :-1], int((instrumented.argmax(1) == y).sum()))


@dataclass(frozen=True)
class CrownIBPSection:
    """``warmup_epochs`` of natural training, then ``eps`` ramps per batch over the run's
    ``eps_ramp_epochs`` while ``kappa`` (natural-loss weight) and ``beta`` (CROWN-IBP weight in
    the bound mix) go from start to end (``"START -> END"``, default ``"1 -> 0"``)."""

    warmup_epochs: int = 0
    kappa: str | None = None
    beta: str | None = None

    def __post_init__(self) -> None:
        w = self.warmup_epochs
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise ValueError(f"crown-ibp.warmup_epochs must be an integer >= 0, got {w!r}")
        for name in ("kappa", "beta"):
            value = getattr(self, name)
            if value is None:
                continue
            schedule = parse_schedule(value)
            if schedule.span != "full":
                raise ValueError(f"crown-ibp.{name} follows the eps ramp: give 'START -> END' without 'half', got {value!r}")
            if not (0.0 <= schedule.start <= 1.0 and 0.0 <= schedule.end <= 1.0):
                raise ValueError(f"crown-ibp.{name} is a weight in [0, 1], got {value!r}")


@register_method("crown-ibp")
class CrownIBPMethod(TrainingMethod):
    """CROWN-IBP training (Zhang et al. 2020) on the auto_LiRPA glue the certifiers use."""

    Section = CrownIBPSection
    guarantees: ClassVar[tuple[str, ...]] = ("standard", "igrp")

    @classmethod
    def check(cls, section: CrownIBPSection, run: RunSettings) -> None:
        _check_norm("crown-ibp", run.norm, (2.0, math.inf))
        if run.guarantee_kind not in cls.guarantees:
            raise ValueError(f"method crown-ibp trains the guarantees {cls.guarantees}, got {run.guarantee!r}")
        if section.warmup_epochs + run.eps_ramp_epochs > run.epochs:
            raise ValueError(f"crown-ibp.warmup_epochs + eps_ramp_epochs ({section.warmup_epochs} + "
                             f"{run.eps_ramp_epochs}) exceeds epochs ({run.epochs})")
        if run.eps_min:
            raise ValueError("method crown-ibp ramps eps from 0 (its warm-up); eps_min must be 0")

    def __init__(self, model, guarantee, section: CrownIBPSection, run, example, n_classes):
        super().__init__(model, guarantee, section, run, example, n_classes)
        schedule = CrownIBPSchedule.parse(section.warmup_epochs, run.eps_ramp_epochs, section.kappa, section.beta)
        self.loss = CrownIBPLoss(model, guarantee, run.eps, run.norm, schedule, example[:1], n_classes)

    def begin_epoch(self, epoch: int) -> dict[str, Any]:
        return {}

    def step(self, x, y, step, steps_per_epoch) -> StepResult:
        out = self.loss(x, y, step, steps_per_epoch)
        return StepResult(out.loss, out.logits, out.bound_correct, {"eps": out.eps, "kappa": out.kappa, "beta": out.beta})


@dataclass(frozen=True)
class NaturalSection:
    """Natural training has no settings of its own."""


@register_method("natural")
class NaturalMethod(TrainingMethod):
    """Plain cross-entropy (e.g. to derive IGRP groups from the weights)."""

    Section = NaturalSection
    needs_guarantee = False

    @classmethod
    def check(cls, section: NaturalSection, run: RunSettings) -> None:
        if run.guarantee_kind == "igrp":
            raise ValueError("guarantee igrp needs method gloro or crown-ibp")

    def step(self, x, y, step, steps_per_epoch) -> StepResult:
        logits = self.model(x)
        return StepResult(F.cross_entropy(logits, y), logits)

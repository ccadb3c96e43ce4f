"""Training-recipe pieces: optimizers by name, Lookahead, learning-rate warm-up, weight EMA.

- Lookahead (Zhang et al. 2019): the inner optimizer updates the fast weights ``theta``; every
  ``k`` steps the slow weights move ``phi <- phi + alpha (theta - phi)`` and ``theta <- phi``.
- Warm-up: over the first ``W`` epochs the learning rate is scaled by ``(s + 1) / (W S)`` at
  global batch ``s`` (``S`` batches per epoch), then follows its schedule.
- EMA of weights: ``theta_ema <- d theta_ema + (1 - d) theta`` after every step, with
  ``d = min(decay, (1 + t) / (10 + t))`` at update ``t`` so early averages are not dominated by
  the initial weights; buffers are copied. The averaged model is a separate module, certified
  with its own Lipschitz bound.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import Tensor, nn

__all__ = ["OPTIMIZERS", "Lookahead", "WeightEMA", "build_optimizer", "warmup_factor"]

#: optimizer names accepted by :func:`build_optimizer`
OPTIMIZERS = ("sgd", "adam", "nadam")


def build_optimizer(name: str, params: Iterable[Tensor], lr: float, *, momentum: float = 0.9,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``sgd`` (with ``momentum``), ``adam`` or ``nadam``; ``weight_decay`` is L2 decay."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")


class Lookahead:
    """Lookahead around an optimizer (module docstring). ``param_groups`` are the inner
    optimizer's, so learning-rate schedules set them as usual.

    Args:
        inner: the fast optimizer.
        k: fast steps per slow update (>= 1).
        alpha: slow step size in (0, 1].
    """

    def __init__(self, inner: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"lookahead k must be a positive integer, got {k!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"lookahead alpha must be in (0, 1], got {alpha!r}")
        self.inner = inner
        self.k = k
        self.alpha = float(alpha)
        self.steps = 0
        self.slow = [[p.detach().clone() for p in group["params"]] for group in inner.param_groups]

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        self.inner.step()
        self.steps += 1
        if self.steps % self.k:
            return
        for group, slow_group in zip(self.inner.param_groups, self.slow):
            for fast, slow in zip(group["params"], slow_group):
                slow.add_(fast - slow, alpha=self.alpha)
                fast.copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "steps": self.steps, "slow": [[s.clone() for s in g] for g in self.slow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.steps = int(state["steps"])
        with torch.no_grad():
            for slow_group, saved in zip(self.slow, state["slow"]):
                for slow, value in zip(slow_group, saved):
                    slow.copy_(value)


def warmup_factor(step: int, steps_per_epoch: int, warmup_epochs: int) -> float:
    """Learning-rate factor at global batch ``step`` (0-based): ``(step + 1) / (W S)`` during
    ``W = warmup_epochs`` epochs of ``S`` batches, then 1."""
    total = warmup_epochs * steps_per_epoch
    return 1.0 if step >= total else (step + 1) / total


class WeightEMA:
    """Exponential moving average of a model's weights (module docstring).

    ``model`` is the averaged copy (eval mode, no gradients); ``update(source)`` after every
    optimizer step.
    """

    def __init__(self, source: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(source).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for averaged, current in zip(self.model.parameters(), source.parameters()):
            averaged.lerp_(current.detach(), 1.0 - d)
        for averaged, current in zip(self.model.buffers(), source.buffers()):
            averaged.copy_(current)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])

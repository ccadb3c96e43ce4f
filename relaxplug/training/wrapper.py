"""``GloRoNet``: GloRo certified training for a user's own model in the user's own loop.

``GloRoNet(model, eps, guarantee, input_shape=...)`` wraps any model the Lipschitz engine
supports (:mod:`relaxplug.lipschitz`: every layer declares a bound through the Lipschitz
protocol, built-in or user-registered, and the model ends in the ``nn.Linear`` logit layer).
In train mode ``forward(x)`` returns the instrumented logits ``g(x)`` of Equation B2
(``(B, n + 1)``, the guarantee's margin ``m`` from Lipschitz margins ``f_j - f_i - eps K_ji``),

    K_ji = L_body * ||w_j - w_i||,

``L_body`` the engine's differentiable training estimate: ``power_iterations`` power-iteration
steps per layer from persistent vectors (Leino et al. 2021). The vectors are buffers of the
model's own layers (``lipschitz_u_*``), created here, so ``state_dict``, ``torch.save``,
``.to(device)``, ``copy.deepcopy`` (EMA copies) and DDP's buffer broadcast carry them. Power
iteration converges from below: the training bound is an estimate, never a certificate.
``certify(x)`` certifies with the sound bound (:func:`relaxplug.certify`, certifier ``gloro``).
In eval mode ``forward`` returns the plain logits ``f(x)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from relaxplug.adapters import Guarantee, resolve_guarantee
from relaxplug.adapters.certificate import Certificate
from relaxplug.certifiers.certify import certify
from relaxplug.lipschitz import LipschitzEstimator, estimator_for, head_distances, init_lipschitz_state
from relaxplug.training.losses import MARGIN_LOSSES, emma_loss, gloro_instrumented, gloro_loss, logit_annealing_loss

__all__ = ["GloRoNet"]


class GloRoNet(nn.Module):
    """GloRo-instrumented training wrapper around ``model`` (module docstring).

    Args:
        model: returns logits ``(B, n)``; its layers bounded by the Lipschitz protocol (built-in or
            ``register_lipschitz``), ending in the ``nn.Linear`` logit layer.
        eps: training radius (L2); may be changed between steps (``net.eps = ...``) for a ramp.
        guarantee: a guarantee name (``"rtk:2"``) or instance, built-in or user-registered.
        input_shape: one input's shape ``(C, H, W)`` or ``(d,)`` (sizes the power vectors).
        loss: ``"ce"`` or ``"trades"`` (:data:`relaxplug.training.losses.GLORO_LOSSES`), or
            ``"emma"`` / ``"la"`` (:data:`relaxplug.training.losses.MARGIN_LOSSES`: computed from
            the clean logits ``g(x)[:, :n]`` and the ``K`` of the same forward pass).
        annealing: LA's ``(temperature, offset, gamma)`` (Lai et al. 2025's defaults).
        trades_lambda: TRADES weight ``lambda`` (settable per epoch).
        power_iterations: power-iteration steps per layer and forward pass.
        sets: sets for a bare ``"affinity"``/``"superclass"``/``"igrp:..."`` guarantee name.

    Shape: ``forward``: ``(B, *input_shape) -> (B, n + 1)`` in train mode, ``(B, n)`` in eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        guarantee: str | Guarantee = "standard",
        *,
        input_shape: Sequence[int],
        loss: str = "ce",
        trades_lambda: float = 1.0,
        power_iterations: int = 2,
        sets: Sequence[Sequence[int]] | None = None,
        annealing: tuple[float, float, float] = (0.75, 2.0, 5.0),
    ):
        super().__init__()
        if isinstance(power_iterations, bool) or not isinstance(power_iterations, int) or power_iterations < 1:
            raise ValueError(f"power_iterations must be a positive integer, got {power_iterations!r}")
        self.model = model
        self.eps = float(eps)
        self.guarantee = resolve_guarantee(guarantee, sets=sets)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.loss_name = loss
        self._loss = None if loss in MARGIN_LOSSES else gloro_loss(loss)
        self.annealing = tuple(float(v) for v in annealing)
        self._pair: Tensor | None = None  # K of the last train-mode forward (the margin losses read it)
        self.trades_lambda = float(trades_lambda)
        self.power_iterations = power_iterations
        init_lipschitz_state(model, self.input_shape)  # the power vectors exist from here on
        self.guarantee.validate(self._estimator().head.out_features)

    def _estimator(self) -> LipschitzEstimator:
        """The model's estimator (cached per model, so a deep copy gets its own)."""
        return estimator_for(self.model, self.input_shape)

    def pair_lipschitz(self) -> Tensor:
        """Training estimate ``K (n, n)``: power iteration from the persistent vectors, which it
        advances in train mode (without gradient). Differentiable w.r.t. the weights; not a proof."""
        estimator = self._estimator()
        return estimator.power(self.power_iterations) * head_distances(estimator.head.weight)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)  # (B, n)
        if not self.training:
            return logits
        # under autocast (bf16 training) only the model's forward is low precision: the Lipschitz
        # estimate and the margins are computed in (at least) float32 from upcast logits
        with torch.autocast(logits.device.type, enabled=False):
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            pair = self.pair_lipschitz()
            if self._loss is None:
                self._pair = pair  # read (and released) by criterion
            return gloro_instrumented(logits, pair, self.eps, self.guarantee)  # (B, n + 1)

    def criterion(self, output: Tensor, labels: Tensor) -> Tensor:
        """The configured loss of a train-mode ``forward`` output ``g(x)`` (use this under DDP:
        ``net.module.criterion(ddp_net(x), y)``). EMMA and LA read the clean logits of ``output``
        and the ``K`` its forward pass computed."""
        if self._loss is not None:
            return self._loss(output, labels, self.trades_lambda)
        if self._pair is None:
            raise RuntimeError(f"loss {self.loss_name!r} needs the output of a train-mode forward pass first")
        logits, pair = output[:, :-1], self._pair
        self._pair = None  # hold no autograd graph beyond the step (deep copies, EMA)
        if self.loss_name == "emma":
            return emma_loss(logits, labels, pair, self.eps, self.guarantee)
        temperature, offset, gamma = self.annealing
        return logit_annealing_loss(logits, labels, pair, self.eps, self.guarantee, temperature, offset, gamma)

    def loss(self, x: Tensor, labels: Tensor) -> Tensor:
        """The configured GloRo loss of a batch (train mode; one forward pass)."""
        if not self.training:
            raise RuntimeError("GloRoNet.loss needs train mode (call net.train())")
        return self.criterion(self(x), labels)

    def certify(self, x: Tensor, *, radius: bool = True) -> Certificate:
        """``rp.certify(model, x, eps, 2, "gloro", guarantee)``: sound bounds, not the estimate."""
        return certify(self.model, x, self.eps, 2, "gloro", self.guarantee, radius=radius)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, guarantee={self.guarantee!r}, loss={self.loss_name!r}"


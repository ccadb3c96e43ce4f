"""The GloRo head: ``K_ji = L_body * ||w_j - w_i||`` for a final linear layer ``W`` (Leino et al. 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from relaxplug.lipschitz.protocol import UnsupportedLayerError

__all__ = ["head_distances", "split_head", "is_plain_linear"]


def head_distances(weight: Tensor) -> Tensor:
    """``D[j, i] = ||w_j - w_i||_2`` for the head's rows. Shape ``(n, d) -> (n, n)``.

    Computed by explicit differences (no ``|a|^2 + |b|^2 - 2ab`` cancellation).
    """
    return torch.cdist(weight[None], weight[None], compute_mode="donot_use_mm_for_euclid_dist")[0]


def is_plain_linear(module: nn.Module) -> bool:
    """``nn.Linear`` itself, or an ``nn.Linear`` whose parameters carry ``torch.nn.utils.parametrize``
    parametrizations (e.g. last-layer normalization): its class is then a generated subclass that
    keeps ``nn.Linear.forward``, which reads ``weight`` through the parametrization, so the layer
    computes ``x W^T + b`` with ``W = module.weight`` exactly as every reader of ``weight`` sees it."""
    cls = type(module)
    if cls is nn.Linear:
        return True
    return parametrize.is_parametrized(module) and cls.__bases__ == (nn.Linear,) and cls.forward is nn.Linear.forward


def _leaves(module: nn.Module) -> list[nn.Module]:
    if type(module) is nn.Sequential:
        return [leaf for child in module for leaf in _leaves(child)]
    return [module]


def split_head(model: nn.Module) -> tuple[list[nn.Module], nn.Linear]:
    """Flatten nested (exact) ``nn.Sequential`` containers; return (body layers, final ``nn.Linear`` head)."""
    layers = _leaves(model)
    head = layers[-1]
    if not is_plain_linear(head):
        raise UnsupportedLayerError(
            f"the model must end in nn.Linear (the logit layer), found {type(head).__name__}; "
            "build it as nn.Sequential(..., nn.Linear(features, n_classes))"
        )
    return layers[:-1], head

"""The L2 input guard: auto_LiRPA must read an L2 input perturbation through a linear layer.

auto_LiRPA (0.3 and 0.7.1 alike) represents an L2 input as the degenerate interval ``(x, x)``
tagged with the perturbation; only ``linear``/``conv`` nodes read the tag (their dual norm gives
``||W_i||_2 eps``). Any other node fed by the input (an activation, ``add`` of a residual,
``sub``/``div``, a pooling layer, ...) bounds it as if the ball were a point, which is unsound.
Such models are bounded behind a fixed identity linear layer (:class:`IdentityPrefix`): sound,
and as tight as the ball's enclosing box. A leading per-channel affine layer is better folded
into the next linear layer first (:func:`relaxplug.lirpa.forms.fold_leading_affine`), which keeps
the L2 geometry.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from relaxplug.lirpa.forms import AffineForm

__all__ = ["IdentityPrefix", "L2_PASSERS", "L2_READERS", "l2_input_is_safe"]

#: auto_LiRPA node types that read an L2 input perturbation correctly (first argument only) and
#: shape-only nodes that pass it on unchanged (norm preserving)
L2_READERS = frozenset({"BoundLinear", "BoundConv"})
L2_PASSERS = frozenset({"BoundFlatten", "BoundReshape"})


class IdentityPrefix(nn.Module):
    """``model(I x)`` with ``I`` a fixed identity linear map (1x1 convolution on images)."""

    def __init__(self, input_shape: Sequence[int], model: nn.Module, like: Tensor):
        super().__init__()
        shape = tuple(input_shape)
        if len(shape) not in (1, 3):
            raise ValueError(f"cannot guard L2 inputs of shape {shape}: only (d,) and (C, H, W) are supported")
        self.identity = AffineForm(shape, torch.ones(shape[0], dtype=like.dtype), None).to(like)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.identity(x))


def l2_input_is_safe(bounded: Any) -> bool:
    """Whether every use of the perturbed input of the ``BoundedModule`` ``bounded`` reads it
    through a linear or convolution layer (its first argument), possibly after reshapes."""
    nodes = list(bounded._modules.values())
    users: dict[int, list[tuple[Any, int]]] = {}
    for node in nodes:
        for index, parent in enumerate(getattr(node, "inputs", []) or []):
            users.setdefault(id(parent), []).append((node, index))
    stack = [n for n in nodes if type(n).__name__ == "BoundInput"]
    while stack:
        node = stack.pop()
        for user, index in users.get(id(node), []):
            kind = type(user).__name__
            if kind in L2_READERS and index == 0:
                continue
            if kind in L2_PASSERS and index == 0:
                stack.append(user)
                continue
            return False
    return True

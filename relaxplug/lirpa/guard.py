"""The L2 input guard: auto_LiRPA must read an L2 input perturbation through a linear layer.

auto_LiRPA (0.3 and 0.7.1 alike) represents an L2 input as the degenerate interval ``(x, x)``
tagged with the perturbation; only ``linear``/``conv`` nodes read the tag (their dual norm gives
``||W_i||_2 eps``, and only when ``W`` is a constant node: a computed weight sends the node down
auto_LiRPA's weight-perturbation path, which reads the input as a point). Any other node fed by the input (an activation, ``add`` of a residual,
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

__all__ = ["CONSTANT_OPERANDS", "IdentityPrefix", "L2_PASSERS", "L2_READERS", "REARRANGING_NODES", "WEIGHTED_NODES",
           "computed_weights", "l2_input_is_safe"]

#: auto_LiRPA node types that read an L2 input perturbation correctly (first argument only) and
#: shape-only nodes that pass it on unchanged (norm preserving)
L2_READERS = frozenset({"BoundLinear", "BoundConv"})
L2_PASSERS = frozenset({"BoundFlatten", "BoundReshape"})
#: node types a reader's weight and bias may be: with a computed weight (a parametrization,
#: ``w * s``) auto_LiRPA takes its weight-perturbation path, which reads the input as a point
CONSTANT_OPERANDS = frozenset({"BoundParams", "BoundBuffers", "BoundConstant"})
#: nodes whose operands after the first (weight, bias, statistics) must be constant leaves or the
#: input's own values: auto_LiRPA 0.3 returns bounds that do not even contain ``f(x)`` when a
#: weight is computed from parameters inside ``forward`` (``F.linear(x, w * s)``)
WEIGHTED_NODES = frozenset({"BoundLinear", "BoundMatMul", "BoundConv", "BoundConvTranspose",
                            "BoundBatchNormalization"})
#: nodes that only rearrange a constant (``w.t()``, a reshaped kernel): the result is still exact
REARRANGING_NODES = frozenset({"BoundTranspose", "BoundReshape", "BoundFlatten", "BoundUnsqueeze", "BoundSqueeze"})


def computed_weights(bounded: Any) -> list[str]:
    """Names of the :data:`WEIGHTED_NODES` of ``bounded`` that take an operand computed from
    parameters alone (neither a constant leaf nor dependent on the input)."""
    nodes = list(bounded._modules.values())
    dependent: set[int] = {id(n) for n in nodes if type(n).__name__ == "BoundInput"}
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if id(node) not in dependent and any(id(p) in dependent for p in getattr(node, "inputs", []) or []):
                dependent.add(id(node))
                changed = True
    def constant(node: Any) -> bool:  # a leaf, or a leaf rearranged (a transposed weight)
        kind = type(node).__name__
        return kind in CONSTANT_OPERANDS or (
            kind in REARRANGING_NODES and all(constant(p) for p in getattr(node, "inputs", []) or []))

    return [getattr(node, "name", type(node).__name__) for node in nodes
            if type(node).__name__ in WEIGHTED_NODES
            and any(not constant(o) and id(o) not in dependent for o in (getattr(node, "inputs", []) or [])[1:])]


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
    through a linear or convolution layer (its first argument) whose weight and bias are constant
    nodes (:data:`CONSTANT_OPERANDS`), possibly after reshapes."""
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
            operands = (getattr(user, "inputs", []) or [])[1:]
            if kind in L2_READERS and index == 0 and all(type(o).__name__ in CONSTANT_OPERANDS for o in operands):
                continue
            if kind in L2_PASSERS and index == 0:
                stack.append(user)
                continue
            return False
    return True

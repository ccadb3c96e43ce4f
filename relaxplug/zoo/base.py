"""What every zoo loader returns: the model, ready to certify, with what is known about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relaxplug.norms import Norm

__all__ = ["ZooModel", "ZooCheckpointError", "load_weights"]


class ZooCheckpointError(ValueError):
    """A checkpoint that cannot be used: unknown format, or weights of another architecture."""


@dataclass
class ZooModel:
    """A model from another project's zoo, in eval mode, taking raw inputs (pixels in ``[0, 1]``):
    any input normalization is inside ``model``, so ``eps`` is measured in the input space.

    Attributes:
        model: the ``nn.Module`` to certify (``rp.certify(zoo.model, x, eps, ...)``).
        source: ``"robustbench"``, ``"crown-ibp"`` or ``"auto-lirpa"``.
        name: the zoo entry (RobustBench) or architecture (CROWN-IBP / auto_LiRPA) name.
        input_shape: ``(C, H, W)`` of one input.
        n_classes: number of logits.
        path: the checkpoint read.
        dataset: the data set the model was trained on, when known (``cifar10``, ...).
        class_names: names of the classes, when known.
        norm: the norm of the model's threat model (RobustBench), else ``None``.
        eps: the radius its leaderboard or project evaluates at, else ``None``.
        details: anything else (architecture hyperparameters, normalization, ...).
    """

    model: nn.Module
    source: str
    name: str
    input_shape: tuple[int, ...]
    n_classes: int
    path: Path
    dataset: str | None = None
    class_names: tuple[str, ...] | None = None
    norm: float | None = None
    eps: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def metadata(self) -> dict[str, Any]:
        """Plain-data description (JSON-friendly), as relaxplug checkpoints carry."""
        norm = None if self.norm is None else Norm(self.norm).to_json()
        return {
            "source": self.source,
            "architecture": self.name,
            "input_shape": list(self.input_shape),
            "n_classes": self.n_classes,
            "dataset": self.dataset,
            "class_names": list(self.class_names) if self.class_names else None,
            "norm": norm,
            "eps": self.eps,
            "checkpoint": str(self.path),
            **self.details,
        }


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(state_dict)`` (strict), raising :class:`ZooCheckpointError` with the
    first differing keys and shapes when the weights belong to another architecture."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:4]
        unexpected = sorted(set(found) - set(expected))[:4]
        shapes = sorted(f"{k}: {found[k]} in the checkpoint, {expected[k]} in the model"
                        for k in set(expected) & set(found) if expected[k] != found[k])[:4]
        parts = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
                 f"shapes differ: {shapes}" if shapes else ""]
        raise ZooCheckpointError(f"{what}: the checkpoint's weights do not fit this architecture (a checkpoint "
                                 f"of another architecture?); " + "; ".join(p for p in parts if p))
    model.load_state_dict(state_dict)

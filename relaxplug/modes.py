"""Running a model in eval mode without losing any submodule's own mode."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore the ``training`` flag of every
    submodule as it was (``model.train(flag)`` would set one flag on all of them, e.g. turn a
    BatchNorm frozen in eval back to train mode inside a train-mode model)."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag

"""A training method's step under DistributedDataParallel.

DDP averages gradients over the ranks during ``backward`` for the parameters of the module
whose ``forward`` it ran. A method's step (:meth:`TrainingMethod.step`: GloRoNet's instrumented
forward and loss, CROWN-IBP's bounds, a plain forward) is wrapped in :class:`StepModule`, an
``nn.Module`` that owns the method's trained module, so DDP sees exactly the parameters and
buffers the step uses. Buffers (GloRo's power-iteration vectors) are broadcast from rank 0 by DDP
before every forward and by :meth:`DistributedStep.after_update` after every optimizer step, so
every rank trains against, and ends with, rank 0's Lipschitz state.
"""

from __future__ import annotations

from torch import Tensor, nn

from relaxplug import distributed
from relaxplug.distributed import DistributedContext
from relaxplug.training.methods import StepResult, TrainingMethod

__all__ = ["DistributedStep", "StepModule"]


class StepModule(nn.Module):
    """``forward(x, y, step, steps_per_epoch) = method.step(...)``, with ``method.module`` as its
    one submodule (its parameters and buffers are this module's)."""

    def __init__(self, method: TrainingMethod):
        super().__init__()
        self.trained = method.module
        self.method = method

    def forward(self, x: Tensor, y: Tensor, step: int, steps_per_epoch: int) -> StepResult:
        return self.method.step(x, y, step, steps_per_epoch)


class DistributedStep:
    """Runs ``method.step`` directly (one process) or through DDP (several processes)."""

    def __init__(self, method: TrainingMethod, context: DistributedContext):
        self.method = method
        self.context = context
        self.step_module = StepModule(method)
        self.runner = distributed.wrap_model(self.step_module, context)

    def __call__(self, x: Tensor, y: Tensor, step: int, steps_per_epoch: int) -> StepResult:
        return self.runner(x, y, step, steps_per_epoch)

    def after_update(self) -> None:
        """Give every rank rank 0's buffers (Lipschitz state) after an optimizer step."""
        distributed.broadcast_tensors(list(self.method.module.buffers()), self.context)

    def check_replicas(self, epoch: int) -> None:
        """Raise ``RuntimeError`` naming the tensors that differ between ranks after ``epoch``."""
        differ = distributed.replicas_disagree(self.method.module, self.context)
        if differ:
            raise RuntimeError(f"after epoch {epoch} the ranks hold different values of {', '.join(differ[:5])}"
                               f"{' ...' if len(differ) > 5 else ''}: the saved model would not be the trained one")

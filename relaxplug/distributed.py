"""Data-parallel runs launched by ``torchrun``: process group, devices, shards, gathers, reductions.

``torchrun --nproc_per_node=N ...`` starts ``N`` processes and gives each the environment
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`setup` reads them and joins the process group (NCCL on CUDA, gloo on the CPU); without
them it returns a one-process context and every helper here is the identity, so the same code
runs with and without ``torchrun``. Communication is ``torch.distributed``'s own collectives.

Shards are contiguous blocks in rank order (sizes differ by at most one), so concatenating the
gathered per-rank results in rank order restores the one-process order exactly.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from relaxplug.runtime import resolve_device

__all__ = [
    "DistributedContext",
    "launched_by_torchrun",
    "main_process",
    "rank_device",
    "setup",
    "teardown",
    "session",
    "shard_range",
    "per_process_batch",
    "training_sampler",
    "wrap_model",
    "gather_to_main",
    "reduce_sums",
    "broadcast_tensors",
    "replicas_disagree",
    "barrier",
]

logger = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the run: ``rank`` of ``world_size`` processes, ``device`` it
    computes on, ``backend`` of the process group (``None`` for a one-process run), and whether
    ``torchrun`` started it (with one process too)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    torchrun: bool = False

    @property
    def distributed(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """``True`` when the torchrun variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are set."""
    env = os.environ if environ is None else environ
    return all(name in env for name in TORCHRUN_VARIABLES)


def main_process(environ: Mapping[str, str] | None = None) -> bool:
    """``True`` in a one-process run and in torchrun's rank 0 (from ``RANK``; no process group needed)."""
    env = os.environ if environ is None else environ
    return env.get("RANK", "0").strip() == "0"


def _env_int(env: Mapping[str, str], name: str) -> int:
    value = env[name]
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"torchrun variable {name}={value!r} is not an integer") from None
    if number < 0:
        raise ValueError(f"torchrun variable {name}={value!r} is negative")
    return number


def rank_device(spec: str | torch.device, local_rank: int, world_size: int) -> torch.device:
    """The device of the process with ``local_rank``: ``cuda:LOCAL_RANK`` for ``auto``/``cuda``
    under torchrun (indices count the devices ``CUDA_VISIBLE_DEVICES`` leaves visible), the CPU
    for ``cpu``. A fixed ``cuda:N`` is refused with several processes (they would share one GPU)."""
    device = resolve_device(spec)
    if device.type != "cuda":
        return device
    if world_size > 1 and device.index is not None:
        raise ValueError(f"--device {device} names one GPU for {world_size} processes; pass --device cuda "
                         "(each process uses cuda:LOCAL_RANK) and choose GPUs with CUDA_VISIBLE_DEVICES")
    if world_size == 1 and device.index is not None:
        index = device.index
    else:
        index = local_rank
    visible = torch.cuda.device_count()
    if index >= visible:
        raise ValueError(f"process with LOCAL_RANK={local_rank} needs cuda:{index}, but only {visible} CUDA "
                         "device(s) are visible (check --nproc_per_node and CUDA_VISIBLE_DEVICES)")
    return torch.device("cuda", index)


def setup(device: str | torch.device = "auto", environ: Mapping[str, str] | None = None,
          timeout_s: float = 1800.0) -> DistributedContext:
    """Join the torchrun process group if launched by torchrun, and pick this process's device.

    Backend: NCCL when the device is CUDA, gloo otherwise. Under torchrun each process computes
    on ``cuda:LOCAL_RANK`` (``--device auto`` or ``cuda``) or on the CPU (``--device cpu``).
    """
    env = os.environ if environ is None else environ
    if not launched_by_torchrun(env):
        return DistributedContext(device=rank_device(device, 0, 1))
    rank, world, local = (_env_int(env, name) for name in TORCHRUN_VARIABLES)
    if rank >= world or local >= world:
        raise ValueError(f"torchrun variables RANK={rank}, LOCAL_RANK={local} do not fit WORLD_SIZE={world}")
    where = rank_device(device, local, world)
    if world == 1:
        return DistributedContext(rank=0, world_size=1, local_rank=local, device=where, torchrun=True)
    backend = "nccl" if where.type == "cuda" else "gloo"
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    logger.debug("rank %d/%d on %s (%s)", rank, world, where, backend)
    return DistributedContext(rank=rank, world_size=world, local_rank=local, device=where, backend=backend,
                              torchrun=True)


def teardown(context: DistributedContext) -> None:
    """Leave the process group (a no-op for a one-process run)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str | torch.device = "auto") -> Iterator[DistributedContext]:
    """:func:`setup` for the ``with`` block, :func:`teardown` after it, even when the work fails."""
    context = setup(device)
    try:
        yield context
    finally:
        teardown(context)


def shard_range(n_items: int, context: DistributedContext, granularity: int = 1) -> range:
    """This rank's contiguous block of ``range(n_items)``.

    The items are cut into chunks of ``granularity`` (the last may be shorter) and the chunks into
    ``world_size`` contiguous blocks whose sizes differ by at most one chunk (the first ranks take
    the extra ones). With ``granularity`` equal to the batch size, every rank certifies exactly the
    batches a one-process run certifies, so per-point results are bit-identical to it.
    """
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    if granularity < 1:
        raise ValueError(f"granularity must be >= 1, got {granularity}")
    chunks = -(-n_items // granularity)
    base, extra = divmod(chunks, context.world_size)
    first = context.rank * base + min(context.rank, extra)
    last = first + base + (1 if context.rank < extra else 0)
    return range(min(first * granularity, n_items), min(last * granularity, n_items))


def per_process_batch(global_batch: int, context: DistributedContext) -> int:
    """The batch each process loads for a ``global_batch`` (the config's ``batch_size``) split over
    ``world_size`` processes; it must divide evenly, so one step sees the same samples at every
    process count."""
    if global_batch % context.world_size:
        raise ValueError(f"batch_size {global_batch} is the global batch and must be divisible by the number of "
                         f"processes ({context.world_size}); each process loads batch_size / processes")
    return global_batch // context.world_size


def training_sampler(dataset: Dataset, context: DistributedContext, seed: int) -> DistributedSampler:
    """``DistributedSampler`` over ``dataset``: each epoch (``set_epoch``) one permutation drawn from
    ``seed + epoch``, dealt round-robin to the ranks (rank ``r`` takes positions ``r, r + W, ...``), so
    consecutive per-process batches of ``B / W`` together form the global batch of ``B`` consecutive
    positions, whatever ``W``. When ``W`` does not divide the data set, the first samples of the
    permutation are repeated to fill the last step (``drop_last=False``)."""
    return DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True,
                              seed=seed, drop_last=False)


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``DistributedDataParallel(model)`` for several processes (gradients averaged over ranks at
    ``backward``; buffers broadcast from rank 0 before each forward), ``model`` itself otherwise."""
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=True)


def gather_to_main(value: Any, context: DistributedContext) -> list[Any] | None:
    """Every rank's ``value`` (any picklable object; tensors are moved to the CPU first), as a list in
    rank order on rank 0, ``None`` elsewhere. One process: ``[value]``."""
    value = _to_cpu(value)
    if not context.distributed:
        return [value]
    out: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(value, out, dst=0)
    return out


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if hasattr(value, "to") and hasattr(value, "__dataclass_fields__"):
        return value.to("cpu")
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def reduce_sums(values: Mapping[str, float], context: DistributedContext) -> dict[str, float]:
    """Sum each named number over all ranks (every rank gets the sums), in float64.

    Reduce sums and counts, then divide: a mean of per-rank means is wrong for unequal shards.
    """
    names = sorted(values)
    if not context.distributed:
        return {name: float(values[name]) for name in names}
    device = context.device if context.backend == "nccl" else torch.device("cpu")
    packed = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return dict(zip(names, packed.tolist()))


def broadcast_tensors(tensors: Sequence[Tensor], context: DistributedContext, src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (same shapes on every rank).

    The values arrive in a copy and are written with ``copy_``, so each tensor's version counter
    moves as for any in-place write (caches keyed on it see the change).
    """
    if not context.distributed:
        return
    with torch.no_grad():
        for tensor in tensors:
            incoming = tensor.detach().clone()
            dist.broadcast(incoming, src=src)
            tensor.copy_(incoming)


def replicas_disagree(module: nn.Module, context: DistributedContext) -> list[str]:
    """Names of ``module``'s parameters and buffers whose bytes differ between ranks (every
    rank gets the same list; empty when all replicas are identical, and for one process)."""
    if not context.distributed:
        return []
    digests = {name: hashlib.sha256(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
               for name, tensor in [*module.named_parameters(), *module.named_buffers()]}
    every: list[Any] = [None] * context.world_size
    dist.all_gather_object(every, digests)
    return sorted(name for name in digests if len({ranks.get(name) for ranks in every}) > 1)


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (a no-op for a one-process run)."""
    if context.distributed:
        if context.backend == "nccl":
            dist.barrier(device_ids=[context.device.index])
        else:
            dist.barrier()

"""The training loop of ``relaxplug train``: data, optimizer, schedules, checkpoints.

What a batch's loss is belongs to the run's training method (:mod:`relaxplug.training.methods`:
GloRo through :class:`relaxplug.GloRoNet`, CROWN-IBP, natural); the loop only steps the
optimizer (Adam, SGD or NAdam, optionally inside Lookahead, with gradient clipping and a
learning-rate warm-up, :mod:`relaxplug.training.optim`) and keeps an EMA of the weights when
asked. Checkpoints are written atomically after every epoch and runs resume from them; with
EMA the checkpoint's model is the averaged one (certified with its own Lipschitz bound) and
the raw weights travel in its state for resuming.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm  # tqdm.auto would call iter(loader) once more per epoch (an extra shuffle draw)

from relaxplug import distributed
from relaxplug.adapters import Guarantee, load_sets, resolve_guarantee
from relaxplug.data import load_dataset
from relaxplug.lipschitz import load_lipschitz_state
from relaxplug.models.architectures import build_model
from relaxplug.errors import TrainingDiverged
from relaxplug.evaluation.report import format_history
from relaxplug.models.checkpoint import load_checkpoint, save_checkpoint
from relaxplug.outputs import atomic_write, lock_output_dir
from relaxplug.runtime import seed_everything
from relaxplug.training.config import TrainConfig, config_to_dict
from relaxplug.training.methods import METHODS, TrainingMethod
from relaxplug.training.optim import Lookahead, WeightEMA, build_optimizer, warmup_factor
from relaxplug.training.parallel import DistributedStep
from relaxplug.training.schedules import parse_schedule

__all__ = ["train", "TrainResult", "resolve_training_guarantee", "guarantee_name"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: nn.Module
    checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def guarantee_name(config: TrainConfig) -> str:
    """The guarantee name a checkpoint records: ``config.guarantee``, or for IGRP
    ``igrp:EPS_IN,EPS_OUT`` (its groups are the checkpoint's ``sets``)."""
    if config.guarantee.strip().lower() == "igrp":
        return f"igrp:{float(config.eps_in)!r},{float(config.eps)!r}"
    return config.guarantee


def resolve_training_guarantee(config: TrainConfig, data) -> tuple[Guarantee, tuple | None]:
    """The guarantee of a config, with bare ``affinity``/``superclass``/``igrp`` taking ``sets``,
    the sets of ``sets_file`` or the data set's named ``grouping``; returns the sets stored with
    the checkpoint too."""
    sets = config.sets
    if config.sets_file is not None:
        sets = load_sets(config.sets_file, data.class_names)
    if config.grouping is not None:
        if config.grouping not in data.groupings:
            raise ValueError(
                f"data set {data.name!r} has no grouping {config.grouping!r}; known: {sorted(data.groupings)}"
            )
        sets = tuple(tuple(s) for s in data.groupings[config.grouping])
    guarantee = resolve_guarantee(guarantee_name(config), sets=sets, class_names=data.class_names)
    guarantee.validate(data.n_classes)
    stored = getattr(guarantee, "sets", None)
    return guarantee, (tuple(tuple(s) for s in stored) if stored is not None else None)


def _metadata(config: TrainConfig, data, guarantee: Guarantee | None, sets, epoch: int) -> dict[str, Any]:
    return {
        "architecture": config.architecture,
        "input_shape": list(data.input_shape),
        "n_classes": int(data.n_classes),
        "dataset": data.name,
        "class_names": list(data.class_names),
        "guarantee": guarantee_name(config) if guarantee is not None else None,
        "guarantee_repr": repr(guarantee) if guarantee is not None else None,
        "sets": [list(s) for s in sets] if sets else None,
        "eps": float(config.eps),
        "eps_in": float(config.eps_in) if config.eps_in is not None else None,
        "norm": float(config.norm),
        "normalization": None,
        "method": config.method,
        "ema_decay": config.ema.decay,
        "epoch": epoch,
        "config": config_to_dict(config),
    }


def _optimizer(config: TrainConfig, module: nn.Module, lr: float):
    section = config.optimizer
    inner = build_optimizer(section.name, module.parameters(), lr, momentum=section.momentum,
                            weight_decay=section.weight_decay)
    return Lookahead(inner, section.lookahead_k, section.lookahead_alpha) if section.lookahead_k else inner


def train(config: TrainConfig, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train per ``config``; checkpoints go to ``config.output_dir / "checkpoint.pt"``.

    The output directory is checked writable and locked for the run (a second run on it is
    refused: :class:`relaxplug.outputs.OutputDirInUse`). A loss or weight that stops being
    finite stops the run (:class:`relaxplug.errors.TrainingDiverged`) and keeps the last good
    checkpoint. Each epoch appends to ``train.log`` (a table) and ``metrics.jsonl`` there.

    Under ``torchrun`` (``docs/distributed.md``) the run is data-parallel: ``batch_size`` is the
    global batch, each process loads ``batch_size / processes`` through a ``DistributedSampler``,
    DDP averages the gradients, metrics are summed over the ranks, and rank 0 alone locks the
    output directory, logs and writes checkpoints.
    """
    with distributed.session(config.device) as context:
        if not context.is_main:
            return _train(config, resume, False, context)
        with lock_output_dir(config.output_dir):
            return _train(config, resume, progress, context)


def _diverged(where: str, what: str, checkpoint: Path, epoch: int) -> TrainingDiverged:
    kept = f"the last good checkpoint (epoch {epoch}) is kept: {checkpoint}" if epoch else "no checkpoint was written"
    return TrainingDiverged(f"training diverged {where}: {what}; {kept} (lower lr or eps, or set optimizer.clip_grad_norm)")


def _nonfinite_parameters(module: nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters() if not bool(torch.isfinite(p).all())]


def _write_logs(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` (one JSON record per epoch) and ``train.log`` (the same as a table)."""
    lines = "".join(json.dumps(record) + "\n" for record in history).encode()
    atomic_write(out_dir / "metrics.jsonl", lambda handle: handle.write(lines), "metrics")
    table = (format_history(history, rows=len(history)) + "\n").encode()
    atomic_write(out_dir / "train.log", lambda handle: handle.write(table), "training log")


def _train(config: TrainConfig, resume: bool, progress: bool, context: distributed.DistributedContext) -> TrainResult:
    device = context.device
    if config.bf16 and device.type != "cuda":
        raise ValueError(f"bf16 autocast is for CUDA training; the run is on {device}")
    generator = seed_everything(config.seed)
    data = load_dataset(config.dataset, config.data_root, **config.dataset_options)
    train_set = data.train
    if config.limit_train is not None:
        train_set = Subset(train_set, range(min(config.limit_train, len(train_set))))
    sampler = distributed.training_sampler(train_set, context, config.seed) if context.torchrun else None
    if sampler is None:
        loader = DataLoader(
            train_set, batch_size=config.batch_size, shuffle=True, generator=generator,
            num_workers=config.num_workers, drop_last=False,
        )
    else:  # the order depends on seed and epoch only: the same global batches at any process count
        loader = DataLoader(train_set, batch_size=distributed.per_process_batch(config.batch_size, context),
                            sampler=sampler, num_workers=config.num_workers, drop_last=False)
    model = build_model(config.architecture, data.input_shape, data.n_classes).to(device)
    method_class = METHODS.get(config.method)
    guarantee, sets = resolve_training_guarantee(config, data) if method_class.needs_guarantee else (None, None)
    example = train_set[0][0][None].to(device)
    method: TrainingMethod = method_class(model, guarantee, config.method_options, config.run_settings,
                                          example, data.n_classes)
    lr_schedule = parse_schedule(config.lr)
    optimizer = _optimizer(config, method.module, lr_schedule(0, config.epochs))
    ema = WeightEMA(model, config.ema.decay) if config.ema.decay is not None else None

    out_dir = config.output_dir
    checkpoint_path = out_dir / "checkpoint.pt"
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume and checkpoint_path.is_file():
        loaded = load_checkpoint(checkpoint_path, device)
        if loaded.metadata.get("config") != config_to_dict(config):
            raise ValueError(
                f"{checkpoint_path} was written by a different config; use another out_dir or resume=False"
            )
        state = loaded.state or {}
        weights = state["training_model"] if "training_model" in state else loaded.model.state_dict()
        load_lipschitz_state(model, weights)  # power-iteration buffers, created here
        model.load_state_dict(weights)
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state.get("method", {}))
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        if "rng" in state:
            torch.set_rng_state(state["rng"])
            generator.set_state(state["loader_rng"])
        history = json.loads(state.get("history", "[]"))
        start_epoch = int(loaded.metadata["epoch"])
        if context.is_main:
            logger.info("resuming %s at epoch %d", checkpoint_path, start_epoch)
    stepper = DistributedStep(method, context)  # DDP over the method's module under torchrun

    warmup = config.optimizer.warmup_epochs
    clip = config.optimizer.clip_grad_norm
    for epoch in range(start_epoch, config.epochs):
        lr = lr_schedule(epoch, config.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        figures = method.begin_epoch(epoch)
        method.module.train()
        if sampler is not None:
            sampler.set_epoch(epoch)
        totals = {"loss": 0.0, "correct": 0, "robust_correct": 0, "count": 0}
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for batch_index, (x, y) in enumerate(bar):
            x, y = x.to(device), y.to(device)
            step = epoch * len(loader) + batch_index
            if warmup:
                for group in optimizer.param_groups:
                    group["lr"] = lr * warmup_factor(step, len(loader), warmup)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                out = stepper(x, y, step, len(loader))
            if not bool(torch.isfinite(out.loss.detach())):
                raise _diverged(f"at epoch {epoch + 1}, batch {batch_index + 1}", f"the loss is {out.loss.item()}",
                                checkpoint_path, epoch)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(method.module.parameters(), clip)
            optimizer.step()
            stepper.after_update()
            if ema is not None:
                ema.update(model)
            totals["loss"] += out.loss.item() * len(y)
            totals["correct"] += (out.logits.argmax(1) == y).sum().item()
            totals["robust_correct"] += out.robust_correct
            totals["count"] += len(y)
            figures.update(out.figures)
            bar.set_postfix(loss=f"{out.loss.item():.3f}", refresh=False)
        totals = distributed.reduce_sums(totals, context)  # sums and counts over the ranks
        stepper.check_replicas(epoch + 1)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            **figures,
            "loss": totals["loss"] / totals["count"],
            "train_accuracy": totals["correct"] / totals["count"],
            "train_instrumented_accuracy": totals["robust_correct"] / totals["count"],
            "seconds": time.perf_counter() - start,
        }
        broken = _nonfinite_parameters(method.module)
        if broken:
            raise _diverged(f"in epoch {epoch + 1}", f"non-finite weights in {', '.join(broken[:3])}", checkpoint_path, epoch)
        history.append(record)
        if context.is_main:
            logger.info("epoch %d: %s", epoch + 1, record)
            state = {
                "optimizer": optimizer.state_dict(),
                "method": method.state_dict(),
                "rng": torch.get_rng_state(),
                "loader_rng": generator.get_state(),
                "history": json.dumps(history),
            }
            if ema is not None:
                state["ema"] = ema.state_dict()
                state["training_model"] = model.state_dict()
            saved = ema.model if ema is not None else model
            save_checkpoint(checkpoint_path, saved, _metadata(config, data, guarantee, sets, epoch + 1), state)
            _write_logs(out_dir, history)
            if progress:
                table = format_history([record])  # the epoch's row stays on screen; the bar clears itself
                bar.write(table if epoch == start_epoch else table.splitlines()[-1])
        distributed.barrier(context)  # the others wait for rank 0's checkpoint

    model.eval()
    metadata = _metadata(config, data, guarantee, sets, config.epochs)
    if context.is_main and not checkpoint_path.is_file():
        save_checkpoint(checkpoint_path, model, metadata, None)
    distributed.barrier(context)
    final = ema.model if ema is not None else model
    return TrainResult(model=final, checkpoint=checkpoint_path, history=history, metadata=metadata)


"""Training loop: GloRo-instrumented certified training, CROWN-IBP training or natural training.

Per batch (Leino et al. 2021): ``power_iterations`` power iterations per layer from persistent
vectors give a differentiable body bound ``L``; ``K_ji = L ||w_j - w_i||``; the guarantee's
margin ``m`` gives the instrumented output ``g`` (Equation B2) and the loss (cross-entropy or
TRADES). With ``method: crown-ibp`` the loss is CROWN-IBP's on auto_LiRPA bounds (standard or
IGRP, :mod:`relaxplug.training.crown_ibp`), its eps ramp and kappa/beta schedules per batch.
Checkpoints are written atomically after every epoch and runs resume from them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from relaxplug.adapters import Guarantee, load_sets, resolve_guarantee
from relaxplug.models.checkpoint import load_checkpoint, save_checkpoint
from relaxplug.training.config import TrainConfig, config_to_dict
from relaxplug.lipschitz import LipschitzEstimator, head_distances
from relaxplug.models.architectures import build_model
from relaxplug.runtime import resolve_device, seed_everything

from relaxplug.training.losses import gloro_cross_entropy, gloro_trades, guarantee_margin, instrumented_logits
from relaxplug.training.schedules import parse_schedule

__all__ = ["train", "TrainResult", "resolve_training_guarantee", "gloro_step_loss", "guarantee_name"]

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


def gloro_step_loss(
    model: nn.Module,
    estimator: LipschitzEstimator,
    guarantee: Guarantee,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    loss: str,
    trades_lambda: float,
    power_iterations: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of one GloRo training step; returns ``(loss, logits, instrumented logits)``."""
    logits = model(x)
    body = estimator.power(power_iterations)
    head = estimator.head.weight
    pair_lipschitz = body * head_distances(head)
    margin = guarantee_margin(logits, pair_lipschitz, eps, guarantee)
    instrumented = instrumented_logits(logits, margin)
    if loss == "trades":
        value = gloro_trades(logits, instrumented, y, trades_lambda)
    else:
        value = gloro_cross_entropy(instrumented, y)
    return value, logits, instrumented


def _metadata(config: TrainConfig, data, guarantee: Guarantee | None, sets, epoch: int) -> dict[str, Any]:
    return {
        "architecture": config.architecture,
        "input_shape": list(data.input_shape),
        "n_classes": int(data.n_classes),
        "dataset": data.name,
        "class_names": list(data.class_names),
        "guarantee": guarantee_name(config) if config.method != "natural" else None,
        "guarantee_repr": repr(guarantee) if guarantee is not None else None,
        "sets": [list(s) for s in sets] if sets else None,
        "eps": float(config.eps),
        "eps_in": float(config.eps_in) if config.eps_in is not None else None,
        "norm": float(config.norm),
        "normalization": None,
        "method": config.method,
        "epoch": epoch,
        "config": config_to_dict(config),
    }


def train(config: TrainConfig, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train per ``config``; checkpoints go to ``config.output_dir / "checkpoint.pt"``."""
    from relaxplug.data import load_dataset

    device = resolve_device(config.device)
    generator = seed_everything(config.seed)
    data = load_dataset(config.dataset, config.data_root, **config.dataset_options)
    train_set = data.train
    if config.limit_train is not None:
        train_set = Subset(train_set, range(min(config.limit_train, len(train_set))))
    loader = DataLoader(
        train_set, batch_size=config.batch_size, shuffle=True, generator=generator,
        num_workers=config.num_workers, drop_last=False,
    )
    model = build_model(config.architecture, data.input_shape, data.n_classes).to(device)
    guarantee, sets = (None, None)
    estimator = None
    crown_ibp = None
    if config.method in ("gloro", "crown-ibp"):
        guarantee, sets = resolve_training_guarantee(config, data)
    if config.method == "gloro":
        estimator = LipschitzEstimator(model, data.input_shape)
    elif config.method == "crown-ibp":
        from relaxplug.training.crown_ibp import CrownIBPLoss, CrownIBPSchedule

        schedule = CrownIBPSchedule.parse(config.warmup_epochs, config.eps_ramp_epochs, config.kappa, config.beta)
        example = train_set[0][0][None].to(device)
        crown_ibp = CrownIBPLoss(model, guarantee, config.eps, config.norm, schedule, example, data.n_classes)
    lr_schedule = parse_schedule(config.lr)
    lam_schedule = parse_schedule(config.trades_lambda)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr_schedule(0, config.epochs))

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
        model.load_state_dict(loaded.model.state_dict())
        state = loaded.state or {}
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if estimator is not None and "lipschitz_vectors" in state:
            estimator.load_state_dict(state["lipschitz_vectors"])
        if "rng" in state:
            torch.set_rng_state(state["rng"])
            generator.set_state(state["loader_rng"])
        history = json.loads(state.get("history", "[]"))
        start_epoch = int(loaded.metadata["epoch"])
        logger.info("resuming %s at epoch %d", checkpoint_path, start_epoch)

    for epoch in range(start_epoch, config.epochs):
        lr = lr_schedule(epoch, config.epochs)
        lam = lam_schedule(epoch, config.epochs)
        eps = config.eps
        if config.eps_ramp_epochs and config.method == "gloro":
            eps = config.eps * min(1.0, (epoch + 1) / config.eps_ramp_epochs)
        mixing: dict[str, float] = {}
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        totals = {"loss": 0.0, "correct": 0, "robust_correct": 0, "count": 0}
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for batch_index, (x, y) in enumerate(bar):
            x, y = x.to(device), y.to(device)
            if crown_ibp is not None:
                out = crown_ibp(x, y, epoch * len(loader) + batch_index, len(loader))
                loss, logits, robust = out.loss, out.logits, out.bound_correct
                eps, mixing = out.eps, {"kappa": out.kappa, "beta": out.beta}
            elif config.method == "gloro":
                loss, logits, instrumented = gloro_step_loss(
                    model, estimator, guarantee, x, y, eps, config.loss, lam, config.power_iterations
                )
                robust = (instrumented.argmax(1) == y).sum().item()
            else:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                robust = 0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            totals["loss"] += loss.item() * len(y)
            totals["correct"] += (logits.argmax(1) == y).sum().item()
            totals["robust_correct"] += robust
            totals["count"] += len(y)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "trades_lambda": lam if config.loss == "trades" else None,
            "eps": eps,
            "loss": totals["loss"] / totals["count"],
            "train_accuracy": totals["correct"] / totals["count"],
            "train_instrumented_accuracy": totals["robust_correct"] / totals["count"],
            "seconds": time.perf_counter() - start,
            **mixing,  # crown-ibp: kappa and beta of the epoch's last batch
        }
        history.append(record)
        logger.info("epoch %d: %s", epoch + 1, record)
        state = {
            "optimizer": optimizer.state_dict(),
            "lipschitz_vectors": estimator.state_dict() if estimator is not None else {},
            "rng": torch.get_rng_state(),
            "loader_rng": generator.get_state(),
            "history": json.dumps(history),
        }
        save_checkpoint(checkpoint_path, model, _metadata(config, data, guarantee, sets, epoch + 1), state)

    model.eval()
    metadata = _metadata(config, data, guarantee, sets, config.epochs)
    if not checkpoint_path.is_file():
        save_checkpoint(checkpoint_path, model, metadata, None)
    return TrainResult(model=model, checkpoint=checkpoint_path, history=history, metadata=metadata)

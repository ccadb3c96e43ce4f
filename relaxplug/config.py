"""YAML run configurations as typed, frozen dataclasses; unknown keys are errors."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .training.schedules import parse_schedule

__all__ = ["TrainConfig", "load_config", "apply_overrides", "config_to_dict"]

LOSSES = ("ce", "trades")
METHODS = ("gloro", "natural")


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Schedules use Table F1's notation (``relaxplug.training.schedules``).

    ``method``: ``gloro`` (GloRo-instrumented certified training for ``guarantee`` at ``eps``)
    or ``natural`` (plain cross-entropy, e.g. to derive IGRP groups from the weights).
    ``sets``/``grouping``: affinity sets for a bare ``affinity``/``superclass`` guarantee, given
    inline or by the name of a data set's built-in grouping (e.g. ``coarse`` for CIFAR-100).
    """

    name: str = "run"
    dataset: str = "digits"
    data_root: str | None = None
    dataset_options: dict = field(default_factory=dict)
    architecture: str = "digits_cnn"
    method: str = "gloro"
    guarantee: str = "standard"
    sets: tuple | None = None
    grouping: str | None = None
    eps: float = 0.3
    norm: float = 2.0
    epochs: int = 40
    batch_size: int = 128
    lr: str = "1e-3 -> 1e-6 after half"
    loss: str = "trades"
    trades_lambda: str = "0.01 -> 1.2 log half"
    eps_ramp_epochs: int = 0
    power_iterations: int = 2
    seed: int = 0
    device: str = "auto"
    out_dir: str | None = None
    limit_train: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {self.eps!r}")
        if float(self.norm) != 2.0:
            raise ValueError("GloRo training bounds L2 Lipschitz constants: norm must be 2")
        for name in ("epochs", "batch_size", "power_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.eps_ramp_epochs < 0 or self.eps_ramp_epochs > self.epochs:
            raise ValueError(f"eps_ramp_epochs must be in [0, epochs], got {self.eps_ramp_epochs}")
        parse_schedule(self.lr)
        parse_schedule(self.trades_lambda)
        if self.sets is not None:
            object.__setattr__(self, "sets", tuple(tuple(int(c) for c in s) for s in self.sets))

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


def _check_keys(data: dict, source: str) -> None:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown config key(s) {unknown}; known keys: {sorted(known)}")


def _from_mapping(data: dict, source: str) -> TrainConfig:
    _check_keys(data, source)
    return TrainConfig(**data)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config and apply ``key=value`` overrides (values parsed as YAML)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file}")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{file}: a config is a mapping of keys to values")
    data = _merge_overrides(data, overrides)
    return _from_mapping(data, str(file))


def _merge_overrides(data: dict, overrides: Sequence[str]) -> dict:
    data = dict(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override must look like key=value, got {item!r}")
        _check_keys({key.strip(): None}, f"--set {item}")
        data[key.strip()] = yaml.safe_load(value)
    return data


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Return ``config`` with ``key=value`` overrides applied."""
    return _from_mapping(_merge_overrides(config_to_dict(config), overrides), "overrides")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    if data["sets"] is not None:
        data["sets"] = [list(s) for s in data["sets"]]
    return data

"""YAML run configurations as typed, frozen dataclasses; unknown keys are errors."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from relaxplug.training.schedules import parse_schedule

__all__ = ["TrainConfig", "load_config", "apply_overrides", "config_to_dict"]

LOSSES = ("ce", "trades")
METHODS = ("gloro", "natural", "crown-ibp")
CROWN_IBP_GUARANTEES = ("standard", "igrp")


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Schedules use Table F1's notation (``relaxplug.training.schedules``).

    ``method``: ``gloro`` (GloRo-instrumented certified training for ``guarantee`` at ``eps``),
    ``natural`` (plain cross-entropy, e.g. to derive IGRP groups from the weights) or
    ``crown-ibp`` (CROWN-IBP bounds through auto_LiRPA, Zhang et al. 2020; guarantees ``standard``
    and ``igrp``; norm ``inf`` or ``2``; :mod:`relaxplug.training.crown_ibp`).
    ``sets``/``grouping``/``sets_file``: affinity sets (or IGRP groups) for a bare
    ``affinity``/``superclass``/``igrp`` guarantee, given inline, by the name of a data set's
    built-in grouping (e.g. ``coarse`` for CIFAR-100), or as a YAML file (e.g. written by
    ``relaxplug groups``); at most one of the three.
    IGRP (``guarantee: igrp``, methods ``gloro`` and ``crown-ibp``): ``eps`` is the outer radius
    (between groups) and ``eps_in <= eps`` the inner one.
    CROWN-IBP schedule: ``warmup_epochs`` natural epochs, then ``eps`` (and ``eps_in``) ramp
    linearly per batch over ``eps_ramp_epochs`` while ``kappa`` (natural-loss weight) and
    ``beta`` (CROWN-IBP weight in the CROWN-IBP/IBP bound mix) go from start to end; both
    default to ``"1 -> 0"``. ``loss``, ``trades_lambda`` and ``power_iterations`` are GloRo's.
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
    eps_in: float | None = None
    sets_file: str | None = None
    warmup_epochs: int = 0
    kappa: str | None = None
    beta: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise ValueError(f"eps must be a number >= 0, got {self.eps!r}")
        norm = _parse_norm_value(self.norm)
        object.__setattr__(self, "norm", norm)
        if self.method == "crown-ibp":
            if norm not in (2.0, math.inf):
                raise ValueError(f"CROWN-IBP training supports norm 2 or inf, got {self.norm!r}")
        elif norm != 2.0:
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
        self._check_groups_and_crown_ibp()

    def _check_groups_and_crown_ibp(self) -> None:
        """Validate the keys of IGRP and CROWN-IBP runs (and reject them elsewhere)."""
        given = [k for k in ("sets", "grouping", "sets_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of sets, grouping and sets_file, got {given}")
        kind, _, argument = str(self.guarantee).strip().partition(":")
        if kind.lower() == "igrp":
            if argument:
                raise ValueError("in a config IGRP is 'guarantee: igrp' with its groups in sets/sets_file/grouping, "
                                 f"eps (outer radius) and eps_in (inner radius); got guarantee {self.guarantee!r}")
            if self.method == "natural":
                raise ValueError("guarantee igrp needs method gloro or crown-ibp")
            if not given:
                raise ValueError("guarantee igrp needs groups: give sets, sets_file or grouping")
            if self.eps_in is None:
                raise ValueError("guarantee igrp needs eps_in (inner radius; eps is the outer radius)")
            if isinstance(self.eps_in, bool) or not isinstance(self.eps_in, (int, float)) or not 0 <= self.eps_in <= self.eps:
                raise ValueError(f"eps_in must be a number in [0, eps={self.eps}], got {self.eps_in!r}")
        elif self.eps_in is not None:
            raise ValueError(f"eps_in is IGRP's inner radius; guarantee {self.guarantee!r} takes only eps")
        if isinstance(self.warmup_epochs, bool) or not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}")
        if self.method == "crown-ibp":
            if kind.lower() not in CROWN_IBP_GUARANTEES:
                raise ValueError(f"method crown-ibp trains the guarantees {CROWN_IBP_GUARANTEES}, got {self.guarantee!r}")
            if self.warmup_epochs + self.eps_ramp_epochs > self.epochs:
                raise ValueError(f"warmup_epochs + eps_ramp_epochs ({self.warmup_epochs} + {self.eps_ramp_epochs}) "
                                 f"exceeds epochs ({self.epochs})")
            for name in ("kappa", "beta"):
                value = getattr(self, name)
                if value is None:
                    continue
                schedule = parse_schedule(value)
                if schedule.span != "full":
                    raise ValueError(f"{name} follows the eps ramp: give 'START -> END' without 'half', got {value!r}")
                if not (0.0 <= schedule.start <= 1.0 and 0.0 <= schedule.end <= 1.0):
                    raise ValueError(f"{name} is a weight in [0, 1], got {value!r}")
        else:
            extra = [k for k in ("kappa", "beta") if getattr(self, k) is not None]
            if self.warmup_epochs:
                extra.append("warmup_epochs")
            if extra:
                raise ValueError(f"{extra} are CROWN-IBP settings; they need method crown-ibp (got {self.method!r})")

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


def _parse_norm_value(norm: object) -> float:
    """``2``, ``inf`` (or the strings ``"2"``, ``"inf"``, ``"linf"``, ``"l2"``) as a float."""
    if isinstance(norm, str):
        text = norm.strip().lower()
        text = {"linf": "inf", "l_inf": "inf", "l2": "2"}.get(text, text)
        try:
            norm = float(text)
        except ValueError:
            raise ValueError(f"norm must be 2 or inf, got {norm!r}") from None
    if isinstance(norm, bool) or not isinstance(norm, (int, float)):
        raise ValueError(f"norm must be 2 or inf, got {norm!r}")
    return float(norm)


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

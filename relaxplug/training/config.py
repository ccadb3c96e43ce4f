"""YAML run configurations as typed, frozen dataclasses; unknown keys are errors.

A config holds the run's common keys (data, model, guarantee, radius, epochs, learning rate),
an ``optimizer`` section, an ``ema`` section and one section for its training method, under
the method's name (``gloro:``, ``crown-ibp:``; :mod:`relaxplug.training.methods`)::

    method: gloro
    guarantee: "rtk:2"
    eps: 0.3
    gloro: {loss: trades, trades_lambda: "0.01 -> 1.2 log half", power_iterations: 2}
    optimizer: {name: nadam, lookahead_k: 5, clip_grad_norm: 10.0, warmup_epochs: 2}
    ema: {decay: 0.999}

Overrides are ``key=value`` or ``section.key=value`` (values parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from relaxplug.norms import Norm
from relaxplug.runtime import parse_device
from relaxplug.training.methods import METHODS, RunSettings
from relaxplug.training.optim import OPTIMIZERS
from relaxplug.training.schedules import parse_schedule

__all__ = [
    "EMASection", "OptimizerSection", "TrainConfig", "apply_overrides", "config_from_mapping", "config_to_dict", "load_config",
]


def _positive_int(value: object, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class OptimizerSection:
    """``name``: sgd, adam or nadam (``momentum`` for sgd; ``weight_decay`` L2 decay);
    Lookahead with ``lookahead_k`` fast steps (0: off) and slow step ``lookahead_alpha``;
    ``clip_grad_norm``: clip the gradient's global L2 norm (None: off); ``warmup_epochs``:
    linear learning-rate warm-up per batch (:mod:`relaxplug.training.optim`)."""

    name: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lookahead_k: int = 0
    lookahead_alpha: float = 0.5
    clip_grad_norm: float | None = None
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {self.name!r}")
        if not 0.0 <= _number(self.momentum, "optimizer.momentum") < 1.0:
            raise ValueError(f"optimizer.momentum must be in [0, 1), got {self.momentum!r}")
        if _number(self.weight_decay, "optimizer.weight_decay") < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay!r}")
        _positive_int(self.lookahead_k, "optimizer.lookahead_k", 0)
        if not 0.0 < _number(self.lookahead_alpha, "optimizer.lookahead_alpha") <= 1.0:
            raise ValueError(f"optimizer.lookahead_alpha must be in (0, 1], got {self.lookahead_alpha!r}")
        if self.clip_grad_norm is not None and _number(self.clip_grad_norm, "optimizer.clip_grad_norm") <= 0:
            raise ValueError(f"optimizer.clip_grad_norm must be > 0, got {self.clip_grad_norm!r}")
        _positive_int(self.warmup_epochs, "optimizer.warmup_epochs", 0)


@dataclass(frozen=True)
class EMASection:
    """``decay``: keep an exponential moving average of the weights with this decay (None: off);
    the checkpoint's model is then the average, certified with its own bound."""

    decay: float | None = None

    def __post_init__(self) -> None:
        if self.decay is not None and not 0.0 < _number(self.decay, "ema.decay") < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {self.decay!r}")


SECTIONS = {"optimizer": OptimizerSection, "ema": EMASection}


def _section(cls: type, value: Any, name: str) -> Any:
    """A section from a mapping (unknown keys are errors), or the instance itself."""
    if isinstance(value, cls):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"section {name!r} must be a mapping of keys to values, got {value!r}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"section {name!r}: unknown key(s) {unknown}; known keys: {known}")
    return cls(**value)


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Schedules use Table F1's notation (``relaxplug.training.schedules``).

    ``method``: a registered training method (``gloro``, ``crown-ibp``, ``natural``); its
    settings are ``method_options`` (YAML: the section named after the method).
    ``architecture``: a registered name or an import path ``package.module:function``.
    ``sets``/``grouping``/``sets_file``: affinity sets (or IGRP groups) for a bare
    ``affinity``/``superclass``/``igrp`` guarantee, inline, by the name of a data set's built-in
    grouping (e.g. ``coarse`` for CIFAR-100), or as a YAML file; at most one of the three.
    IGRP (``guarantee: igrp``): ``eps`` is the outer radius, ``eps_in <= eps`` the inner one.
    ``eps_min``/``eps_ramp_epochs``: the training radius ramps from ``eps_min`` to ``eps``.
    ``batch_size`` is the global batch (under torchrun each process loads ``batch_size /
    processes``). ``bf16``: the model's forward pass under bf16 autocast (CUDA; the Lipschitz
    bound, margins and loss stay float32; ``docs/distributed.md``).
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
    sets_file: str | None = None
    eps: float = 0.3
    eps_in: float | None = None
    eps_min: float = 0.0
    eps_ramp_epochs: int = 0
    norm: float = 2.0
    epochs: int = 40
    batch_size: int = 128
    lr: str = "1e-3 -> 1e-6 after half"
    seed: int = 0
    device: str = "auto"
    out_dir: str | None = None
    limit_train: int | None = None
    num_workers: int = 0
    bf16: bool = False
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    ema: EMASection = field(default_factory=EMASection)
    method_options: Any = None

    def __post_init__(self) -> None:
        _check_types(self)
        if not (isinstance(self.eps, (int, float)) and not isinstance(self.eps, bool) and 0 <= self.eps < math.inf):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        object.__setattr__(self, "norm", _parse_norm_value(self.norm))
        _positive_int(self.epochs, "epochs")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.eps_ramp_epochs, "eps_ramp_epochs", 0)
        if self.eps_ramp_epochs > self.epochs:  # e.g. a shortened run of a long config: ramp over the whole run
            warnings.warn(f"eps_ramp_epochs={self.eps_ramp_epochs} is longer than the run ({self.epochs} epochs): "
                          f"clipped to {self.epochs}", stacklevel=3)
            object.__setattr__(self, "eps_ramp_epochs", self.epochs)
        if not 0 <= _number(self.eps_min, "eps_min") <= self.eps:
            raise ValueError(f"eps_min must be in [0, eps={self.eps}], got {self.eps_min!r}")
        try:
            lr = parse_schedule(self.lr)
        except ValueError as error:
            raise ValueError(f"lr: {error}") from None
        if not all(math.isfinite(v) and v > 0 for v in (lr.start, lr.end)):
            raise ValueError(f"lr must be a finite number > 0 (or a schedule between two), got {self.lr!r}")
        if self.sets is not None:
            object.__setattr__(self, "sets", tuple(tuple(int(c) for c in s) for s in self.sets))
        for name, cls in SECTIONS.items():
            object.__setattr__(self, name, _section(cls, getattr(self, name), name))
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be true or false, got {self.bf16!r}")
        if self.bf16 and self.method == "crown-ibp":
            raise ValueError("bf16 autocast is for gloro and natural training: CROWN-IBP's bounds are its margins "
                             "and stay in float32")
        method = METHODS.get(self.method)
        object.__setattr__(self, "method_options", _section(method.Section, self.method_options, self.method))
        self._check_groups()
        method.check(self.method_options, self.run_settings)

    def _check_groups(self) -> None:
        """Validate the keys of IGRP runs (and reject them elsewhere)."""
        given = [k for k in ("sets", "grouping", "sets_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of sets, grouping and sets_file, got {given}")
        kind, _, argument = str(self.guarantee).strip().partition(":")
        if kind.lower() == "igrp" and METHODS.get(self.method).needs_guarantee:
            if argument:
                raise ValueError("in a config IGRP is 'guarantee: igrp' with its groups in sets/sets_file/grouping, "
                                 f"eps (outer radius) and eps_in (inner radius); got guarantee {self.guarantee!r}")
            if not given:
                raise ValueError("guarantee igrp needs groups: give sets, sets_file or grouping")
            if self.eps_in is None:
                raise ValueError("guarantee igrp needs eps_in (inner radius; eps is the outer radius)")
            if isinstance(self.eps_in, bool) or not isinstance(self.eps_in, (int, float)) or not 0 <= self.eps_in <= self.eps:
                raise ValueError(f"eps_in must be a number in [0, eps={self.eps}], got {self.eps_in!r}")
        elif kind.lower() != "igrp" and self.eps_in is not None:
            raise ValueError(f"eps_in is IGRP's inner radius; guarantee {self.guarantee!r} takes only eps")

    @property
    def run_settings(self) -> RunSettings:
        """What the training method reads of the common keys."""
        return RunSettings(eps=float(self.eps), epochs=self.epochs, norm=self.norm, guarantee=str(self.guarantee),
                           eps_min=float(self.eps_min), eps_ramp_epochs=self.eps_ramp_epochs)

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("runs") / self.name


#: what a common key's annotation accepts: (types, description for the error)
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "str | None": ((str, type(None)), "a string or null"),
    "int": ((int,), "an integer"),
    "int | None": ((int, type(None)), "an integer or null"),
    "float": ((int, float), "a number"),
    "float | None": ((int, float, type(None)), "a number or null"),
    "dict": ((dict,), "a mapping of keys to values"),
    "tuple | None": ((list, tuple, type(None)), "a list of class-index lists or null"),
}
#: keys whose values may also be numbers (a constant schedule) or are parsed by their own check
_LENIENT = {"lr": (int, float), "norm": (str, int, float), "device": (str,)}


def _check_types(config: "TrainConfig") -> None:
    """Each common key's value against its annotation: ``ValueError`` naming the key, the
    expected kind and the value (booleans are not numbers; ``limit_train`` is >= 1 or null)."""
    for f in dataclasses.fields(config):
        kind = _KINDS.get(str(f.type))
        if kind is None:
            continue  # sections and method options check themselves
        value = getattr(config, f.name)
        allowed = kind[0] + _LENIENT.get(f.name, ())
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise ValueError(f"{f.name} must be {kind[1]}, got {value!r}")
    if config.sets is not None and not all(isinstance(s, (list, tuple)) and all(isinstance(c, int) and not isinstance(c, bool)
                                                                             for c in s) for s in config.sets):
        raise ValueError(f"sets must be a list of class-index lists, e.g. [[0, 1], [2, 3]], got {config.sets!r}")
    if config.limit_train is not None:
        _positive_int(config.limit_train, "limit_train")
    _positive_int(config.num_workers, "num_workers", 0)
    parse_device(config.device)


def _parse_norm_value(norm: object) -> float:
    """``2``, ``inf`` (or ``"2"``, ``"inf"``, ``"linf"``, ``"l2"``) as a float (:class:`~relaxplug.norms.Norm`)."""
    if isinstance(norm, bool) or not isinstance(norm, (str, int, float)):
        raise ValueError(f"norm must be 2 or inf, got {norm!r}")
    return float(Norm(norm))


_COMMON = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "method_options")


def _owner_of(key: str) -> str | None:
    """The method whose section has ``key`` (for a clear error on a misplaced key)."""
    for name in METHODS.names():
        if key in {f.name for f in dataclasses.fields(METHODS.get(name).Section)}:
            return name
    return None


def _from_mapping(data: dict, source: str) -> TrainConfig:
    data = dict(data)
    method = data.get("method", TrainConfig.method)
    if not isinstance(method, str):
        raise ValueError(f"{source}: method must be a name, got {method!r}")
    METHODS.get(method)
    options = data.pop(method, None)
    unknown = sorted(set(data) - set(_COMMON))
    for key in unknown:
        if key in METHODS:
            raise ValueError(f"{source}: section {key!r} is for method {key}, but the method is {method!r}")
        owner = _owner_of(key)
        if owner is not None:
            raise ValueError(f"{source}: {key!r} is a setting of method {owner}: write it in the section "
                             f"'{owner}:' (e.g. '{owner}: {{{key}: ...}}')")
    if unknown:
        raise ValueError(f"{source}: unknown config key(s) {unknown}; known keys: "
                         f"{sorted(_COMMON)} and the section {method!r}")
    try:
        return TrainConfig(**data, method_options=options)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config and apply ``key=value`` / ``section.key=value`` overrides."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"config {file} is not a text file (a config is UTF-8 YAML)") from None
    except yaml.YAMLError as error:
        raise ValueError(f"config {file} is not valid YAML: {_yaml_problem(error)}") from None
    if data is None:
        raise ValueError(f"config {file} is empty: give at least the keys to change (see configs/)")
    if not isinstance(data, dict):
        raise ValueError(f"{file}: a config is a mapping of keys to values, got {type(data).__name__}")
    data.pop("target", None)  # the published figure of a reproduction config (relaxplug reproduce)
    return _from_mapping(_merge_overrides(data, overrides), str(file))


def config_from_mapping(data: dict, source: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """A config from an already-parsed YAML mapping (``source`` names it in errors), with overrides."""
    return _from_mapping(_merge_overrides(data, overrides), source)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where (line and column, 1-based)."""
    problem = getattr(error, "problem", None) or type(error).__name__
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _yaml_value(text: str, item: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"--set {item}: the value is not valid YAML: {_yaml_problem(error)}") from None


def _merge_overrides(data: dict, overrides: Sequence[str]) -> dict:
    data = dict(data)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override must look like key=value or section.key=value, got {item!r}")
        section, dot, sub = key.partition(".")
        if dot:
            current = data.get(section) or {}
            if not isinstance(current, dict):
                raise ValueError(f"--set {item}: {section!r} is not a section")
            data[section] = {**current, sub: _yaml_value(value, item)}
        else:
            data[key] = _yaml_value(value, item)
    return data


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Return ``config`` with ``key=value`` / ``section.key=value`` overrides applied."""
    return _from_mapping(_merge_overrides(config_to_dict(config), overrides), "overrides")


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as YAML-ready data (the method's section under the method's name)."""
    data = {name: getattr(config, name) for name in _COMMON}
    for name in SECTIONS:
        data[name] = dataclasses.asdict(data[name])
    data["dataset_options"] = dict(config.dataset_options)
    if data["sets"] is not None:
        data["sets"] = [list(s) for s in data["sets"]]
    data[config.method] = dataclasses.asdict(config.method_options)
    return data

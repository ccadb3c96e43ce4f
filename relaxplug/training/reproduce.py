"""``relaxplug reproduce CONFIG...``: train (or resume) each run, certify it, and print the
measured verified-robust accuracy next to the published figure the config targets.

A reproduction config is a training config (:mod:`relaxplug.training.config`) with one more
mapping, ``target``::

    target:
      vra: 78.1            # the published figure, percent
      eps: 0.1411764705882353
      guarantee: standard  # certified guarantee (defaults to the config's)
      source: "Hu et al. 2024, ..."

The run trains with the config as the trainer reads it (its ``eps`` may be a larger training
radius), then the checkpoint's model is certified with GloRo's sound bound at ``target.eps`` for
``target.guarantee`` on the data set's test split; VRA counts a test point when it is certified
and its label is in the certified set.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import yaml

from relaxplug.certifiers.certify import certify
from relaxplug.data import load_dataset
from relaxplug.runtime import resolve_device
from relaxplug.training.config import TrainConfig, config_from_mapping
from relaxplug.training.trainer import resolve_training_guarantee, train

__all__ = ["Target", "Reproduction", "load_reproduction", "reproduce", "format_table"]


@dataclass(frozen=True)
class Target:
    """The published figure a config targets: ``vra`` (percent) at ``eps`` for ``guarantee``."""

    vra: float
    eps: float
    guarantee: str
    source: str = ""

    @classmethod
    def parse(cls, data: object, guarantee: str, where: str) -> "Target":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a reproduction config needs a 'target' mapping (vra, eps, guarantee, source)")
        unknown = sorted(set(data) - {"vra", "eps", "guarantee", "source"})
        if unknown:
            raise ValueError(f"{where}: unknown target key(s) {unknown}; known: eps, guarantee, source, vra")
        for key in ("vra", "eps"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{where}: target.{key} must be a number >= 0, got {value!r}")
        if not 0 <= data["vra"] <= 100:
            raise ValueError(f"{where}: target.vra is a percentage in [0, 100], got {data['vra']!r}")
        return cls(float(data["vra"]), float(data["eps"]), str(data.get("guarantee", guarantee)), str(data.get("source", "")))


@dataclass(frozen=True)
class Reproduction:
    """One row of the table: the config, its target and what was measured (percent)."""

    config: TrainConfig
    target: Target
    clean: float
    vra: float
    n_test: int


def load_reproduction(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[TrainConfig, Target]:
    """The training config and the target of a reproduction config file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file not found: {file}")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{file}: a config is a mapping of keys to values")
    data = dict(data)
    raw_target = data.pop("target", None)
    config = config_from_mapping(data, str(file), overrides)
    return config, Target.parse(raw_target, config.guarantee, str(file))


def _measure(config: TrainConfig, target: Target, model: torch.nn.Module, batch_size: int) -> tuple[float, float, int]:
    data = load_dataset(config.dataset, config.data_root, **config.dataset_options)
    device = resolve_device(config.device)
    _, sets = resolve_training_guarantee(config, data)
    model = model.to(device).eval()
    certified = correct = total = 0
    for start in range(0, len(data.test), batch_size):
        items = [data.test[i] for i in range(start, min(start + batch_size, len(data.test)))]
        x = torch.stack([item[0] for item in items]).to(device)
        y = torch.tensor([int(item[1]) for item in items], device=device)
        cert = certify(model, x, target.eps, 2, "gloro", target.guarantee, radius=False, sets=sets)
        certified += int(round(cert.vra(y) * len(y)))
        correct += int((cert.pred == y).sum())
        total += len(y)
    return 100.0 * correct / total, 100.0 * certified / total, total


def reproduce(paths: Sequence[str | os.PathLike], overrides: Sequence[str] = (), *, progress: bool = True,
              batch_size: int = 256) -> list[Reproduction]:
    """Train (resuming from a checkpoint of the same config) and certify every config."""
    loaded = [load_reproduction(path, overrides) for path in paths]  # all configs checked before any training
    rows = []
    for config, target in loaded:
        result = train(config, resume=True, progress=progress)
        clean, vra, n_test = _measure(config, target, result.model, batch_size)
        rows.append(Reproduction(config, target, clean, vra, n_test))
    return rows


def format_table(rows: Sequence[Reproduction]) -> str:
    """The measured VRA next to the published one, one line per run."""
    lines = [f"{'run':34s} {'guarantee':22s} {'eps':>7s} {'clean %':>8s} {'VRA %':>7s} {'published':>9s} {'diff':>6s}"]
    for row in rows:
        t = row.target
        lines.append(f"{row.config.name:34s} {t.guarantee:22s} {t.eps:7.4f} {row.clean:8.1f} {row.vra:7.1f} "
                     f"{t.vra:9.1f} {row.vra - t.vra:+6.1f}")
    sources = [f"  {row.config.name}: {row.target.source}" for row in rows if row.target.source]
    return "\n".join(lines + (["published figures:"] + sources if sources else []))

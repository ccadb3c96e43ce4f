"""Checkpoints: written atomically, loaded with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of plain data: ``format``, ``metadata`` (architecture, input shape,
class count and names, data set, guarantee, sets, eps, norm, input normalization, epoch,
config), ``model`` (state dict) and optional training ``state`` (optimizer, Lipschitz vectors,
RNG) for resuming.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relaxplug.lipschitz import load_lipschitz_state
from relaxplug.models.architectures import build_model

__all__ = ["save_checkpoint", "load_checkpoint", "LoadedCheckpoint", "CheckpointError", "FORMAT"]

FORMAT = "relaxplug-checkpoint-v1"
REQUIRED_METADATA = ("architecture", "input_shape", "n_classes")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: wrong format, or weights for another architecture."""


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    metadata: dict[str, Any]
    state: dict[str, Any] | None


def save_checkpoint(path: str | os.PathLike, model: nn.Module, metadata: dict[str, Any], state: dict[str, Any] | None = None) -> Path:
    """Write atomically: a temporary file in the same directory, fsync, then ``os.replace``."""
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "metadata": metadata, "model": model.state_dict(), "state": state}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a relaxplug checkpoint and rebuild its model (``weights_only=True``)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {file}")
    payload = torch.load(file, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a relaxplug checkpoint (expected format {FORMAT})")
    metadata = payload["metadata"]
    model = build_model(metadata["architecture"], metadata["input_shape"], metadata["n_classes"])
    load_lipschitz_state(model, payload["model"])  # power-iteration buffers of GloRo training, created on load
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in payload["model"].items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))[:4]
        raise CheckpointError(
            f"{file}: weights do not fit architecture {metadata['architecture']!r} for input "
            f"{tuple(metadata['input_shape'])} and {metadata['n_classes']} classes (checkpoint for "
            f"another architecture?); first differences: {diff}"
        )
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return LoadedCheckpoint(model=model, metadata=metadata, state=payload.get("state"))

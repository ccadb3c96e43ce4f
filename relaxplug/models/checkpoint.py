"""Checkpoints: written atomically, loaded with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of plain data: ``format``, ``metadata`` (architecture, input shape,
class count and names, data set, guarantee, sets, eps, norm, input normalization, epoch,
config), ``model`` (state dict) and optional training ``state`` (optimizer, Lipschitz vectors,
RNG) for resuming.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relaxplug.lipschitz import load_lipschitz_state
from relaxplug.models.architectures import build_model
from relaxplug.outputs import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "LoadedCheckpoint", "CheckpointError", "FORMAT"]

FORMAT = "relaxplug-checkpoint-v1"
REQUIRED_METADATA = ("architecture", "input_shape", "n_classes")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: empty, truncated, corrupt, not relaxplug's, metadata
    missing, or weights for another architecture."""


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    metadata: dict[str, Any]
    state: dict[str, Any] | None


def save_checkpoint(path: str | os.PathLike, model: nn.Module, metadata: dict[str, Any], state: dict[str, Any] | None = None) -> Path:
    """Write atomically: a temporary file in the same directory, fsync, then ``os.replace``.

    A failed write (disk full included) raises ``OSError`` naming the file, removes the temporary
    file and keeps the previous checkpoint; temporaries left by a killed writer are removed.
    """
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    payload = {"format": FORMAT, "metadata": metadata, "model": model.state_dict(), "state": state}
    return atomic_write(path, lambda handle: torch.save(payload, handle), "checkpoint")


def _read(file: Path, device: str | torch.device) -> Any:
    """``torch.load(weights_only=True)`` with torch's errors turned into one :class:`CheckpointError` line."""
    if file.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {file} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before failing
            return torch.load(file, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            raise CheckpointError(
                f"checkpoint {file} holds Python objects other than tensors and plain data ({found.group(1)}); "
                "relaxplug loads checkpoints as weights only and refuses it"
            ) from None
        raise CheckpointError(f"checkpoint {file} is not a readable checkpoint (corrupt or not a torch file)") from None
    except (PermissionError, IsADirectoryError):
        raise
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, AttributeError, IndexError) as error:
        raise CheckpointError(
            f"checkpoint {file} is not a readable checkpoint (truncated or corrupt: {type(error).__name__})"
        ) from None


def _check_payload(file: Path, payload: Any) -> None:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a relaxplug checkpoint (expected format {FORMAT})")
    metadata = payload.get("metadata")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint {file} has no metadata dict")
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise CheckpointError(f"checkpoint {file} lacks metadata key(s) {', '.join(missing)}")
    shape, n = metadata["input_shape"], metadata["n_classes"]
    if not isinstance(metadata["architecture"], str):
        raise CheckpointError(f"checkpoint {file}: metadata 'architecture' must be a name, got {metadata['architecture']!r}")
    if not isinstance(shape, (list, tuple)) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise CheckpointError(f"checkpoint {file}: metadata 'input_shape' must be a list of positive ints, got {shape!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise CheckpointError(f"checkpoint {file}: metadata 'n_classes' must be an int >= 2, got {n!r}")
    weights = payload.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"checkpoint {file} has no state dict of tensors under 'model'")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Load a relaxplug checkpoint and rebuild its model (``weights_only=True``).

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` (one line, the
    file named) for an empty, truncated, corrupt or foreign file, missing metadata, or weights
    of another architecture.
    """
    file = Path(path)
    if file.is_dir():
        inside = file / "checkpoint.pt"
        hint = f": did you mean {inside}?" if inside.is_file() else ": give the checkpoint file (.pt) a run wrote"
        raise IsADirectoryError(f"checkpoint {file} is a directory{hint}")
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint not found: {file}")
    payload = _read(file, device)
    _check_payload(file, payload)
    metadata = payload["metadata"]
    try:
        model = build_model(metadata["architecture"], metadata["input_shape"], metadata["n_classes"])
    except ValueError as error:
        raise CheckpointError(f"checkpoint {file}: {error}") from None
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

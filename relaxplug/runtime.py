"""Device selection and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["DEVICE_TYPES", "parse_device", "resolve_device", "seed_everything"]


#: device types a run may name (``auto`` besides)
DEVICE_TYPES = ("cpu", "cuda", "mps")


def parse_device(spec: object) -> str:
    """``spec`` checked and normalised (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); no
    availability check. Anything else raises ``ValueError`` naming it."""
    if not isinstance(spec, (str, torch.device)):
        raise ValueError(f"device must be a name (auto, cpu, cuda or cuda:N), got {spec!r}")
    text = str(spec).strip().lower()
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N")
    return text


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if isinstance(spec, torch.device):
        return spec
    spec = parse_device(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)

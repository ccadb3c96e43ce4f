"""Test doubles shared by the attack tests: a certifier that lies, and a checkpoint whose data
set is a handful of in-memory points."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import TensorDataset

from relaxplug.certifiers import Certifier
from relaxplug.models.checkpoint import save_checkpoint
from relaxplug.models.architectures import build_model

BLOBS = "test-blobs"


class OverClaiming(Certifier):
    """Claims every margin is huge: every point certified at every radius (a lie)."""

    name = "test-overclaim"
    norms = (2.0, float("inf"))

    def bounds(self, model, x, logits, requests, norm):
        return [torch.full((x.shape[0], r.n_candidates, logits.shape[1]), 1e6, dtype=logits.dtype) for r in requests]


def blob_checkpoint(tmp_path: Path, monkeypatch, n_classes: int, metadata: dict[str, Any], points: int = 24) -> Path:
    """Save an ``mlp`` on 4 inputs with ``metadata`` (data set :data:`BLOBS`, whose test split is
    ``points`` random inputs labelled by the model itself); register :class:`OverClaiming` with
    ``CERTIFIERS.registered`` around its use."""
    torch.manual_seed(0)
    model = build_model("mlp", (4,), n_classes)
    x = torch.randn(points, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    path = save_checkpoint(tmp_path / "model.pt", model, {
        "architecture": "mlp", "input_shape": [4], "n_classes": n_classes, "dataset": BLOBS, **metadata,
    })
    splits = SimpleNamespace(train=TensorDataset(x, y), test=TensorDataset(x, y), n_classes=n_classes,
                             input_shape=(4,), class_names=None, groupings={})

    def load_dataset(name, root=None, **options):
        assert name == BLOBS
        return splits

    try:
        import relaxplug.data as data_module
    except ImportError:
        data_module = types.ModuleType("relaxplug.data")
        monkeypatch.setitem(sys.modules, "relaxplug.data", data_module)
    monkeypatch.setattr(data_module, "load_dataset", load_dataset, raising=False)
    return path

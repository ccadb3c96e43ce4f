"""Models: 1-Lipschitz-friendly layers, registered architectures, and checkpoints."""

from relaxplug.models import layers as layers
from relaxplug.models import liresnet as liresnet  # registers liresnet*, bronet* architectures
from relaxplug.models import orthogonal as orthogonal
from relaxplug.models.architectures import ARCHITECTURES as ARCHITECTURES
from relaxplug.models.architectures import build_model as build_model
from relaxplug.models.architectures import list_architectures as list_architectures
from relaxplug.models.architectures import register_architecture as register_architecture
from relaxplug.models.checkpoint import CheckpointError as CheckpointError
from relaxplug.models.checkpoint import LoadedCheckpoint as LoadedCheckpoint
from relaxplug.models.checkpoint import load_checkpoint as load_checkpoint
from relaxplug.models.checkpoint import save_checkpoint as save_checkpoint

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "LoadedCheckpoint",
    "build_model",
    "layers",
    "liresnet",
    "list_architectures",
    "load_checkpoint",
    "orthogonal",
    "register_architecture",
    "save_checkpoint",
]

"""Lipschitz bounds of a model, for GloRo certification and training.

One engine, :class:`LipschitzEstimator` (:mod:`relaxplug.lipschitz.graph`), traces the model
with torch.fx and composes per-layer constants along the graph: sound bounds for certification
(``sound()``, ``pair_lipschitz()``, ``forward_error()``), differentiable estimates for training
(``estimate()``). Layers declare their constants through the protocol
(:mod:`relaxplug.lipschitz.protocol`); PyTorch's weighted layers are registered in
:mod:`relaxplug.lipschitz.torch_layers`.
"""

from relaxplug.lipschitz import torch_layers as torch_layers
from relaxplug.lipschitz.graph import LIPSCHITZ_MODES as LIPSCHITZ_MODES
from relaxplug.lipschitz.graph import GraphLipschitzEstimator as GraphLipschitzEstimator
from relaxplug.lipschitz.graph import LipschitzEstimator as LipschitzEstimator
from relaxplug.lipschitz.graph import checked_once as checked_once
from relaxplug.lipschitz.graph import estimator_for as estimator_for
from relaxplug.lipschitz.graph import init_lipschitz_state as init_lipschitz_state
from relaxplug.lipschitz.graph import load_lipschitz_state as load_lipschitz_state
from relaxplug.lipschitz.head import head_distances as head_distances
from relaxplug.lipschitz.head import split_head as split_head
from relaxplug.lipschitz.protocol import LipschitzLayer as LipschitzLayer
from relaxplug.lipschitz.protocol import UnsupportedLayerError as UnsupportedLayerError
from relaxplug.lipschitz.protocol import power_vector as power_vector
from relaxplug.lipschitz.protocol import register_lipschitz as register_lipschitz
from relaxplug.lipschitz.rounding import ForwardError as ForwardError

__all__ = [
    "ForwardError",
    "GraphLipschitzEstimator",
    "LIPSCHITZ_MODES",
    "LipschitzEstimator",
    "LipschitzLayer",
    "UnsupportedLayerError",
    "checked_once",
    "estimator_for",
    "head_distances",
    "init_lipschitz_state",
    "load_lipschitz_state",
    "power_vector",
    "register_lipschitz",
    "split_head",
]

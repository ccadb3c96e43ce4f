"""Lipschitz bounds of a model's body and head, for GloRo certification and training."""

from relaxplug.lipschitz.stack import LIPSCHITZ_MODES as LIPSCHITZ_MODES
from relaxplug.lipschitz.stack import LipschitzEstimator as LipschitzEstimator
from relaxplug.lipschitz.stack import UnsupportedLayerError as UnsupportedLayerError
from relaxplug.lipschitz.stack import estimator_for as estimator_for
from relaxplug.lipschitz.stack import head_distances as head_distances
from relaxplug.lipschitz.stack import split_head as split_head

__all__ = [
    "LIPSCHITZ_MODES",
    "LipschitzEstimator",
    "UnsupportedLayerError",
    "estimator_for",
    "head_distances",
    "split_head",
]

"""Certify the models users already have: RobustBench's zoo and CROWN-IBP / auto_LiRPA networks.

- :func:`load_robustbench`: a RobustBench entry from a local checkpoint, through
  ``robustbench.utils.load_model`` (normalization inside the model; nothing is downloaded).
- :func:`load_lirpa_model`: CROWN-IBP / auto_LiRPA architectures by name
  (:func:`list_lirpa_architectures`) from their published checkpoint formats.

Both return a :class:`ZooModel` whose ``model`` goes straight into :func:`relaxplug.certifiers.certify`.
Nothing here imports robustbench or auto_LiRPA until a model is loaded.
"""

from relaxplug.zoo.base import ZooCheckpointError as ZooCheckpointError
from relaxplug.zoo.base import ZooModel as ZooModel
from relaxplug.zoo.lirpa_models import LIRPA_ARCHITECTURES as LIRPA_ARCHITECTURES
from relaxplug.zoo.lirpa_models import LIRPA_NORMALIZATIONS as LIRPA_NORMALIZATIONS
from relaxplug.zoo.lirpa_models import build_lirpa_model as build_lirpa_model
from relaxplug.zoo.lirpa_models import list_lirpa_architectures as list_lirpa_architectures
from relaxplug.zoo.lirpa_models import load_lirpa_model as load_lirpa_model
from relaxplug.zoo.lirpa_models import read_lirpa_checkpoint as read_lirpa_checkpoint
from relaxplug.zoo.robustbench_models import ROBUSTBENCH_EPS as ROBUSTBENCH_EPS
from relaxplug.zoo.robustbench_models import list_robustbench_models as list_robustbench_models
from relaxplug.zoo.robustbench_models import load_robustbench as load_robustbench
from relaxplug.zoo.robustbench_models import robustbench_paths as robustbench_paths

__all__ = [
    "LIRPA_ARCHITECTURES",
    "LIRPA_NORMALIZATIONS",
    "ROBUSTBENCH_EPS",
    "ZooCheckpointError",
    "ZooModel",
    "build_lirpa_model",
    "list_lirpa_architectures",
    "list_robustbench_models",
    "load_lirpa_model",
    "load_robustbench",
    "read_lirpa_checkpoint",
    "robustbench_paths",
]

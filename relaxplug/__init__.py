"""relaxplug: relaxed robustness guarantees (RTK, affinity, superclass, IGRP) for PyTorch.

Certify them with GloRo Lipschitz margins or bound propagation, train for them, compare
certifiers on one model.
"""

from relaxplug import adapters as adapters
from relaxplug import models as models
from relaxplug.models import layers as layers
from relaxplug import zoo as zoo
from relaxplug.adapters import list_guarantees as list_guarantees
from relaxplug.adapters import resolve_guarantee as resolve_guarantee
from relaxplug.adapters.certificate import Certificate as Certificate
from relaxplug.certifiers import list_certifiers as list_certifiers
from relaxplug.certifiers.certify import certify as certify
from relaxplug.training import losses as losses
from relaxplug.training.crown_ibp import CrownIBPLoss as CrownIBPLoss
from relaxplug.training.wrapper import GloRoNet as GloRoNet
from relaxplug.lipschitz import LipschitzLayer as LipschitzLayer
from relaxplug.lipschitz import register_lipschitz as register_lipschitz

__version__ = "0.1.0"

__all__ = [
    "Certificate",
    "CrownIBPLoss",
    "GloRoNet",
    "LipschitzLayer",
    "adapters",
    "certify",
    "layers",
    "models",
    "register_lipschitz",
    "list_certifiers",
    "list_guarantees",
    "losses",
    "resolve_guarantee",
    "zoo",
]

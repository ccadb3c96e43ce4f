"""relaxplug: relaxed robustness guarantees (RTK, affinity, superclass, IGRP) for PyTorch.

Certify them with GloRo Lipschitz margins or bound propagation, train for them, compare
certifiers on one model.
"""

from . import adapters as adapters
from . import layers as layers
from . import models as models
from . import zoo as zoo
from .adapters import list_guarantees as list_guarantees
from .adapters import resolve_guarantee as resolve_guarantee
from .certificate import Certificate as Certificate
from .certifiers import list_certifiers as list_certifiers
from .certify import certify as certify

__version__ = "0.1.0"

__all__ = [
    "Certificate",
    "adapters",
    "certify",
    "layers",
    "models",
    "list_certifiers",
    "list_guarantees",
    "resolve_guarantee",
    "zoo",
]

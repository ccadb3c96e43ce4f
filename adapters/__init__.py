"""Guarantee adapters: each decides which top-k sets are acceptable, on top of one shared
margin computation (``m^k`` and Equation B1 of Leino & Fredrikson 2021)."""

from .affinity import Affinity as Affinity
from .affinity import Superclass as Superclass
from .base import Guarantee as Guarantee
from .base import GuaranteeResult as GuaranteeResult
from .base import MarginRequest as MarginRequest
from .base import rank_order as rank_order
from .base import topk_margins as topk_margins
from .igrp import IGRP as IGRP
from .igrp import IGRPCertificate as IGRPCertificate
from .registry import list_guarantees as list_guarantees
from .registry import load_sets as load_sets
from .registry import register_guarantee as register_guarantee
from .registry import resolve_guarantee as resolve_guarantee
from .rtk import RTK as RTK
from .standard import Standard as Standard

__all__ = [
    "Affinity",
    "Guarantee",
    "GuaranteeResult",
    "IGRP",
    "IGRPCertificate",
    "MarginRequest",
    "RTK",
    "Standard",
    "Superclass",
    "list_guarantees",
    "load_sets",
    "rank_order",
    "register_guarantee",
    "resolve_guarantee",
    "topk_margins",
]

"""Guarantee adapters: each decides which top-k sets are acceptable, on top of one shared
margin computation (``m^k`` and Equation B1 of Leino & Fredrikson 2021)."""

if __name__ != "relaxplug.adapters":  # e.g. ``import adapters`` from the repository root
    raise ImportError(
        "adapters/ is the source folder of the package relaxplug.adapters; "
        "import relaxplug.adapters (or relaxplug) instead of a second, unrelated copy"
    )


from relaxplug.adapters.affinity import Affinity as Affinity
from relaxplug.adapters.affinity import Superclass as Superclass
from relaxplug.adapters.base import Guarantee as Guarantee
from relaxplug.adapters.certificate import Certificate as Certificate
from relaxplug.adapters.base import GuaranteeResult as GuaranteeResult
from relaxplug.adapters.base import MarginRequest as MarginRequest
from relaxplug.adapters.base import rank_order as rank_order
from relaxplug.adapters.base import topk_margins as topk_margins
from relaxplug.adapters.igrp import IGRP as IGRP
from relaxplug.adapters.igrp import IGRPCertificate as IGRPCertificate
from relaxplug.adapters.registry import list_guarantees as list_guarantees
from relaxplug.adapters.registry import load_sets as load_sets
from relaxplug.adapters.registry import register_guarantee as register_guarantee
from relaxplug.adapters.registry import resolve_guarantee as resolve_guarantee
from relaxplug.adapters.rtk import RTK as RTK
from relaxplug.adapters.standard import Standard as Standard

__all__ = [
    "Affinity",
    "Certificate",
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

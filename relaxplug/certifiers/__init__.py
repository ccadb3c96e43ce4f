"""Certifiers by name. Each returns lower bounds on pairwise logit margins (DESIGN.md)."""

from relaxplug.certifiers.base import CERTIFIERS, Certifier, get_certifier, list_certifiers, register_certifier
from relaxplug.certifiers.gloro import GloRoCertifier

try:  # the bound-propagation certifiers import auto_LiRPA lazily; register them when present
    from relaxplug.certifiers import lirpa as _lirpa  # noqa: F401
except ImportError:
    pass

__all__ = ["CERTIFIERS", "Certifier", "GloRoCertifier", "get_certifier", "list_certifiers", "register_certifier"]

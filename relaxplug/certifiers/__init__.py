"""Certifiers by name. Each returns lower bounds on pairwise logit margins (DESIGN.md)."""

from .base import CERTIFIERS, Certifier, get_certifier, list_certifiers, register_certifier
from .gloro import GloRoCertifier

try:  # the bound-propagation certifiers import auto_LiRPA lazily; register them when present
    from . import lirpa as _lirpa  # noqa: F401
except ImportError:
    pass

__all__ = ["CERTIFIERS", "Certifier", "GloRoCertifier", "get_certifier", "list_certifiers", "register_certifier"]

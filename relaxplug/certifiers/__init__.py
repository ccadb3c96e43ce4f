"""Certifiers by name. Each returns lower bounds on pairwise logit margins (DESIGN.md)."""

from .base import CERTIFIERS, Certifier, get_certifier, list_certifiers, register_certifier
from .gloro import GloRoCertifier

__all__ = ["CERTIFIERS", "Certifier", "GloRoCertifier", "get_certifier", "list_certifiers", "register_certifier"]

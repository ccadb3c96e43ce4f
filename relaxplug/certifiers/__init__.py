"""Certifiers by name. Each returns lower bounds on pairwise logit margins."""

import importlib.util

from relaxplug.certifiers.base import CERTIFIERS, Certifier, get_certifier, list_certifiers, register_certifier
from relaxplug.certifiers.gloro import GloRoCertifier

if importlib.util.find_spec("auto_LiRPA") is not None:  # register the bound-propagation certifiers when
    from relaxplug.certifiers import lirpa  # noqa: F401  # auto_LiRPA is installed (imported lazily)

__all__ = ["CERTIFIERS", "Certifier", "GloRoCertifier", "get_certifier", "list_certifiers", "register_certifier"]

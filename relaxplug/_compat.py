"""Compatibility shims for optional third-party packages on current torch and numpy.

auto_LiRPA 0.3 (the only release on the package index) was written for torch < 1.13 and
numpy 1.x. It runs on torch 2.x and numpy 2 once a few removed APIs are restored (DESIGN.md,
"Ecosystem facts"). Each shim is one small function that installs one API **only where it is
missing** and returns whether it installed anything, so newer releases (or source installs)
that no longer need it run untouched. Shims are listed in :data:`SHIMS` by package and stage:

- ``pre``: applied before the package is imported (its module-level imports need them);
- ``post``: applied to the imported package's own classes.

Nothing here runs at ``import relaxplug`` time: call :func:`import_auto_lirpa` (the
bound-propagation certifiers do) to apply the shims and get the module.

To add a shim (for instance for robustbench): write ``def shim_xxx() -> bool`` that checks for
the API and installs it when missing, decorate it with ``@register_shim("package", "pre")``,
and call :func:`apply_shims` for that package before importing it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Callable

__all__ = [
    "AUTO_LIRPA_INSTALL_HINT",
    "SHIMS",
    "Shim",
    "apply_shims",
    "import_auto_lirpa",
    "register_shim",
    "shim_bounded_module_named_members",
    "shim_node_getitem",
    "shim_numpy_arraysetops",
    "shim_patches_device",
    "shim_set_opset_version",
]

AUTO_LIRPA_INSTALL_HINT = (
    "the bound-propagation certifiers (ibp, crown-ibp, crown) need auto_LiRPA. Its only release "
    "on the package index, 0.3, pins torch<1.13 in its metadata, so install it without its pins: "
    "`pip install --no-deps auto-lirpa==0.3 && pip install tqdm appdirs packaging` "
    "(`make install` does this); relaxplug restores the APIs it needs at import time"
)


@dataclass(frozen=True)
class Shim:
    """One shim: ``apply()`` installs a missing API and returns ``True``, or returns ``False``
    when the API is already there (it is then left untouched)."""

    package: str
    stage: str  # "pre" (before importing the package) or "post" (after)
    name: str
    apply: Callable[[], bool]


#: every shim, in the order it is applied
SHIMS: list[Shim] = []


def register_shim(package: str, stage: str) -> Callable[[Callable[[], bool]], Callable[[], bool]]:
    """Decorator adding ``function`` to :data:`SHIMS` for ``package`` at ``stage`` (pre/post)."""
    if stage not in ("pre", "post"):
        raise ValueError(f"stage must be 'pre' or 'post', got {stage!r}")

    def decorator(function: Callable[[], bool]) -> Callable[[], bool]:
        SHIMS.append(Shim(package, stage, function.__name__, function))
        return function

    return decorator


def apply_shims(package: str, stage: str) -> list[str]:
    """Apply the shims of ``package`` at ``stage``; return the names of those that installed."""
    return [s.name for s in SHIMS if s.package == package and s.stage == stage and s.apply()]


# ----------------------------------------------------------------------------- auto_LiRPA, pre-import


@register_shim("auto_LiRPA", "pre")
def shim_numpy_arraysetops() -> bool:
    """``numpy.lib.arraysetops`` (made private in numpy 2): a module exposing ``isin`` & co.

    auto_LiRPA 0.3 does ``from numpy.lib.arraysetops import isin``.
    """
    import numpy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            importlib.import_module("numpy.lib.arraysetops")
            return False
        except ImportError:
            pass
    module = types.ModuleType("numpy.lib.arraysetops", "relaxplug shim: numpy 1.x's numpy.lib.arraysetops")
    for name in ("isin", "in1d", "unique", "intersect1d", "union1d", "setdiff1d", "setxor1d", "ediff1d"):
        function = getattr(numpy, name, None)
        if function is None:
            impl = sys.modules.get("numpy.lib._arraysetops_impl")
            function = getattr(impl, name, None) if impl is not None else None
        if function is not None:
            setattr(module, name, function)
    sys.modules["numpy.lib.arraysetops"] = module
    try:
        setattr(numpy.lib, "arraysetops", module)
    except AttributeError:  # pragma: no cover - a read-only module namespace
        pass
    return True


def _onnx_globals():
    """torch's ONNX exporter state (``GLOBALS``), wherever this torch version keeps it."""
    for path in ("torch.onnx._internal.torchscript_exporter._globals", "torch.onnx._globals"):
        try:
            return importlib.import_module(path).GLOBALS
        except (ImportError, AttributeError):
            continue
    raise ImportError("cannot find torch's ONNX exporter GLOBALS to set the opset version")


@register_shim("auto_LiRPA", "pre")
def shim_set_opset_version() -> bool:
    """``torch.onnx.symbolic_helper._set_opset_version`` (removed in torch 2.x): sets
    ``GLOBALS.export_onnx_opset_version`` of torch's TorchScript ONNX exporter."""
    helper = importlib.import_module("torch.onnx.symbolic_helper")
    if hasattr(helper, "_set_opset_version"):
        return False

    def _set_opset_version(opset_version: int) -> None:
        _onnx_globals().export_onnx_opset_version = opset_version

    helper._set_opset_version = _set_opset_version
    return True


@register_shim("auto_LiRPA", "pre")
def shim_node_getitem() -> bool:
    """``torch._C.Node.__getitem__`` (removed with torch.onnx.utils' monkey patch): ``node[name]``
    reads attribute ``name`` with the accessor its kind names (``node.kindOf(name)``: f, i, s, t, ...)."""
    import torch

    if hasattr(torch._C.Node, "__getitem__"):
        return False

    def _node_getitem(self, key):
        return getattr(self, self.kindOf(key))(key)

    torch._C.Node.__getitem__ = _node_getitem
    return True


# ----------------------------------------------------------------------------- auto_LiRPA, post-import


def _accepts(function: Callable, argument: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return True
    return argument in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _named_members_wrapper(original: Callable) -> Callable:
    def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate: bool = True):
        # auto_LiRPA's override always removes duplicates (its memo), torch's default
        return original(self, get_members_fn, prefix, recurse)

    _named_members._relaxplug_original = original  # (not __wrapped__: inspect.signature would follow it)
    _named_members.__doc__ = original.__doc__
    return _named_members


@register_shim("auto_LiRPA", "post")
def shim_bounded_module_named_members() -> bool:
    """``BoundedModule._named_members`` (and ``BoundDataParallel``'s) must accept torch's newer
    ``remove_duplicate`` argument, which ``named_parameters()`` and ``named_buffers()`` pass."""
    installed = False
    for module_name, class_name in (("auto_LiRPA.bound_general", "BoundedModule"),
                                    ("auto_LiRPA.bound_multi_gpu", "BoundDataParallel")):
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if cls is None or "_named_members" not in vars(cls):
            continue
        original = vars(cls)["_named_members"]
        if not _accepts(original, "remove_duplicate"):
            cls._named_members = _named_members_wrapper(original)
            installed = True
    return installed


@register_shim("auto_LiRPA", "post")
def shim_patches_device() -> bool:
    """``Patches.device`` (used by CROWN in ``patches`` conv mode): the device of its tensor."""
    module = sys.modules.get("auto_LiRPA.patches")
    cls = getattr(module, "Patches", None) if module is not None else None
    if cls is None or hasattr(cls, "device"):
        return False
    cls.device = property(lambda self: self.patches.device, doc="device of the patches tensor (relaxplug shim)")
    return True


# ----------------------------------------------------------------------------- importers


def import_auto_lirpa() -> types.ModuleType:
    """Apply the pre-import shims, import ``auto_LiRPA``, apply the post-import shims, return it.

    Raises:
        ImportError: auto_LiRPA (or one of its own dependencies) is not installed, with the
            command that installs it.
    """
    apply_shims("auto_LiRPA", "pre")
    # auto_LiRPA's import calls torch.jit.script (deprecated: a FutureWarning per call), imports
    # torch.utils.cpp_extension (logs a warning when no CUDA runtime is found) and sets a global
    # warnings.simplefilter("once"). Record the warnings, drop that noise, re-emit the rest; the
    # catch_warnings block also undoes the global filter change.
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    caught: list[warnings.WarningMessage] = []
    try:
        cpp_logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module("auto_LiRPA")
            importlib.import_module("auto_LiRPA.patches")
            importlib.import_module("auto_LiRPA.bound_multi_gpu")
    except ModuleNotFoundError as error:
        missing = error.name or "auto_LiRPA"
        raise ImportError(f"cannot import {missing!r}: {AUTO_LIRPA_INSTALL_HINT}", name=missing) from error
    finally:
        cpp_logger.setLevel(level)
    seen = set()
    for w in caught:
        text = str(w.message)
        if (issubclass(w.category, FutureWarning) and "torch.jit.script" in text) or (text, w.category) in seen:
            continue
        seen.add((text, w.category))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    apply_shims("auto_LiRPA", "post")
    return module

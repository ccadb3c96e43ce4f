"""Compatibility shims for optional third-party packages on current torch and numpy.

auto_LiRPA 0.3 (the only release on the package index) was written for torch < 1.13 and
numpy 1.x. It runs on torch 2.x and numpy 2 once a few removed APIs are restored (docs/lirpa.md,
"Versions"). Each shim is one small function that installs one API **only where it is
missing** and returns whether it installed anything, so newer releases (or source installs)
that no longer need it run untouched. Shims are listed in :data:`SHIMS` by package and stage:

- ``pre``: applied before the package is imported (its module-level imports need them);
- ``post``: applied to the imported package's own classes.

robustbench 1.1.1 imports ``autoattack`` (the package index ships AutoAttack as
``pyautoattack``) and ``pkg_resources`` (removed from setuptools 81): its two ``pre`` shims alias
the first and provide the one function it uses of the second, again only where missing.

Nothing here runs at ``import relaxplug`` time: call :func:`import_auto_lirpa` (the
bound-propagation certifiers do) or :func:`import_robustbench` (:mod:`relaxplug.zoo` does) to
apply the shims and get the module.

To add a shim: write ``def shim_xxx() -> bool`` that checks for the API and installs it when
missing, decorate it with ``@register_shim("package", "pre")``, and call :func:`apply_shims` for
that package before importing it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import itertools
import logging
import os
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

__all__ = [
    "AUTO_LIRPA_INSTALL_HINT",
    "ROBUSTBENCH_INSTALL_HINT",
    "SHIMS",
    "Shim",
    "LIRPA_03_API_UNTIL",
    "apply_shims",
    "installed_version",
    "parse_version",
    "import_auto_lirpa",
    "import_robustbench",
    "onnx_shape_inference",
    "register_shim",
    "shim_autoattack_module",
    "shim_bounded_module_named_members",
    "shim_node_getitem",
    "shim_numpy_arraysetops",
    "shim_patches_device",
    "shim_pkg_resources",
    "shim_relu_alpha_gradient",
    "shim_set_opset_version",
]

AUTO_LIRPA_INSTALL_HINT = (
    "the bound-propagation certifiers (ibp, crown-ibp, crown, alpha-crown) need auto_LiRPA. Its only release "
    "on the package index, 0.3, pins torch<1.13 in its metadata, so install it without its pins: "
    "`pip install --no-deps auto-lirpa==0.3 && pip install tqdm appdirs packaging` "
    "(`make install` does this); relaxplug restores the APIs it needs at import time. The maintained "
    "release (0.7.1, source only) is supported too: `pip install --no-deps <auto_LiRPA source> && "
    "pip install appdirs packaging graphviz ninja tqdm pyyaml` (`make install LIRPA=0.7`)"
)

#: auto_LiRPA's shims restore APIs that 0.3 (2022) uses and that later releases no longer call
#: (0.7.1 calls ``_node_get``, passes ``remove_duplicate``, has ``Patches.device`` and its own ReLU
#: alpha handling): they are only considered for versions older than this one
LIRPA_03_API_UNTIL = "0.4"

ROBUSTBENCH_INSTALL_HINT = (
    "RobustBench models need robustbench 1.1.1 and its imports: `pip install 'setuptools<81' "
    "pyautoattack timm==1.0.9 gdown geotorch torchdiffeq requests pandas && pip install --no-deps "
    "robustbench==1.1.1` (`make install` does this); relaxplug maps `autoattack` to `pyautoattack`"
)


@dataclass(frozen=True)
class Shim:
    """One shim: ``apply()`` installs a missing API and returns ``True``, or returns ``False``
    when the API is already there (it is then left untouched). ``before``: the shim is only
    considered for installed versions of ``package`` older than this one (``None``: any version);
    releases that no longer use the API never get it, even where the API is missing."""

    package: str
    stage: str  # "pre" (before importing the package) or "post" (after)
    name: str
    apply: Callable[[], bool]
    before: tuple[int, ...] | None = None


#: every shim, in the order it is applied
SHIMS: list[Shim] = []


def register_shim(package: str, stage: str, before: str | None = None) -> Callable[[Callable[[], bool]], Callable[[], bool]]:
    """Decorator adding ``function`` to :data:`SHIMS` for ``package`` at ``stage`` (pre/post),
    only for versions of ``package`` older than ``before`` when given (e.g. ``"0.4"``)."""
    if stage not in ("pre", "post"):
        raise ValueError(f"stage must be 'pre' or 'post', got {stage!r}")
    limit = parse_version(before) if before is not None else None

    def decorator(function: Callable[[], bool]) -> Callable[[], bool]:
        SHIMS.append(Shim(package, stage, function.__name__, function, limit))
        return function

    return decorator


def parse_version(text: str) -> tuple[int, ...]:
    """``"0.7.1"`` -> ``(0, 7, 1)``: the leading numeric release components (``"0.3.dev1"`` -> ``(0, 3)``)."""
    parts = []
    for piece in str(text).split("."):
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    if not parts:
        raise ValueError(f"not a version number: {text!r}")
    return tuple(parts)


def installed_version(package: str) -> tuple[int, ...] | None:
    """The installed distribution's version of the importable ``package``, read from its metadata
    without importing it; ``None`` when it is not installed."""
    if importlib.util.find_spec(package) is None:
        return None
    names = importlib.metadata.packages_distributions().get(package, [package])
    for name in names:
        try:
            return parse_version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def apply_shims(package: str, stage: str) -> list[str]:
    """Apply the shims of ``package`` at ``stage`` that its installed version may need; return the
    names of those that installed."""
    version = installed_version(package)
    return [s.name for s in SHIMS if s.package == package and s.stage == stage
            and (s.before is None or version is None or version < s.before) and s.apply()]


# ----------------------------------------------------------------------------- auto_LiRPA, pre-import


@register_shim("auto_LiRPA", "pre", before=LIRPA_03_API_UNTIL)
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


@register_shim("auto_LiRPA", "pre", before=LIRPA_03_API_UNTIL)
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


@register_shim("auto_LiRPA", "pre", before=LIRPA_03_API_UNTIL)
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


@contextlib.contextmanager
def onnx_shape_inference(enabled: bool) -> Iterator[None]:
    """Turn the ONNX exporter's shape inference on or off for a block (restored after).

    auto_LiRPA 0.3 converts a model through torch's TorchScript ONNX passes. On current torch
    those passes fold ``x.size(0)`` of the (batch 1) example input into the constant 1, so a
    model that flattens with ``x.view(x.size(0), -1)`` (most model zoos do) is converted for
    batch 1 only; without shape inference the ``Shape -> Gather -> Reshape`` chain stays
    dynamic, as auto_LiRPA expects.
    """
    globals_ = _onnx_globals()
    previous = globals_.onnx_shape_inference
    globals_.onnx_shape_inference = bool(enabled)
    try:
        yield
    finally:
        globals_.onnx_shape_inference = previous


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


@register_shim("auto_LiRPA", "post", before=LIRPA_03_API_UNTIL)
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


@register_shim("auto_LiRPA", "post", before=LIRPA_03_API_UNTIL)
def shim_patches_device() -> bool:
    """``Patches.device`` (used by CROWN in ``patches`` conv mode): the device of its tensor."""
    module = sys.modules.get("auto_LiRPA.patches")
    cls = getattr(module, "Patches", None) if module is not None else None
    if cls is None or hasattr(cls, "device"):
        return False
    cls.device = property(lambda self: self.patches.device, doc="device of the patches tensor (relaxplug shim)")
    return True


def _clamp_has_boundary_gradient() -> bool:
    """Whether ``torch.clamp`` passes the gradient at its bounds (torch < 2.x did; current torch
    gives 0 there)."""
    import torch

    value = torch.tensor([0.0, 1.0], requires_grad=True)
    value.clamp(min=0.0, max=1.0).sum().backward()
    return bool((value.grad == 1).all())


def _clamp_unit_inclusive(alpha, low: float = 0.0):
    """``clamp(alpha, low, 1)`` whose gradient is 1 on the closed interval ``[low, 1]`` (0 outside),
    as ``torch.clamp``'s was when auto_LiRPA 0.3 was written."""
    import torch

    return torch.where((alpha >= low) & (alpha <= 1), alpha, alpha.clamp(min=low, max=1.0))


def _relu_mask_alpha(lower, upper, lb_lower_d, ub_lower_d, leaky_alpha: float = 0):
    # auto_LiRPA's BoundRelu._relu_mask_alpha (0.3; 0.7 added leaky_alpha) with _clamp_unit_inclusive
    # for torch.clamp
    lower_mask = (lower >= 0).requires_grad_(False).to(lower.dtype)
    upper_mask = (upper <= 0).requires_grad_(False)
    zero_coeffs = False if leaky_alpha > 0 else upper_mask.all()
    no_mask = (1.0 - lower_mask) * (1.0 - upper_mask.to(upper.dtype))
    if lb_lower_d is not None:
        lb_lower_d = _clamp_unit_inclusive(lb_lower_d, leaky_alpha) * no_mask + lower_mask
        if leaky_alpha > 0:
            lb_lower_d = lb_lower_d + upper_mask * leaky_alpha
    if ub_lower_d is not None:
        ub_lower_d = _clamp_unit_inclusive(ub_lower_d, leaky_alpha) * no_mask + lower_mask
        if leaky_alpha > 0:
            ub_lower_d = ub_lower_d + upper_mask * leaky_alpha
    return lb_lower_d, ub_lower_d, zero_coeffs


#: the signatures of ``BoundRelu._relu_mask_alpha`` the shim reproduces (0.3's, then 0.7's)
_RELU_MASK_SIGNATURES = (["lower", "upper", "lb_lower_d", "ub_lower_d"],
                         ["lower", "upper", "lb_lower_d", "ub_lower_d", "leaky_alpha"])


@register_shim("auto_LiRPA", "post")
def shim_relu_alpha_gradient() -> bool:
    """alpha-CROWN's ReLU slopes must get a gradient at 0 and 1.

    auto_LiRPA 0.3 starts every alpha at CROWN's slope (exactly 0 or 1), clips alphas back to
    ``[0, 1]`` after each step, and reads them through ``torch.clamp(alpha, 0, 1)``. Current torch
    gives ``clamp`` a zero gradient at its bounds, so no alpha ever moves and alpha-CROWN returns
    CROWN's bounds. 0.7.1 reads them the same way (its ``leaky_alpha`` added as the lower clamp
    bound), so it needs the shim as well (measured: without it 0.7.1's alpha-CROWN equals CROWN).
    Installed only when torch's ``clamp`` behaves so and auto_LiRPA's ``BoundRelu._relu_mask_alpha``
    has 0.3's or 0.7's signature; the replacement computes the same values.
    """
    cls = None
    for name in ("auto_LiRPA.operators.activation", "auto_LiRPA.operators.relu"):
        module = sys.modules.get(name)
        cls = cls or (vars(module).get("BoundRelu") if module is not None else None)
    original = vars(cls).get("_relu_mask_alpha") if cls is not None else None
    if not isinstance(original, staticmethod) or getattr(original.__func__, "_relaxplug_shim", False):
        return False
    if list(inspect.signature(original.__func__).parameters) not in _RELU_MASK_SIGNATURES:
        return False
    if _clamp_has_boundary_gradient():
        return False
    _relu_mask_alpha._relaxplug_shim = True
    _relu_mask_alpha.__doc__ = original.__func__.__doc__
    cls._relu_mask_alpha = staticmethod(_relu_mask_alpha)
    return True


# ----------------------------------------------------------------------------- robustbench, pre-import


@register_shim("robustbench", "pre")
def shim_autoattack_module() -> bool:
    """``autoattack`` (robustbench's ``eval`` does ``from autoattack import AutoAttack`` and
    ``from autoattack.state import EvaluationState``): the package index ships the same code as
    ``pyautoattack``, so its modules are registered under the ``autoattack`` names too.

    Leaves an importable ``autoattack`` (a source install of fra31/auto-attack) untouched, and
    installs nothing when ``pyautoattack`` is absent either (robustbench's import then fails).
    """
    try:
        if importlib.util.find_spec("autoattack") is not None:
            return False
    except (ImportError, ValueError):  # a broken entry in sys.modules: leave it to the import
        return False
    try:
        package = importlib.import_module("pyautoattack")
        importlib.import_module("pyautoattack.state")
    except ImportError:
        return False
    sys.modules["autoattack"] = package
    for name, module in list(sys.modules.items()):
        if name.startswith("pyautoattack.") and module is not None:
            sys.modules.setdefault("autoattack." + name[len("pyautoattack."):], module)
    return True


def _resource_filename(package_or_requirement: str, resource_name: str) -> str:
    """``pkg_resources.resource_filename`` for an importable module or package name: the path of
    ``resource_name`` beside that module (inside that package), as setuptools' version returns it
    for a package installed as plain files."""
    module = importlib.import_module(str(package_or_requirement))
    origin = getattr(module, "__file__", None)
    if origin is None:
        raise ValueError(f"{package_or_requirement!r} has no file on disk to locate {resource_name!r} beside")
    return os.path.join(os.path.dirname(origin), *str(resource_name).split("/"))


@register_shim("robustbench", "pre")
def shim_pkg_resources() -> bool:
    """``pkg_resources`` (setuptools' old API, removed in setuptools 81): robustbench's ``loaders``
    imports it and calls ``resource_filename(__name__, path)`` only, so a module with that one
    function is registered when no ``pkg_resources`` can be imported."""
    try:
        if importlib.util.find_spec("pkg_resources") is not None:
            return False
    except (ImportError, ValueError):
        return False
    module = types.ModuleType("pkg_resources", "relaxplug shim: pkg_resources.resource_filename only")
    module.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = module
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


#: warnings robustbench 1.1.1's import raises inside its dependencies, not the caller's concern:
#: setuptools' pkg_resources deprecation notice, timm's moved-module notices, torch.jit's deprecation
_ROBUSTBENCH_IMPORT_NOISE = ("pkg_resources is deprecated", "is deprecated, please import via timm",
                             "`torch.jit.interface` is deprecated")


def import_robustbench() -> types.ModuleType:
    """Apply the robustbench shims, import ``robustbench.utils`` (``load_model``) and return it.

    Raises:
        ImportError: robustbench or one of its imports is missing, with the install command.
    """
    apply_shims("robustbench", "pre")
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module("robustbench.utils")
    except ModuleNotFoundError as error:
        missing = error.name or "robustbench"
        raise ImportError(f"cannot import {missing!r}: {ROBUSTBENCH_INSTALL_HINT}", name=missing) from error
    seen = set()
    for w in caught:
        text = str(w.message)
        if any(noise in text for noise in _ROBUSTBENCH_IMPORT_NOISE) or (text, w.category) in seen:
            continue
        seen.add((text, w.category))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return module

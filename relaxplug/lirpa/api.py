"""The installed auto_LiRPA: its version and the API differences between releases, in one place.

Supported: 0.3 (the package index's only release, 2022; run on current torch through the gated
shims of :mod:`relaxplug._compat`) and the maintained source releases (0.7.1, 2026). What differs,
and how each call here maps it:

=====================================  ==================================  ==============================
                                       0.3                                 0.7.1
=====================================  ==================================  ==============================
reuse intermediate-layer bounds        ``intermediate_layer_bounds=``      ``interm_bounds=``
alpha-CROWN on current torch           ReLU-slope gradient shim,           the same shim (0.7's signature);
                                       sparse alpha bookkeeping off        sparse bookkeeping on (native)
=====================================  ==================================  ==============================

Differences are detected from the API itself (a keyword in ``compute_bounds``'s signature, a
shim that installed), never from the version number alone; :data:`version` is for reports.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import io
import logging
import math
import types
import warnings
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from relaxplug._compat import (
    AUTO_LIRPA_INSTALL_HINT,
    import_auto_lirpa,
    installed_version,
    onnx_shape_inference,
)

__all__ = [
    "AUTO_LIRPA_INSTALL_HINT",
    "LirpaError",
    "alpha_bound_options",
    "available",
    "auto_lirpa",
    "bounded_tensor",
    "compute_bounds",
    "convert",
    "interm_keyword",
    "optimized_bound",
    "legacy_api",
    "version",
    "version_string",
]

logger = logging.getLogger(__name__)


class LirpaError(RuntimeError):
    """auto_LiRPA cannot bound this model (an unsupported op, or a failure inside auto_LiRPA);
    the message names the cause."""


def available() -> bool:
    """Whether auto_LiRPA is installed (checked without importing it)."""
    return importlib.util.find_spec("auto_LiRPA") is not None


def version() -> tuple[int, ...] | None:
    """The installed auto_LiRPA version, e.g. ``(0, 3)`` or ``(0, 7, 1)``; ``None`` if absent."""
    return installed_version("auto_LiRPA")


def version_string() -> str:
    found = version()
    return "absent" if found is None else ".".join(map(str, found))


@functools.lru_cache(maxsize=None)
def auto_lirpa() -> types.ModuleType:
    """auto_LiRPA, imported once with the shims its version needs."""
    return import_auto_lirpa()


@functools.lru_cache(maxsize=None)
def interm_keyword() -> str:
    """``compute_bounds``' keyword for reusing intermediate-layer bounds (renamed after 0.3)."""
    parameters = inspect.signature(auto_lirpa().BoundedModule.compute_bounds).parameters
    for name in ("interm_bounds", "intermediate_layer_bounds"):
        if name in parameters:
            return name
    raise LirpaError("this auto_LiRPA's compute_bounds takes no intermediate-bounds argument; "
                     f"supported releases: 0.3 and 0.7.x (installed: {version_string()})")


def legacy_api() -> bool:
    """Whether the installed auto_LiRPA has 0.3's API (``intermediate_layer_bounds``)."""
    return interm_keyword() == "intermediate_layer_bounds"


def bounded_tensor(x: Tensor, eps: float, norm: float):
    """``x`` as an auto_LiRPA ``BoundedTensor`` carrying the ``norm``-ball of radius ``eps``."""
    lirpa = auto_lirpa()
    p = math.inf if float(norm) == math.inf else float(norm)
    return lirpa.BoundedTensor(x, lirpa.PerturbationLpNorm(norm=p, eps=float(eps)))


def _quiet() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    return stack


def convert(module: nn.Module, example: Tensor, bound_opts: dict[str, Any] | None = None,
            dynamic_shapes: bool = False):
    """``BoundedModule(module, (example,))`` (``dynamic_shapes``: without the ONNX exporter's shape
    inference, see :func:`relaxplug._compat.onnx_shape_inference`). Conversion failures raise
    :class:`LirpaError` naming auto_LiRPA's error."""
    lirpa = auto_lirpa()
    kwargs: dict[str, Any] = {"device": example.device}
    if bound_opts:
        kwargs["bound_opts"] = dict(bound_opts)
    with _quiet(), (onnx_shape_inference(False) if dynamic_shapes else contextlib.nullcontext()):
        try:
            return lirpa.BoundedModule(module, (example,), **kwargs)
        except Exception as error:
            raise LirpaError(f"auto_LiRPA {version_string()} cannot convert the model ({type(error).__name__}: "
                             f"{error}); only layers with auto_LiRPA support (or a lirpa_form rewrite) can be "
                             "bounded") from error


def _node_kinds(bounded) -> str:
    kinds = sorted({type(n).__name__[len("Bound"):] for n in bounded._modules.values()}
                   - {"Input", "Params", "Buffers", "Constant"})
    return ", ".join(kinds)


@contextlib.contextmanager
def _explained(bounded, method: str) -> Iterator[None]:
    try:
        yield
    except LirpaError:
        raise
    except Exception as error:
        raise LirpaError(f"auto_LiRPA {version_string()} cannot bound this model with {method} "
                         f"({type(error).__name__}: {error}); its graph has the ops: {_node_kinds(bounded)}. "
                         "Use a method that supports them (ibp supports the most) or change the model") from error


def compute_bounds(bounded, x=None, C: Tensor | None = None, method: str = "CROWN", bound_lower: bool = True,
                   bound_upper: bool = True, interm: dict | None = None, reuse_ibp: bool = False):
    """``bounded.compute_bounds`` with the installed version's keywords; ``interm`` are
    intermediate-layer bounds to reuse (``{node name: (lower, upper)}``)."""
    kwargs: dict[str, Any] = {"C": C, "method": method, "bound_lower": bound_lower, "bound_upper": bound_upper}
    if x is not None:
        kwargs["x"] = x
    if reuse_ibp:
        kwargs["reuse_ibp"] = True
    if interm is not None:
        kwargs[interm_keyword()] = interm
    with _explained(bounded, method):
        return bounded.compute_bounds(**kwargs)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype | None):
    """Tensors auto_LiRPA creates without a dtype (0.3's alpha-CROWN bookkeeping) get ``dtype``, the
    bound computation's (float64 for certification); the previous default is restored."""
    previous = torch.get_default_dtype()
    if dtype not in (torch.float32, torch.float64) or dtype == previous:
        yield
        return
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def optimized_bound(bounded, x, C: Tensor, lower: bool, iterations: int, lr: float) -> Tensor:
    """alpha-CROWN (``CROWN-Optimized``): the optimised lower (or upper) bound of ``C f``; auto_LiRPA
    optimises one side per call."""
    bounded.set_bound_opts({"optimize_bound_args": {"iteration": int(iterations), "lr_alpha": float(lr)}})
    # auto_LiRPA prints a line whenever its early stopping triggers
    with contextlib.redirect_stdout(io.StringIO()) as printed, torch.enable_grad(), \
            _explained(bounded, "alpha-CROWN"), _default_dtype(C.dtype):
        lb, ub = bounded.compute_bounds(x=x, C=C, method="CROWN-Optimized", bound_lower=lower, bound_upper=not lower)
    if printed.getvalue():
        logger.debug("auto_LiRPA: %s", printed.getvalue().strip())
    return lb if lower else ub


def alpha_bound_options() -> tuple[tuple[str, Any], ...]:
    """Extra ``bound_opts`` alpha-CROWN needs: 0.3's sparse-alpha bookkeeping fails with a shape
    mismatch even on dense ReLU nets, so it is turned off there; later releases need nothing."""
    if legacy_api():
        return (("sparse_intermediate_bounds", False), ("sparse_features_alpha", False), ("sparse_spec_alpha", False))
    return ()


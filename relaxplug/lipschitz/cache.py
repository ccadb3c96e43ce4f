"""What a model computes, captured so that a cache can tell when it is stale.

A cached Lipschitz bound (or fx trace) is valid for one computation only. It depends on

* the *structure*: the module tree (names, classes, the class's ``forward``), every module's
  Python attributes (flags, sizes, callables and the values in their closures, unregistered
  tensors), which parameter/buffer objects it holds (and their dtypes and devices), and the
  global float settings (TF32, matmul precision). The training flag is left out: bounds
  are always computed for the eval-mode function;
* the *contents*: the values of every parameter, buffer and unregistered tensor attribute.

Neither ``id``, ``Tensor._version`` nor ``data_ptr`` tells values apart: writes through
``.data`` do not bump ``_version``, a replaced submodule may reuse an address. So
:class:`ComputationSnapshot` keeps a copy of every tensor and compares values (``torch.equal``,
one pass over the weights: ``benchmarks/gloro_overhead.py`` measures its cost against a forward
pass). Attributes it cannot capture (objects nested deeper than :data:`MAX_DEPTH`) make the
snapshot never match, i.e. the cache is not used.

Global Python state counts too: a module-level ``GAIN`` that ``forward`` multiplies by is fixed in
an fx trace. For every module class written outside the libraries of :data:`LIBRARY_ROOTS`, the
snapshot reads the globals named in the code of each of its methods (nested functions included)
and freezes their values like attributes; a global function read this way has its own globals
read in turn, and a global module of user code contributes the attributes the code names. Values
computed by calls at trace time (``random.random()``) are caught when the trace is checked
against the model (:mod:`relaxplug.lipschitz.graph`).
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ComputationSnapshot", "LIBRARY_ROOTS", "MAX_DEPTH", "POWER_VECTOR_PREFIX"]

#: buffers holding power-iteration state (training estimates only): not part of the computation
POWER_VECTOR_PREFIX = "lipschitz_u_"

#: how deep attribute values (containers, objects, closures) are captured
MAX_DEPTH = 4

_SKIP = frozenset(
    {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_state_dict_hooks",
     "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_backward_hooks",
     "_backward_pre_hooks", "_is_full_backward_hook", "training"}
)
_ATOMS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size, type,
          types.BuiltinFunctionType)


#: top-level packages whose module-level state is not user state (their globals are not read)
LIBRARY_ROOTS = frozenset({"torch", "builtins", "math", "cmath", "operator", "functools", "itertools", "typing",
                           "collections", "numbers", "abc", "warnings", "logging", "numpy", "relaxplug"})


def _library(obj: Any) -> bool:
    name = getattr(obj, "__module__", None) if not isinstance(obj, types.ModuleType) else obj.__name__
    return (name or "builtins").split(".")[0] in LIBRARY_ROOTS


def _code_names(code: types.CodeType) -> frozenset[str]:
    """Global and attribute names a code object (and the functions nested in it) may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return frozenset(names)


def _class_functions(cls: type) -> list[types.FunctionType]:
    """The Python functions a module class defines outside the libraries (methods, static and
    class methods, property accessors), along its MRO."""
    found = []
    for klass in cls.__mro__:
        if _library(klass):
            continue
        for value in vars(klass).values():
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                found.extend(f for f in (value.fget, value.fset) if isinstance(f, types.FunctionType))
            elif isinstance(value, types.FunctionType):
                found.append(value)
    return found


class _Uncapturable(Exception):
    pass


class _Freezer:
    """Turns attribute values into comparable tuples; tensors go to ``self.tensors`` (compared by value)."""

    def __init__(self) -> None:
        self.tensors: list[Tensor] = []
        self._reading: set[int] = set()  # functions whose globals are being read (recursion)

    def globals_read(self, func: types.FunctionType, depth: int) -> tuple:
        """Frozen values of the globals ``func``'s code names (module docstring)."""
        if _library(func) or id(func) in self._reading:
            return ()
        self._reading.add(id(func))
        try:
            names = _code_names(func.__code__)
            space = func.__globals__
            rows = []
            for name in sorted(names & space.keys()):
                value = space[name]
                if isinstance(value, types.ModuleType):
                    if _library(value):
                        continue
                    attrs = tuple((a, self.freeze(getattr(value, a), depth + 1)) for a in sorted(names)
                                  if a in vars(value))
                    rows.append((name, value.__name__, attrs))
                else:
                    rows.append((name, self.freeze(value, depth + 1)))
            return tuple(rows)
        finally:
            self._reading.discard(id(func))

    def freeze(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, Tensor):
            self.tensors.append(value)
            return ("tensor", len(self.tensors) - 1)
        if isinstance(value, _ATOMS):
            return value
        if depth >= MAX_DEPTH:
            raise _Uncapturable(type(value).__name__)
        if isinstance(value, (tuple, list)):
            return (type(value), tuple(self.freeze(v, depth + 1) for v in value))
        if isinstance(value, dict):
            return (dict, tuple((self.freeze(k, depth + 1), self.freeze(v, depth + 1)) for k, v in value.items()))
        if isinstance(value, (set, frozenset)):
            return (type(value), tuple(sorted(repr(self.freeze(v, depth + 1)) for v in value)))
        if isinstance(value, types.FunctionType):
            cells = tuple(c.cell_contents for c in value.__closure__ or () if _filled(c))
            return (value, self.freeze(cells, depth + 1), self.freeze(value.__defaults__, depth + 1),
                    self.globals_read(value, depth + 1))
        if isinstance(value, types.MethodType):
            return (value.__func__, id(value.__self__))
        if isinstance(value, nn.Module):
            tensors = [*value.parameters(), *value.buffers()]
            return (type(value), id(value), self.freeze(_attributes(value), depth + 1),
                    tuple(self.freeze(t) for t in tensors))
        if hasattr(value, "__dict__"):
            return (type(value), id(value), self.freeze(vars(value), depth + 1))
        return (type(value), id(value))


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _attributes(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if k not in _SKIP}


def _structure(model: nn.Module, freezer: _Freezer) -> tuple:
    rows: list = [_numerics()]
    for name, m in model.named_modules(remove_duplicate=False):
        cls = type(m)
        params = tuple((k, id(p), None if p is None else (p.dtype, p.device)) for k, p in m._parameters.items())
        kept = {k: b for k, b in m._buffers.items() if not k.startswith(POWER_VECTOR_PREFIX)}
        buffers = tuple((k, id(b), None if b is None else (b.dtype, b.device)) for k, b in kept.items())
        for t in list(m._parameters.values()) + list(kept.values()):
            if t is not None:
                freezer.tensors.append(t)
        reads = tuple(freezer.globals_read(f, 0) for f in _class_functions(cls))
        rows.append((name, cls, cls.forward, params, buffers, freezer.freeze(_attributes(m)), reads))
    return tuple(rows)


def _numerics() -> tuple:
    """Global settings that change float results (the rounding model depends on them)."""
    return (
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.device == b.device and torch.equal(a, b)


class ComputationSnapshot:
    """A copy of what ``model`` computes; :meth:`matches` tells whether it still computes that."""

    def __init__(self, model: nn.Module, contents: bool = True):
        freezer = _Freezer()
        try:
            self.structure: tuple | None = _structure(model, freezer)
        except _Uncapturable:
            self.structure = None
        self.contents = contents
        self.tensors = [t.detach().clone() for t in freezer.tensors] if contents else []

    def _current(self, model: nn.Module) -> tuple[tuple | None, list[Tensor]]:
        freezer = _Freezer()
        try:
            return _structure(model, freezer), freezer.tensors
        except _Uncapturable:
            return None, []

    def same_structure(self, model: nn.Module) -> bool:
        """Same module tree, classes, attributes and tensor objects (values not compared)."""
        structure, _ = self._current(model)
        return self.structure is not None and structure == self.structure

    def matches(self, model: nn.Module) -> bool:
        """Same structure and the same value in every tensor."""
        structure, tensors = self._current(model)
        if not self.contents:
            raise ValueError("this snapshot holds the structure only; use same_structure")
        if self.structure is None or structure != self.structure or len(tensors) != len(self.tensors):
            return False
        with torch.no_grad():
            return all(_same_tensor(a.detach(), b) for a, b in zip(tensors, self.tensors))

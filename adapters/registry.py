"""Resolve guarantees by name: ``standard``, ``rtk:K``, ``affinity:0,1;1,2``,
``affinity:FILE.yaml``, ``superclass:cifar100``, ``superclass:FILE.yaml`` (and ``igrp:FILE.yaml``).

A bare ``affinity`` or ``superclass`` takes the ``sets`` the caller supplies (for instance the
sets stored with a checkpoint, or a data set's built-in grouping).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import yaml

from relaxplug.registry import Registry

from .affinity import Affinity, Superclass
from .base import Guarantee
from .rtk import RTK
from .standard import Standard

__all__ = ["GUARANTEES", "register_guarantee", "resolve_guarantee", "list_guarantees", "load_sets"]

#: name -> constructor ``(argument: str | None, sets, class_names) -> Guarantee``
GUARANTEES: Registry[Guarantee] = Registry("guarantee")

SETS_FILE_KEYS = frozenset({"sets", "class_names", "description"})

Sets = Sequence[Sequence[int]]


def register_guarantee(name: str) -> Callable:
    """Decorator registering ``constructor(argument, sets, class_names) -> Guarantee``."""
    return GUARANTEES.register(name)


def list_guarantees() -> list[str]:
    return GUARANTEES.names()


def _class_index(token: object, class_names: Sequence[str] | None, where: str) -> int:
    if isinstance(token, bool):
        raise ValueError(f"{where}: {token!r} is not a class")
    if isinstance(token, int):
        return token
    text = str(token).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    if class_names is None:
        raise ValueError(f"{where}: class name {text!r} given but no class names are known")
    try:
        return list(class_names).index(text)
    except ValueError:
        raise ValueError(f"{where}: unknown class name {text!r}") from None


def load_sets(path: str | os.PathLike, class_names: Sequence[str] | None = None) -> tuple[tuple[int, ...], ...]:
    """Read affinity sets from YAML: ``sets: [[0, 1], [cat, dog]]`` (indices or class names;
    names resolve against the file's ``class_names`` or the ``class_names`` given)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"affinity sets file not found: {file}")
    data = yaml.safe_load(file.read_text())
    if not isinstance(data, dict) or "sets" not in data:
        raise ValueError(f"{file}: expected a mapping with a 'sets' list")
    unknown = set(data) - SETS_FILE_KEYS
    if unknown:
        raise ValueError(f"{file}: unknown keys {sorted(unknown)}; allowed: {sorted(SETS_FILE_KEYS)}")
    names = data.get("class_names") or class_names
    if not isinstance(data["sets"], list):
        raise ValueError(f"{file}: 'sets' must be a list of lists")
    return tuple(
        tuple(_class_index(c, names, f"{file} set #{i}") for c in members)
        for i, members in enumerate(data["sets"])
    )


def _parse_inline_sets(text: str, class_names: Sequence[str] | None) -> tuple[tuple[int, ...], ...]:
    sets = []
    for i, chunk in enumerate(text.split(";")):
        tokens = [t for t in chunk.split(",") if t.strip()]
        sets.append(tuple(_class_index(t, class_names, f"inline affinity set #{i}") for t in tokens))
    return tuple(sets)


def _sets_argument(kind: str, argument: str | None, sets: Sets | None, class_names) -> Sets:
    if argument is None:
        if sets is None:
            raise ValueError(
                f"bare '{kind}' needs sets: give '{kind}:0,1;2,3' or '{kind}:FILE.yaml', or use a "
                "checkpoint/data set that carries a grouping"
            )
        return sets
    if argument.endswith((".yaml", ".yml")) or os.sep in argument:
        return load_sets(argument, class_names)
    if kind == "superclass" and argument == "cifar100":
        from relaxplug.data import CIFAR100_COARSE

        return CIFAR100_COARSE
    return _parse_inline_sets(argument, class_names)


@register_guarantee("standard")
def _standard(argument: str | None, sets: Sets | None, class_names) -> Guarantee:
    if argument:
        raise ValueError(f"'standard' takes no argument, got 'standard:{argument}'")
    return Standard()


@register_guarantee("rtk")
def _rtk(argument: str | None, sets: Sets | None, class_names) -> Guarantee:
    if argument is None or not argument.strip().isdigit():
        raise ValueError(f"'rtk' needs an integer K, e.g. 'rtk:3', got {argument!r}")
    return RTK(int(argument))


@register_guarantee("affinity")
def _affinity(argument: str | None, sets: Sets | None, class_names) -> Guarantee:
    return Affinity(_sets_argument("affinity", argument, sets, class_names))


@register_guarantee("superclass")
def _superclass(argument: str | None, sets: Sets | None, class_names) -> Guarantee:
    return Superclass(_sets_argument("superclass", argument, sets, class_names))


def resolve_guarantee(
    spec: str | Guarantee,
    sets: Sets | None = None,
    class_names: Sequence[str] | None = None,
) -> Guarantee:
    """Turn a guarantee name (or an instance, returned as is) into a :class:`Guarantee`.

    Args:
        spec: ``"standard"``, ``"rtk:3"``, ``"affinity:0,1;1,2"``, ``"affinity:sets.yaml"``,
            ``"superclass:cifar100"``, ...
        sets: sets used by a bare ``affinity``/``superclass`` (and IGRP groups).
        class_names: lets inline and file sets name classes instead of indices.
    """
    if isinstance(spec, Guarantee):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a guarantee is a name like 'rtk:3', got {spec!r}")
    name, _, argument = spec.strip().partition(":")
    return GUARANTEES.get(name.lower())(argument or None, sets, class_names)

"""Resolve guarantees by name: ``standard``, ``rtk:K``, ``affinity:0,1;1,2``,
``affinity:FILE.yaml``, ``affinity:cifar10`` / ``affinity:cifar100`` (the built-in groupings of
:data:`relaxplug.adapters.groupings.GROUPINGS`), ``superclass:cifar100``, ``superclass:FILE.yaml``, ``igrp:FILE.yaml``,
``igrp:FILE.yaml@EPS_IN,EPS_OUT``, ``igrp:EPS_IN,EPS_OUT`` (see :func:`_igrp`).

A bare ``affinity`` or ``superclass`` takes the ``sets`` the caller supplies (for instance the
sets stored with a checkpoint, or a data set's built-in grouping); so do the groups of
``igrp:EPS_IN,EPS_OUT``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import yaml

from relaxplug.registry import Registry

from relaxplug.adapters.affinity import Affinity, Superclass
from relaxplug.adapters.base import Guarantee
from relaxplug.adapters.groupings import GROUPINGS
from relaxplug.adapters.igrp import IGRP
from relaxplug.adapters.rtk import RTK
from relaxplug.adapters.standard import Standard

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
    return _read_sets_file(path, class_names, SETS_FILE_KEYS)[0]


def _read_sets_file(path: str | os.PathLike, class_names: Sequence[str] | None, allowed: frozenset[str]) -> tuple[tuple[tuple[int, ...], ...], dict]:
    """``(sets, the file's mapping)`` of a sets YAML file whose keys must lie in ``allowed``."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"affinity sets file not found: {file}")
    data = yaml.safe_load(file.read_text())
    if not isinstance(data, dict) or "sets" not in data:
        raise ValueError(f"{file}: expected a mapping with a 'sets' list")
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{file}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    names = data.get("class_names") or class_names
    if not isinstance(data["sets"], list) or not all(isinstance(m, list) for m in data["sets"]):
        raise ValueError(f"{file}: 'sets' must be a list of lists")
    sets = tuple(
        tuple(_class_index(c, names, f"{file} set #{i}") for c in members)
        for i, members in enumerate(data["sets"])
    )
    return sets, data


def _parse_inline_sets(text: str, class_names: Sequence[str] | None, kind: str) -> tuple[tuple[int, ...], ...]:
    sets = []
    for i, chunk in enumerate(text.split(";")):
        tokens = [t for t in chunk.split(",") if t.strip()]
        sets.append(tuple(_class_index(t, class_names, f"inline {kind} set #{i}") for t in tokens))
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
    name = argument.strip().lower()
    if name in GROUPINGS:  # built-in: cifar10 (vehicles, animals), cifar100 (superclasses)
        return GROUPINGS[name]
    looks_like_name = not any(sep in argument for sep in ",;") and not name.lstrip("-").isdigit()
    if looks_like_name and (class_names is None or argument.strip() not in class_names):
        raise ValueError(
            f"'{kind}:{argument.strip()}': no built-in grouping of that name (built-in: "
            f"{', '.join(sorted(GROUPINGS))}) and not a class name; give sets inline "
            f"('{kind}:0,1;2,3'), a YAML file ('{kind}:FILE.yaml'), or class names the model or data carries"
        )
    return _parse_inline_sets(argument, class_names, kind)


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


#: keys of an IGRP file: a sets file plus the two radii
IGRP_FILE_KEYS = SETS_FILE_KEYS | {"eps_in", "eps_out"}


def _igrp_radii(text: str, where: str) -> tuple[float, float]:
    parts = [t.strip() for t in text.split(",")]
    try:
        values = [float(t) for t in parts]
    except ValueError:
        values = []
    if len(values) != 2:
        raise ValueError(f"{where}: radii must be 'EPS_IN,EPS_OUT' (two numbers), got {text!r}")
    return values[0], values[1]


def _is_file_argument(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or os.sep in text


@register_guarantee("igrp")
def _igrp(argument: str | None, sets: Sets | None, class_names) -> Guarantee:
    """``igrp:FILE.yaml`` (the file gives ``sets`` = the groups, ``eps_in`` and ``eps_out``),
    ``igrp:GROUPS@EPS_IN,EPS_OUT`` (GROUPS a file or inline ``0,6;1,7;...``; these radii win over
    the file's), or ``igrp:EPS_IN,EPS_OUT`` (the groups are the ``sets`` the caller supplies, e.g.
    a checkpoint's)."""
    usage = "use 'igrp:FILE.yaml', 'igrp:FILE.yaml@EPS_IN,EPS_OUT', 'igrp:0,6;1,7;...@EPS_IN,EPS_OUT' or 'igrp:EPS_IN,EPS_OUT' with groups supplied"
    if argument is None or not argument.strip():
        raise ValueError(f"'igrp' needs groups and two radii: {usage}")
    argument = argument.strip()
    groups_text, at, radii_text = argument.rpartition("@")
    if at:
        radii: tuple[float, float] | None = _igrp_radii(radii_text, f"igrp:{argument}")
    elif _is_file_argument(argument):
        groups_text, radii = argument, None
    else:
        groups_text, radii = "", _igrp_radii(argument, f"igrp:{argument}")
    if groups_text and _is_file_argument(groups_text):
        groups, data = _read_sets_file(groups_text, class_names, IGRP_FILE_KEYS)
        given = [k for k in ("eps_in", "eps_out") if k in data]
        if radii is None:
            if len(given) != 2:
                raise ValueError(f"{groups_text}: an IGRP file needs both 'eps_in' and 'eps_out' (or give them: "
                                 f"'igrp:{groups_text}@EPS_IN,EPS_OUT')")
            radii = (data["eps_in"], data["eps_out"])
    elif groups_text:
        groups = _parse_inline_sets(groups_text, class_names, "igrp")
    else:
        if sets is None:
            raise ValueError(f"'igrp:{argument}' takes its groups from the caller, but none were given: {usage}")
        groups = sets
    return IGRP(groups, radii[0], radii[1])


def resolve_guarantee(
    spec: str | Guarantee,
    sets: Sets | None = None,
    class_names: Sequence[str] | None = None,
) -> Guarantee:
    """Turn a guarantee name (or an instance, returned as is) into a :class:`Guarantee`.

    Args:
        spec: ``"standard"``, ``"rtk:3"``, ``"affinity:0,1;1,2"``, ``"affinity:sets.yaml"``,
            ``"superclass:cifar100"``, ...
        sets: sets used by a bare ``affinity``/``superclass`` (and the groups of ``igrp:EPS_IN,EPS_OUT``).
        class_names: lets inline and file sets name classes instead of indices.
    """
    if isinstance(spec, Guarantee):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a guarantee is a name like 'rtk:3', got {spec!r}")
    name, _, argument = spec.strip().partition(":")
    return GUARANTEES.get(name.lower())(argument or None, sets, class_names)

"""Name -> constructor registries (guarantees, certifiers, architectures).

Constructors, not instances, are stored; duplicate names raise; unknown names raise with the
list of known ones, so the CLI and configs can resolve everything by name.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A mapping from names to constructors with a registering decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@registry.register("name")`` records the decorated constructor."""

        def decorator(constructor: Callable[..., T]) -> Callable[..., T]:
            self.add(name, constructor)
            return constructor

        return decorator

    def add(self, name: str, constructor: Callable[..., T]) -> None:
        if not name or name != name.strip().lower():
            raise ValueError(f"{self.kind} names must be non-empty lower-case, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = constructor

    @contextlib.contextmanager
    def registered(self, name: str, constructor: Callable[..., T]) -> Iterator[Callable[..., T]]:
        """Register ``constructor`` under ``name`` for the duration of a ``with`` block (tests,
        experiments); the name must be free, and is removed again on exit."""
        self.add(name, constructor)
        try:
            yield constructor
        finally:
            if self._entries.get(name) is constructor:
                del self._entries[name]

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

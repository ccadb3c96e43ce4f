"""The ``p`` of an ``l_p`` ball: parsed once, printed once, written to JSON one way."""

from __future__ import annotations

import math
import numbers

__all__ = ["Norm", "SUPPORTED_NORMS"]

#: the norms some certifier supports (GloRo: 2 and inf; bound propagation: 2 and inf)
SUPPORTED_NORMS = (2.0, math.inf)


class Norm(float):
    """An ``l_p`` norm, ``p`` in :data:`SUPPORTED_NORMS`; a ``float`` so arithmetic and
    comparisons (``norm == float("inf")``) work unchanged.

    ``Norm("inf")``, ``Norm("Linf")``, ``Norm("l2")``, ``Norm(2)``, ``Norm(2.0)`` and
    ``Norm(float("inf"))`` are accepted; anything else raises ``ValueError`` naming the
    supported norms. ``str(Norm(2)) == "2"``, ``str(Norm("inf")) == "inf"``: the CLI's spelling
    and the one JSON representation (:meth:`to_json`).
    """

    def __new__(cls, value: "str | float | Norm") -> "Norm":
        if isinstance(value, Norm):
            return value
        return super().__new__(cls, _parse(value))

    @property
    def name(self) -> str:
        """``"2"`` or ``"inf"``."""
        return "inf" if math.isinf(self) else f"{float(self):g}"

    def to_json(self) -> str:
        """The one JSON representation: the name as a string (JSON has no infinity)."""
        return self.name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Norm({self.name!r})"

    def __reduce__(self):
        return (Norm, (self.name,))


def _parse(value: object) -> float:
    supported = " or ".join("inf" if math.isinf(p) else f"{p:g}" for p in SUPPORTED_NORMS)
    if isinstance(value, str):
        text = value.strip().lower().replace("_", "")
        if text.startswith("l"):
            text = text[1:]
        if text in ("inf", "infinity"):
            number = math.inf
        else:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"norm must be {supported}, got {value!r}") from None
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError(f"norm must be {supported}, got {value!r}")
    if number not in SUPPORTED_NORMS:
        raise ValueError(f"norm must be {supported}, got {value!r}")
    return number

"""Per-epoch schedules in the notation of Table F1 (Leino & Fredrikson 2021).

- ``"1e-3 -> 1e-6 after half"``: constant, then from the halfway epoch exponential decay that
  reaches the end value on the final epoch (the learning rates of Table F1).
- ``"0.01 -> 1.2 log half"``: logarithmic increase (fast first, then slower),
  ``v = a + (b - a) ln(1 + (e - 1) p)`` with ``p`` the progress to the halfway epoch; constant after.
- ``"1.0 -> 1.2"``: linear over all epochs; ``"1.0 -> 10.0 half"``: linear, reached at half.
- a plain number (``"1e-3"`` or ``0.5``): constant.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Schedule", "parse_schedule"]

_SHAPES = ("linear", "log", "exp")
_SPANS = ("full", "half", "after_half")

_PATTERN = re.compile(
    r"^\s*(?P<start>[-+0-9.eE]+)\s*->\s*(?P<end>[-+0-9.eE]+)\s*(?P<shape>log|exp|linear)?\s*(?P<span>after half|half)?\s*$"
)


@dataclass(frozen=True)
class Schedule:
    """A value scheduled over ``epochs`` epochs (see module docstring)."""

    start: float
    end: float
    shape: str = "linear"
    span: str = "full"

    def __post_init__(self) -> None:
        if self.shape not in _SHAPES:
            raise ValueError(f"schedule shape must be one of {_SHAPES}, got {self.shape!r}")
        if self.span not in _SPANS:
            raise ValueError(f"schedule span must be one of {_SPANS}, got {self.span!r}")
        if self.shape == "exp" and (self.start <= 0 or self.end <= 0):
            raise ValueError("an exponential schedule needs positive start and end values")

    def __call__(self, epoch: int, epochs: int) -> float:
        """Value at ``epoch`` (0-based) of ``epochs``."""
        if epochs <= 1 or self.start == self.end:
            return self.start if epochs > 1 else self.end
        last = epochs - 1
        half = last / 2
        if self.span == "full":
            progress = epoch / last
        elif self.span == "half":
            progress = min(epoch / half, 1.0) if half > 0 else 1.0
        else:  # after half
            progress = max(epoch - half, 0.0) / (last - half) if last > half else 1.0
        progress = min(max(progress, 0.0), 1.0)
        if self.shape == "linear":
            return self.start + (self.end - self.start) * progress
        if self.shape == "log":
            return self.start + (self.end - self.start) * math.log1p((math.e - 1) * progress)
        return self.start * (self.end / self.start) ** progress

    def describe(self) -> str:
        span = {"full": "", "half": " half", "after_half": " after half"}[self.span]
        shape = "" if self.shape == "linear" else f" {self.shape}"
        return f"{self.start:g} -> {self.end:g}{shape}{span}" if self.start != self.end else f"{self.start:g}"


def parse_schedule(text: str | float | int) -> Schedule:
    """Parse Table F1 notation (module docstring). ``after half`` decays exponentially."""
    if isinstance(text, bool):
        raise ValueError(f"not a schedule: {text!r}")
    if isinstance(text, (int, float)):
        return Schedule(float(text), float(text))
    stripped = str(text).strip()
    try:
        value = float(stripped)
        return Schedule(value, value)
    except ValueError:
        pass
    match = _PATTERN.match(stripped)
    if not match:
        raise ValueError(
            f"cannot parse schedule {text!r}; use e.g. '1e-3 -> 1e-6 after half', "
            "'0.01 -> 1.2 log half', '1.0 -> 1.2' or a number"
        )
    span = {None: "full", "half": "half", "after half": "after_half"}[match["span"]]
    shape = match["shape"] or ("exp" if span == "after_half" else "linear")
    return Schedule(float(match["start"]), float(match["end"]), shape, span)

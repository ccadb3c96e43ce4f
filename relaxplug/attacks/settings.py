"""How hard attacks look: one settings object, defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AttackSettings"]


@dataclass(frozen=True)
class AttackSettings:
    """PGD and AutoAttack settings shared by every attack entry point.

    Args:
        steps: PGD steps per start (``>= 1``).
        restarts: random starts besides the one at the clean point (``>= 0``).
        step_size: PGD step; ``None`` is ``2.5 * eps / steps`` (Madry et al.), cosine-decayed.
        targets: targeted runs per claim besides the untargeted one: the ``targets``
            highest-ranked losing classes (``>= 0``).
        batch_size: rows per PGD chunk (``>= 1``).
        seed: seed of the random starts.
        autoattack: also run AutoAttack on the top-1 claims (``autoattack_fast``: APGD-CE and
            APGD-T only, ``autoattack_iterations`` iterations).
        progress: show a progress bar per claim batch and AutoAttack's own progress lines.
    """

    steps: int = 50
    restarts: int = 2
    step_size: float | None = None
    targets: int = 3
    batch_size: int = 256
    seed: int = 0
    autoattack: bool = True
    autoattack_fast: bool = False
    autoattack_iterations: int = 20
    progress: bool = False

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("restarts", 0), ("targets", 0), ("batch_size", 1), ("autoattack_iterations", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                why = " (a check that takes no step attacks nothing)" if name == "steps" else ""
                raise ValueError(f"attack {name} must be an integer >= {low}{why}, got {value!r}")
        if self.step_size is not None and (isinstance(self.step_size, bool) or not self.step_size > 0):
            raise ValueError(f"attack step_size must be a number > 0 or None, got {self.step_size!r}")

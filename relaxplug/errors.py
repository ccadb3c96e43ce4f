"""Errors a user must act on, as the command line reports them.

``ValueError`` (and ``FileNotFoundError``) means the input was wrong: the CLI exits 2.
:class:`RunFailure` means a run could not complete for a reason outside the input (another run
holds the output directory, training diverged, nothing could be measured): the CLI exits 1.
"""

from __future__ import annotations

__all__ = ["RunFailure", "TrainingDiverged"]


class RunFailure(RuntimeError):
    """A run that stopped for a reason the user must act on (its message says which)."""


class TrainingDiverged(RunFailure):
    """Training whose loss or weights stopped being finite; the last good checkpoint is kept."""

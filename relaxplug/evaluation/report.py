"""Plain-text tables and JSON output for the CLI."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from relaxplug.outputs import atomic_write

__all__ = ["HISTORY_COLUMNS", "eval_filename", "format_history", "format_table", "write_json"]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def format_table(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Left-aligned text table of ``records`` restricted to ``columns``."""
    rows = [[_cell(r.get(c, "")) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join([line, rule, *body])


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (temporary file, fsync, rename); a failed write leaves no temporary file."""
    text = (json.dumps(data, indent=2, default=_default) + "\n").encode()
    return atomic_write(path, lambda handle: handle.write(text), "JSON results")


def _slug(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    head, colon, rest = text.partition(":")
    text = head + colon + os.path.basename(rest)  # a guarantee's file argument: its file name
    return re.sub(r"[^A-Za-z0-9.,@+-]+", "-", text).strip("-.") or "x"


def eval_filename(record: dict[str, Any]) -> str:
    """``eval_<guarantee>_<certifier>_eps<eps>_L<norm>.json``: an ``eval`` result named by what it holds,
    so runs with another guarantee, certifier, radius or norm never overwrite each other.

    IGRP records name both radii (``eps<in>-<out>``); a guarantee given as a file path keeps
    its file name only.
    """
    eps = f"{_slug(record['eps_in'])}-{_slug(record['eps_out'])}" if "eps_out" in record else _slug(record["eps"])
    norm = record.get("norm")
    norm_text = "inf" if isinstance(norm, float) and math.isinf(norm) else _slug(norm)
    return f"eval_{_slug(record['guarantee'])}_{_slug(record['certifier'])}_eps{eps}_L{norm_text}.json"


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


#: ``train``'s summary columns, in order, when the history has them
HISTORY_COLUMNS = ("epoch", "lr", "eps", "loss", "train_accuracy", "train_instrumented_accuracy", "kappa", "beta", "seconds")


def format_history(history: Sequence[dict[str, Any]], rows: int = 12) -> str:
    """A training history as a table: every epoch when there are at most ``rows``, else evenly
    spaced epochs and always the last."""
    if not history:
        return "(no epoch run: the checkpoint was already complete)"
    columns = [c for c in HISTORY_COLUMNS if any(r.get(c) is not None for r in history)]
    picked = list(history)
    if len(picked) > rows:
        step = len(picked) / (rows - 1)
        picked = [history[int(i * step)] for i in range(rows - 1)] + [history[-1]]
    small = ("lr", "eps", "kappa", "beta")  # may be 1e-5: 3 significant digits, not 3 decimals
    shown = [{k: (f"{v:.3g}" if k in small and isinstance(v, float) else v) for k, v in r.items()} for r in picked]
    return format_table(shown, columns)

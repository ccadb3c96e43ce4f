"""Compare certifiers on one model, guarantee, radius and norm: accuracy, cost, and disagreements.

``compare_certifiers`` certifies the same points with each certifier (GloRo's Lipschitz margins,
IBP, CROWN-IBP, CROWN, ...) and records, per certifier, VRA, clean accuracy, rejection rate,
wall-clock time (after a one-point warm-up that fills the certifier's per-model caches, timed
separately as ``setup_seconds``) and peak memory per instance, plus a matrix of how many points each certifier
certifies that another does not. ``format_table`` prints it in the style of the GloRo poster's
certification-cost table; ``save`` writes ``compare.json`` and ``compare.png``.

Peak memory is measured per certifier, over its batches:

- on CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
  allocated before (tensors the certifier allocates, caches included);
- on CPU: the process's peak resident set size ``VmHWM`` from ``/proc/self/status``, reset before
  each certifier by writing ``5`` to ``/proc/self/clear_refs`` (Linux), minus ``VmRSS`` before.
  Where the reset is refused, the growth of ``VmHWM`` is reported (a lower bound: memory reused
  from an earlier peak is not counted). Where ``/proc`` is absent the value is NaN.

The figure is divided by the number of points certified at once (``min(batch_size, N)``), so it
reads as megabytes per instance in a batch.

Under ``torchrun`` each process certifies its block of whole batches and rank 0 joins them
(``docs/distributed.md``): the same result, with times summed over the processes and the
largest process's peak memory.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from relaxplug.adapters import Guarantee, resolve_guarantee
from relaxplug.adapters.certificate import Certificate
from relaxplug.certifiers import Certifier, get_certifier
from relaxplug.certifiers.certify import certify
from relaxplug import distributed
from relaxplug.distributed import DistributedContext
from relaxplug.evaluation.report import write_json
from relaxplug.norms import Norm

__all__ = ["CertifierRecord", "ComparisonResult", "compare_certifiers", "format_table", "save"]


@dataclass
class CertifierRecord:
    """One certifier's outcome on the compared points."""

    certifier: str
    guarantee: str
    eps: float
    norm: str
    points: int
    vra: float
    clean_accuracy: float
    rejection_rate: float
    seconds: float
    peak_memory_mb_per_instance: float
    certified: int
    setup_seconds: float = 0.0


@dataclass
class ComparisonResult:
    """Records per certifier, ``certified_not[a][b]`` = points certified by ``a`` but not by ``b``,
    ``skipped`` certifiers with the reason, and how memory was measured."""

    records: list[CertifierRecord]
    certified_not: dict[str, dict[str, int]]
    skipped: dict[str, str] = field(default_factory=dict)
    memory_method: str = ""
    batch_size: int = 0
    device: str = "cpu"
    certified_masks: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def record(self, certifier: str) -> CertifierRecord:
        for r in self.records:
            if r.certifier == certifier:
                return r
        raise KeyError(certifier)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": [asdict(r) for r in self.records],
            "certified_not": self.certified_not,
            "skipped": self.skipped,
            "memory_method": self.memory_method,
            "batch_size": self.batch_size,
            "device": self.device,
        }


# ----------------------------------------------------------------------------- memory


def _proc_status() -> dict[str, int]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(VmHWM|VmRSS):\s+(\d+)\s+kB", text, flags=re.M)}


class _PeakMemory:
    """Peak memory growth (bytes) of a block of work, on CUDA or on the CPU process."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.method = ""

    def __enter__(self) -> "_PeakMemory":
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated minus allocated before"
            return self
        reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            reset = True
        except OSError:
            pass
        status = _proc_status()
        if not status:
            self.method = "unavailable (no /proc/self/status)"
            self.base = None
        elif reset:
            self.method = "cpu VmHWM (reset via /proc/self/clear_refs) minus VmRSS before"
            self.base = status["VmRSS"] * 1024
        else:
            self.method = "cpu VmHWM growth (peak not resettable: lower bound)"
            self.base = status["VmHWM"] * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = max(0, torch.cuda.max_memory_allocated(self.device) - self.base)
        elif self.base is None:
            self.peak = math.nan
        else:
            self.peak = max(0, _proc_status().get("VmHWM", 0) * 1024 - self.base)


# ----------------------------------------------------------------------------- comparison


def _load_optional_certifiers() -> None:
    import importlib.util

    if importlib.util.find_spec("auto_LiRPA") is not None:  # only auto_LiRPA's absence is tolerated
        from relaxplug.certifiers import lirpa  # noqa: F401  (registers ibp, crown-ibp, crown)


def _resolve(spec: str | Certifier) -> tuple[str, Certifier | None, str | None]:
    """``(label, certifier or None, reason it is unavailable)``; ``NAME:MODE`` selects a bound
    propagation spec mode (``crown-ibp:anchor``)."""
    if isinstance(spec, Certifier):
        return getattr(spec, "label", spec.name), spec, None
    name, _, mode = str(spec).partition(":")  # e.g. "crown-ibp:anchor" picks a spec mode
    try:
        cert = get_certifier(name, **({"spec": mode} if mode else {}))
    except ValueError as error:
        reason = str(error)
        if str(spec).lower() in ("ibp", "crown-ibp", "crown"):
            reason += " (bound propagation needs auto_LiRPA: pip install --no-deps auto-lirpa==0.3)"
        return str(spec), None, reason
    return getattr(cert, "label", cert.name), cert, None


def compare_certifiers(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    guarantee: str | Guarantee,
    eps: float,
    norm: float | str = 2,
    certifiers: Sequence[str | Certifier] = ("gloro", "ibp", "crown-ibp", "crown"),
    batch_size: int = 64,
    *,
    sets: Sequence[Sequence[int]] | None = None,
    progress: bool = True,
    context: DistributedContext | None = None,
) -> ComparisonResult | None:
    """Certify ``x`` (labels ``y``) with each certifier and compare.

    Args:
        certifiers: names or :class:`Certifier` instances; ones that do not support ``norm`` (or
            are not installed) are skipped and listed in ``result.skipped``.
        batch_size: points certified at once (also the divisor of the peak memory).
        context: under torchrun (``docs/distributed.md``) each rank certifies its block of whole
            batches (the batches of a one-process run) on its device and rank 0 returns the
            comparison of all points (the other ranks ``None``): the one-process result, except
            that ``seconds`` and ``setup_seconds`` add up the ranks' times and the peak memory
            is the largest rank's.
    Returns:
        a :class:`ComparisonResult`.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} points but y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError("nothing to compare: x is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    norm_value = Norm(norm)
    norm_name = norm_value.to_json()
    spec = resolve_guarantee(guarantee, sets=sets)
    _load_optional_certifiers()
    device = x.device
    y = y.to(device).long()

    runnable: list[tuple[str, Certifier]] = []
    skipped: dict[str, str] = {}
    for item in certifiers:
        label, cert, reason = _resolve(item)
        while label in skipped or any(label == l for l, _ in runnable):
            label += "'"
        if cert is None:
            skipped[label] = reason or "unavailable"
            continue
        try:
            cert.check_norm(norm_value)
        except ValueError as error:
            skipped[label] = str(error)
            continue
        runnable.append((label, cert))

    context = context or DistributedContext()
    shard = distributed.shard_range(x.shape[0], context, batch_size)
    starts = list(range(shard.start, shard.stop, batch_size))  # this rank's whole batches
    mine = _Share(logits=None, certs={}, seconds={}, setup_seconds={}, peak={})
    bar = tqdm(total=len(runnable) * len(starts), desc="compare", disable=not (progress and context.is_main), leave=False)
    was_training = model.training
    try:
        if starts:
            with torch.no_grad():
                mine.logits = torch.cat([model.eval()(x[a:a + batch_size]) for a in starts]).cpu()
        for label, cert in runnable:
            if not starts:
                continue
            bar.set_postfix_str(label)
            # one-off work (GloRo's Lipschitz bound, auto_LiRPA's graph conversion) is cached per
            # model: pay it on one point (the first of the data, on every rank) so the timing below
            # is the per-point cost
            setup = time.perf_counter()
            certify(model, x[:1], eps, norm_value, cert, spec, radius=False)
            mine.setup_seconds[label] = time.perf_counter() - setup
            parts: list[Certificate] = []
            with _PeakMemory(device) as memory:
                start = time.perf_counter()
                for a in starts:
                    parts.append(certify(model, x[a:a + batch_size], eps, norm_value, cert, spec, radius=False))
                    bar.update(1)
                mine.seconds[label] = time.perf_counter() - start
            mine.memory_method = memory.method
            mine.peak[label] = memory.peak
            mine.certs[label] = Certificate.concat(parts).to("cpu")
    finally:
        bar.close()
        model.train(was_training)
    shares = distributed.gather_to_main(mine, context)
    if shares is None:
        return None
    return _comparison([share for share in shares if share.logits is not None], [label for label, _ in runnable],
                       y.cpu(), eps, norm_name, skipped, min(batch_size, x.shape[0]), str(device))


@dataclass
class _Share:
    """One process's part of a comparison (its batches; all tensors on the CPU)."""

    logits: Tensor | None
    certs: dict[str, Certificate]
    seconds: dict[str, float]
    setup_seconds: dict[str, float]
    peak: dict[str, float]
    memory_method: str = ""


def _comparison(shares: Sequence[_Share], labels: Sequence[str], y: Tensor, eps: float, norm_name: str,
                skipped: dict[str, str], per_batch: int, device: str) -> ComparisonResult:
    """The comparison of the processes' shares (in rank order, i.e. data order): certificates
    joined, times added (compute seconds over all processes), peak memory the largest."""
    logits = torch.cat([share.logits for share in shares])
    records: list[CertifierRecord] = []
    masks: dict[str, Tensor] = {}
    for label in labels:
        result = Certificate.concat([share.certs[label] for share in shares])
        masks[label] = result.certified
        peak = max(share.peak[label] for share in shares)
        records.append(CertifierRecord(
            certifier=label,
            guarantee=result.guarantee,
            eps=float(eps),
            norm=norm_name,
            points=len(result),
            vra=result.vra(y),
            clean_accuracy=float((logits.argmax(1) == y).float().mean()),
            rejection_rate=float((~result.certified).float().mean()),
            seconds=sum(share.seconds[label] for share in shares),
            peak_memory_mb_per_instance=peak / 2**20 / per_batch,
            certified=int(result.certified.sum()),
            setup_seconds=sum(share.setup_seconds[label] for share in shares),
        ))
    certified_not = {a: {b: int((masks[a] & ~masks[b]).sum()) for b in masks} for a in masks}
    memory_method = shares[0].memory_method if labels else ""
    return ComparisonResult(records, certified_not, skipped, memory_method, per_batch, device, masks)


# ----------------------------------------------------------------------------- output


def _format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_table(result: ComparisonResult) -> str:
    """Cost table (as in the GloRo poster): certifier, VRA, clean accuracy, rejection rate, time
    (total and per instance), peak memory per instance; then the disagreement matrix and notes."""
    lines: list[str] = []
    if result.records:
        first = result.records[0]
        lines.append(f"{first.guarantee} at eps={first.eps:g} (L{first.norm}), {first.points} points, "
                     f"batch {result.batch_size}, {result.device}")
    header = ("certifier", "VRA", "clean acc", "rejected", "setup (s)", "time (s)", "ms / instance", "peak MB / instance")
    rows = [
        (r.certifier, f"{100 * r.vra:.1f}%", f"{100 * r.clean_accuracy:.1f}%", f"{100 * r.rejection_rate:.1f}%",
         f"{r.setup_seconds:.2f}", f"{r.seconds:.2f}", f"{1000 * r.seconds / max(r.points, 1):.2f}",
         "-" if math.isnan(r.peak_memory_mb_per_instance) else f"{r.peak_memory_mb_per_instance:.2f}")
        for r in result.records
    ]
    lines += _format_rows(header, rows)
    if len(result.certified_not) > 1:
        names = list(result.certified_not)
        lines += ["", "certified by row, not by column:"]
        lines += _format_rows(("", *names), [(a, *(str(result.certified_not[a][b]) for b in names)) for a in names])
    if result.skipped:
        lines.append("")
        lines += [f"skipped {name}: {reason}" for name, reason in result.skipped.items()]
    if result.memory_method:
        lines += ["", f"memory: {result.memory_method}"]
    return "\n".join(lines)


def save(result: ComparisonResult, out_dir: str | Path) -> Path:
    """Write ``compare.json`` and ``compare.png`` (bar charts of VRA and seconds) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", result.to_dict())
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = [r.certifier for r in result.records]
    fig, (ax_vra, ax_time) = plt.subplots(1, 2, figsize=(max(6.0, 1.6 * len(names) + 3), 3.6))
    ax_vra.bar(names, [100 * r.vra for r in result.records], color="tab:blue")
    ax_vra.set_ylabel("VRA (%)")
    ax_vra.set_ylim(0, 100)
    ax_time.bar(names, [r.seconds for r in result.records], color="tab:orange")
    ax_time.set_ylabel("seconds")
    if result.records:
        r = result.records[0]
        fig.suptitle(f"{r.guarantee}, eps={r.eps:g}, L{r.norm}, {r.points} points")
    for ax in (ax_vra, ax_time):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=100)
    plt.close(fig)
    return out

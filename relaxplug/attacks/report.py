"""``relaxplug attack``: certified and empirical robustness side by side, every claim attacked.

:func:`attack_report` certifies a data set (optional), attacks every candidate claim of the
guarantee (:func:`relaxplug.attacks.empirical.attack_guarantee`) and every claim of every
certificate (:func:`relaxplug.attacks.claims.attack_claims`), and with AutoAttack the top-1
claims at the guarantee's smallest radius. A certificate is *broken* when any attack finds a
point of its ball where one of its claims fails. :func:`attack_main` is the command.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from relaxplug import distributed
from relaxplug.adapters import Guarantee, resolve_guarantee
from relaxplug.adapters.certificate import Certificate
from relaxplug.adapters.claims import Claim
from relaxplug.attacks.autoattack import autoattack_accuracy
from relaxplug.attacks.claims import attack_claims
from relaxplug.attacks.empirical import AttackResult, attack_guarantee, claim_accuracy
from relaxplug.attacks.settings import AttackSettings
from relaxplug.certifiers import Certifier, get_certifier
from relaxplug.certifiers.certify import resolve_eps
from relaxplug.distributed import DistributedContext
from relaxplug.norms import Norm

__all__ = ["REPORT_COLUMNS", "attack_report", "report_columns", "as_tensors"]

REPORT_COLUMNS = (
    "guarantee", "certifier", "eps", "norm", "points", "clean_accuracy", "vra",
    "empirical_robust_accuracy", "gap", "autoattack_accuracy", "certified", "attacked", "broken",
)


def report_columns(record: dict[str, Any]) -> tuple[str, ...]:
    """:data:`REPORT_COLUMNS` plus the per-claim accuracies of guarantees with several claims."""
    extra = tuple(k for k in record if k.startswith(("verified_accuracy_", "empirical_accuracy_")))
    return (*REPORT_COLUMNS[:7], *sorted(extra), *REPORT_COLUMNS[7:])


def as_tensors(data: Dataset | tuple[Tensor, Tensor], limit: int | None) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a data set or a pair of tensors, the first ``limit`` points."""
    if isinstance(data, (tuple, list)):
        x, y = data
        x, y = torch.as_tensor(x), torch.as_tensor(y).long()
        return (x[:limit], y[:limit]) if limit is not None else (x, y)
    if limit is not None:
        data = Subset(data, range(min(limit, len(data))))
    xs, ys = [], []
    for xb, yb in DataLoader(data, batch_size=1024, shuffle=False):
        xs.append(xb)
        ys.append(torch.as_tensor(yb).long())
    if not xs:
        raise ValueError("the data set is empty")
    return torch.cat(xs), torch.cat(ys)


def _claim_keys(claim: Claim) -> Tensor:
    """``(C, 1 + 2n)`` rows identifying each claim of a batch: point, winners, losers."""
    return torch.cat([claim.point[:, None].cpu(), claim.winners.cpu().long(), claim.losers.cpu().long()], dim=1)


def _same_claims(made: Claim, tried: Sequence[Claim], worst: Sequence[Tensor]) -> Tensor:
    """Per row of ``made``: the smallest margin an earlier attack found on the very same claim
    (same point, radius, winners and losers), ``+inf`` where none was tried. ``(C,)``."""
    best = torch.full((len(made),), float("inf"), dtype=torch.float64)
    mine = _claim_keys(made)
    for claim, margin in zip(tried, worst):
        if claim.eps != made.eps or len(claim) == 0 or len(made) == 0:
            continue
        keys, inverse = torch.unique(torch.cat([mine, _claim_keys(claim)]), dim=0, return_inverse=True)
        found = torch.full((keys.shape[0],), float("inf"), dtype=torch.float64)
        found = found.scatter_reduce(0, inverse[len(made):], margin.detach().cpu().double(), reduce="amin")
        best = torch.minimum(best, found[inverse[: len(made)]])
    return best


@dataclass(frozen=True)
class _Block:
    """What one block of points contributes to the report, on the CPU, with data-set indices."""

    result: AttackResult
    cert: Certificate | None
    made: tuple[Claim, ...]
    broken: dict[str, set[int]]
    autoattack: Tensor | None
    autoattack_attacks: tuple[str, ...]
    seconds: float


def _shifted(claim: Claim, offset: int) -> Claim:
    """``claim`` on the CPU with its points moved by ``offset`` (block index -> data-set index)."""
    return Claim(claim.name, claim.eps, claim.point.cpu() + offset, claim.winners.cpu(), claim.losers.cpu())


def _attack_block(model: nn.Module, x: Tensor, y: Tensor, spec: Guarantee, eps: float, norm: Norm,
                  certifier: Certifier | None, settings: AttackSettings, first: int) -> _Block:
    """Everything :func:`attack_report` does, for the points ``x`` whose data-set indices start at ``first``."""
    start = time.perf_counter()
    result = attack_guarantee(model, x, y, spec, eps, norm, settings, index_offset=first)
    cert, made, broken = None, (), {}
    if certifier is not None:
        from relaxplug.evaluation.dataset import certify_dataset

        cert, _, _ = certify_dataset(model, TensorDataset(x, y), eps, norm, certifier, spec,
                                     batch_size=settings.batch_size, device=x.device, progress=False)
        cert = cert.to(x.device)
        made = tuple(spec.claims(cert))
        second = attack_claims(model, x, made, norm, replace(settings, seed=settings.seed + 1), index_offset=first)
        for claim, margin in zip(made, second):
            # the guarantee attack may have tried the same claim: a break there counts too
            margin = torch.minimum(margin.detach().cpu().double(), _same_claims(claim, result.claims, result.worst))
            broken.setdefault(claim.name, set()).update(
                first + int(i) for i in claim.point[(margin <= 0).to(claim.point.device)].tolist())
    robust, attacks = None, ()
    if settings.autoattack:
        # AutoAttack draws from torch's global generator: one seed per block, from its first index
        top1_eps = float(spec.radii(None if spec.carries_radii else eps)[0])
        aa = autoattack_accuracy(model, x, y, top1_eps, norm, replace(settings, seed=settings.seed + first))
        robust, attacks = aa.robust.cpu(), aa.attacks
        for claim in made:
            # a certified top-1 claim at this radius on a correct point that AutoAttack misclassifies
            top1 = (claim.winners.sum(1) == 1) & (claim.losers.sum(1) == claim.losers.shape[1] - 1)
            pred = claim.winners.float().argmax(1).to(y.device)
            point = claim.point.to(y.device)
            hit = top1.to(y.device) & (pred == y[point]) & ~aa.robust.to(y.device)[point]
            if claim.eps == top1_eps and bool(hit.any()):
                broken.setdefault(claim.name, set()).update(first + int(i) for i in point[hit].tolist())
    result = replace(result, order=result.order.cpu(), claims=tuple(_shifted(c, first) for c in result.claims),
                     worst=tuple(w.detach().cpu() for w in result.worst), classes=result.classes.cpu(),
                     labels=None if result.labels is None else result.labels.cpu())
    return _Block(result, None if cert is None else cert.to("cpu"), tuple(_shifted(c, first) for c in made), broken,
                  robust, attacks, time.perf_counter() - start)


def _merged(results: Sequence[AttackResult]) -> AttackResult:
    """One :class:`AttackResult` of consecutive blocks (claim batches listed block after block)."""
    first = results[0]
    return replace(first, order=torch.cat([r.order for r in results]),
                   claims=tuple(c for r in results for c in r.claims), worst=tuple(w for r in results for w in r.worst),
                   classes=torch.cat([r.classes for r in results]),
                   labels=None if first.labels is None else torch.cat([r.labels for r in results]),
                   seconds=sum(r.seconds for r in results))


def _record(blocks: Sequence[_Block], spec: Guarantee, eps: float) -> dict[str, Any]:
    """The report of every block, in data-set order."""
    result = _merged([b.result for b in blocks])
    y = result.labels
    record: dict[str, Any] = {
        **result.summary(),
        "radii": list(spec.radii(None if spec.carries_radii else eps)),
        "certifier": "-", "vra": float("nan"), "gap": float("nan"),
        "certified": 0, "attacked": 0, "broken": 0, "broken_points": [], "broken_claims": {},
    }
    if blocks[0].cert is not None:
        cert = Certificate.concat([b.cert for b in blocks])
        made = tuple(c for b in blocks for c in b.made)
        vra = cert.vra(y)
        record.update(certifier=cert.certifier, vra=vra, gap=record["empirical_robust_accuracy"] - vra,
                      certified=int(cert.certified.sum()), attacked=sum(len(c) for c in made),
                      certify_seconds=cert.seconds)
        if len({c.name for c in made}) > 1:
            held = [torch.ones(len(c), dtype=torch.bool) for c in made]
            for name, value in claim_accuracy(made, held, y).items():
                record[f"verified_accuracy_{name}"] = value
    if blocks[0].autoattack is not None:
        robust = torch.cat([b.autoattack for b in blocks])
        record.update(autoattack_accuracy=float(robust.float().mean()),
                      autoattack_eps=float(spec.radii(None if spec.carries_radii else eps)[0]),
                      autoattack_attacks=list(blocks[0].autoattack_attacks))
    broken: dict[str, set[int]] = {}
    for block in blocks:
        for name, points in block.broken.items():
            broken.setdefault(name, set()).update(points)
    points = sorted(set().union(*broken.values())) if broken else []
    record.update(broken=len(points), broken_points=points,
                  broken_claims={name: sorted(v) for name, v in broken.items()},
                  seconds=sum(b.seconds for b in blocks))
    return record


def _count(data: Dataset | tuple[Tensor, Tensor], limit: int | None) -> int:
    n = len(data[0]) if isinstance(data, (tuple, list)) else len(data)
    return n if limit is None else min(n, limit)


def _load(data: Dataset | tuple[Tensor, Tensor], shard: range) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of the points ``shard`` of ``data``."""
    if isinstance(data, (tuple, list)):
        x, y = as_tensors(data, shard.stop)
        return x[shard.start:], y[shard.start:]
    return as_tensors(Subset(data, shard), None)


def attack_report(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    guarantee: str | Guarantee,
    eps: float | None,
    norm: float | str = 2,
    certifier: str | Certifier | None = None,
    settings: AttackSettings | None = None,
    *,
    sets: Sequence[Sequence[int]] | None = None,
    limit: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    context: DistributedContext | None = None,
    **certifier_options: Any,
) -> dict[str, Any] | None:
    """Certified and empirical robustness of ``model`` on ``data``, side by side.

    The points are attacked in blocks of ``settings.batch_size`` (in data-set order), each block on
    its own: random starts are seeded per example by its data-set index, AutoAttack per block by
    the index of its first point, so a point's outcome does not depend on where else it is
    attacked. With a distributed ``context`` (torchrun, ``docs/distributed.md``) each rank attacks
    its share of whole blocks and rank 0 returns the report of all of them (the other ranks return
    ``None``): the same as one process, except the times, which add up the ranks' times.

    Returns:
        a JSON-ready record: ``points``, ``clean_accuracy``, ``vra`` (with a certifier),
        ``empirical_robust_accuracy`` (>= VRA when the certifier is sound), ``gap``, per claim
        name of a guarantee with several claims ``verified_accuracy_NAME`` and
        ``empirical_accuracy_NAME``, ``certified``, ``attacked`` (claims of certificates
        attacked), ``broken`` and ``broken_points`` (indices into ``data``; per claim name in
        ``broken_claims``), ``autoattack_accuracy`` (top-1 at ``autoattack_eps``); times
        ``seconds``, ``attack_seconds``, ``certify_seconds`` (summed over blocks).
    """
    settings = settings or AttackSettings()
    context = context or DistributedContext()
    norm = Norm(norm)
    spec = resolve_guarantee(guarantee, sets=sets)
    eps = resolve_eps(spec, eps)
    n = _count(data, limit)
    if n == 0:
        raise ValueError("the data set is empty")
    cert_obj = None if certifier is None else get_certifier(certifier, **certifier_options)
    shard = distributed.shard_range(n, context, settings.batch_size)
    blocks: list[_Block] = []
    if len(shard):
        x, y = _load(data, shard)
        if device is not None:
            model = model.to(device)
        param = next(model.parameters(), None)
        x = x.to(param.device if param is not None else x.device)
        y = y.to(x.device)
        quiet = replace(settings, progress=False)
        size = settings.batch_size
        for a in tqdm(range(0, len(shard), size), desc="attack", unit="block", disable=not (progress and context.is_main),
                      leave=False):
            blocks.append(_attack_block(model, x[a:a + size], y[a:a + size], spec, eps, norm, cert_obj, quiet,
                                        shard.start + a))
    parts = distributed.gather_to_main(blocks, context)
    if parts is None:
        return None
    return _record([block for part in parts for block in part], spec, eps)

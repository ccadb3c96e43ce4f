"""``relaxplug attack``: certified and empirical robustness side by side, every claim attacked.

:func:`attack_report` certifies a data set (optional), attacks every candidate claim of the
guarantee (:func:`relaxplug.attacks.empirical.attack_guarantee`) and every claim of every
certificate (:func:`relaxplug.attacks.claims.attack_claims`), and with AutoAttack the top-1
claims at the guarantee's smallest radius. A certificate is *broken* when any attack finds a
point of its ball where one of its claims fails. :func:`attack_main` is the command.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from relaxplug.adapters import Guarantee, resolve_guarantee
from relaxplug.adapters.claims import Claim
from relaxplug.attacks.autoattack import autoattack_accuracy
from relaxplug.attacks.claims import attack_claims
from relaxplug.attacks.empirical import attack_guarantee, claim_accuracy
from relaxplug.attacks.settings import AttackSettings
from relaxplug.certifiers import Certifier, get_certifier
from relaxplug.certifiers.certify import resolve_eps
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
    **certifier_options: Any,
) -> dict[str, Any]:
    """Certified and empirical robustness of ``model`` on ``data``, side by side.

    Returns:
        a JSON-ready record: ``points``, ``clean_accuracy``, ``vra`` (with a certifier),
        ``empirical_robust_accuracy`` (>= VRA when the certifier is sound), ``gap``, per claim
        name of a guarantee with several claims ``verified_accuracy_NAME`` and
        ``empirical_accuracy_NAME``, ``certified``, ``attacked`` (claims of certificates
        attacked), ``broken`` and ``broken_points`` (indices into ``data``; per claim name in
        ``broken_claims``), ``autoattack_accuracy`` (top-1 at ``autoattack_eps``).
    """
    settings = replace(settings or AttackSettings(), progress=progress)
    norm = Norm(norm)
    x, y = as_tensors(data, limit)
    if device is not None:
        model = model.to(device)
    param = next(model.parameters(), None)
    x = x.to(param.device if param is not None else x.device)
    y = y.to(x.device)
    spec = resolve_guarantee(guarantee, sets=sets)
    eps = resolve_eps(spec, eps)
    start = time.perf_counter()
    result = attack_guarantee(model, x, y, spec, eps, norm, settings)
    record: dict[str, Any] = {
        **result.summary(),
        "radii": list(spec.radii(None if spec.carries_radii else eps)),
        "certifier": "-", "vra": float("nan"), "gap": float("nan"),
        "certified": 0, "attacked": 0, "broken": 0, "broken_points": [], "broken_claims": {},
    }
    made: tuple[Claim, ...] = ()
    broken: dict[str, set[int]] = {}
    if certifier is not None:
        from relaxplug.evaluation.dataset import certify_dataset

        cert_obj = get_certifier(certifier, **certifier_options)
        cert, _, _ = certify_dataset(model, TensorDataset(x, y), eps, norm, cert_obj, spec,
                                     batch_size=settings.batch_size, device=x.device, progress=progress)
        cert = cert.to(x.device)
        made = tuple(spec.claims(cert))
        second = attack_claims(model, x, made, norm, replace(settings, seed=settings.seed + 1))
        for claim, margin in zip(made, second):
            # the guarantee attack may have tried the same claim: a break there counts too
            margin = torch.minimum(margin.detach().cpu().double(), _same_claims(claim, result.claims, result.worst))
            broken.setdefault(claim.name, set()).update(int(i) for i in claim.point[(margin <= 0).to(claim.point.device)].tolist())
        vra = cert.vra(y)
        record.update(certifier=cert.certifier, vra=vra, gap=record["empirical_robust_accuracy"] - vra,
                      certified=int(cert.certified.sum()), attacked=sum(len(c) for c in made),
                      certify_seconds=cert.seconds)
        if len({c.name for c in made}) > 1:
            held = [torch.ones(len(c), dtype=torch.bool) for c in made]
            for name, value in claim_accuracy(made, held, y).items():
                record[f"verified_accuracy_{name}"] = value
    if settings.autoattack:
        top1_eps = float(spec.radii(None if spec.carries_radii else eps)[0])
        aa = autoattack_accuracy(model, x, y, top1_eps, norm, settings)
        record.update(autoattack_accuracy=aa.accuracy, autoattack_eps=top1_eps, autoattack_attacks=list(aa.attacks))
        for claim in made:
            # a certified top-1 claim at this radius on a correct point that AutoAttack misclassifies
            top1 = (claim.winners.sum(1) == 1) & (claim.losers.sum(1) == claim.losers.shape[1] - 1)
            pred = claim.winners.float().argmax(1).to(y.device)
            point = claim.point.to(y.device)
            hit = top1.to(y.device) & (pred == y[point]) & ~aa.robust.to(y.device)[point]
            if claim.eps == top1_eps and bool(hit.any()):
                broken.setdefault(claim.name, set()).update(int(i) for i in point[hit].tolist())
    points = sorted(set().union(*broken.values())) if broken else []
    record.update(broken=len(points), broken_points=points,
                  broken_claims={name: sorted(v) for name, v in broken.items()},
                  seconds=time.perf_counter() - start)
    return record

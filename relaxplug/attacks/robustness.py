"""Soundness a user can check: attack every set a guarantee accepts, and every certificate.

Certificates are proofs about a whole ball; attacks search the same ball for counterexamples.

* :func:`attack_guarantee` attacks, at every point, every set ``F^k(x)`` the guarantee accepts
  (``guarantee.accept(rank_order(f(x)))``) with :func:`relaxplug.attacks.pgd.pgd_set_attack`. A point
  is *empirically robust* when some acceptable set survived; it counts towards the *empirical
  robust accuracy* when the label also lies in the surviving set of the loosest surviving ``k``.
  A sound certificate's set always survives, and the sets are nested, so the empirical robust
  accuracy is an upper bound of the VRA (the seeds' metric, :meth:`Certificate.vra`).
* :func:`check_certificates` attacks every certified point with its certified set; a point is
  *broken* when the attack finds a point inside the ball where that set's margin is ``<= 0``
  (re-checked after projecting the counterexample exactly into the closed ball).
* :func:`autoattack_accuracy` runs AutoAttack (Croce & Hein 2020) for the standard guarantee.
* :func:`attack_report` puts these side by side for a data set; :func:`attack_main` is the
  command (load a checkpoint, print a table, write JSON, exit 1 when a certificate breaks).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from relaxplug.adapters import IGRP, Guarantee, rank_order, resolve_guarantee
from relaxplug.adapters.base import topk_class_mask
from relaxplug.attacks.pgd import pgd_set_attack, set_margin
from relaxplug.adapters.certificate import Certificate
from relaxplug.certifiers import Certifier, get_certifier
from relaxplug.certifiers.certify import _parse_norm, check_inputs, resolve_eps

__all__ = [
    "AttackResult",
    "AutoAttackResult",
    "attack_guarantee",
    "attack_sets",
    "check_certificates",
    "autoattack_accuracy",
    "attack_report",
    "attack_main",
    "load_evaluation",
    "checkpoint_norm",
    "REPORT_COLUMNS",
]


REPORT_COLUMNS = (
    "guarantee", "certifier", "eps", "norm", "points", "clean_accuracy", "vra",
    "empirical_robust_accuracy", "gap", "autoattack_accuracy", "certified", "attacked", "broken",
)


# ----------------------------------------------------------------------------- attacks


def _attack_norm(norm: float | str) -> float:
    value = _parse_norm(norm)
    if value not in (2.0, float("inf")):
        raise ValueError(f"attacks support norms 2 and inf, got {norm!r}")
    return value


def _into_ball(x: Tensor, x_adv: Tensor, eps: float, norm: float) -> Tensor:
    """``x_adv`` moved (if at all) so that ``||x_adv - x|| <= eps`` holds in float64 for the
    stored values: the attack projects in the working dtype, where rounding can leave a
    counterexample an ulp outside the ball (rows that stay outside fall back to ``x``).
    Shape: ``(B, ...)`` twice -> ``(B, ...)``."""

    def outside(candidate: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        delta = (candidate.double() - x.double()).flatten(1)
        size = delta.abs().amax(dim=1) if norm == float("inf") else delta.norm(dim=1)
        return size > eps, delta, size

    out = x_adv.clone()
    for shrink in (1.0, 1 - 1e-6, 1 - 1e-5, 1 - 1e-4):
        mask, delta, size = outside(out)
        if not bool(mask.any()):
            return out
        if norm == float("inf"):
            clipped = delta.clamp(-eps * shrink, eps * shrink)
        else:
            clipped = delta * (eps * shrink / size.clamp_min(1e-300))[:, None]
        out[mask] = (x.double() + clipped.view_as(x)).to(x.dtype)[mask]
    out[outside(out)[0]] = x[outside(out)[0]]
    return out


class _Restricted(nn.Module):
    """Logits with classes lifted out of the contest, per row: ``lift = -1`` pushes a class to the
    dtype's minimum, ``+1`` to its maximum, ``0`` keeps it. With only ``j`` kept inside a set ``T``
    and ``i`` outside, ``set_margin`` of ``T`` becomes the pair margin ``f_j - f_i``."""

    def __init__(self, model: nn.Module, lift: Tensor):
        super().__init__()
        self.model = model
        self.lift = lift  # (N, n) in {-1, 0, 1}

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        big = torch.finfo(logits.dtype).max
        return torch.where(self.lift == 0, logits, self.lift.to(logits.dtype) * big)


def _outside_by_rank(model: nn.Module, x: Tensor, sets: Tensor, batch_size: int) -> Tensor:
    """Classes outside each row's set, highest clean logit first: ``(N, n) -> (N, n)``; the
    first ``n - |T|`` entries of a row are its outside classes."""
    order = rank_order(_model_logits(model, x, batch_size))  # (N, n)
    n = order.shape[1]
    inside = sets.gather(1, order).long()  # (N, n): is the class at rank r in T
    ranks = torch.arange(n, device=order.device)
    return order.gather(1, torch.argsort(inside * n + ranks, dim=1))


def attack_sets(
    model: nn.Module,
    x: Tensor,
    sets: Tensor,
    eps: float,
    norm: float | str = 2,
    steps: int = 50,
    restarts: int = 2,
    seed: int = 0,
    batch_size: int = 512,
    targets: int = 3,
) -> Tensor:
    """Smallest set margin ``g_T`` found in the ball per row, by PGD in chunks of ``batch_size``.

    Each row is attacked once on ``g_T`` itself and once per *target*: the ``targets``
    highest-ranked classes ``i`` outside ``T``, on ``min_T f - f_i`` (as AutoAttack's APGD-T
    complements APGD-CE: descent on a min of margins can stall at a local minimum on the
    sphere, e.g. on a linear model, where a single pair's margin cannot). The value returned is
    the true ``g_T`` at the best point found. A non-positive value is *verified*: recomputed at
    the counterexample after moving it exactly into the closed ball, so ``<= 0`` always names a
    real point where ``T`` is not the top-``|T|`` set.
    Shape: ``x (N, ...)``, ``sets (N, n)`` bool -> ``(N,)``.
    """
    norm = _attack_norm(norm)
    check_inputs(x, eps)
    if sets.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} inputs but {sets.shape[0]} sets")
    if x.shape[0] == 0:
        return x.new_zeros(0)
    sets = sets.to(x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    lift = torch.zeros(sets.shape, dtype=torch.int8, device=x.device)  # untargeted runs
    if targets > 0:
        by_rank = _outside_by_rank(model, x, sets, batch_size)  # (N, n): outside first, then inside
        n_outside = (~sets).sum(dim=1)  # (N,)
        t = min(targets, sets.shape[1] - 1)
        valid = torch.arange(t, device=x.device)[None, :] < n_outside[:, None]  # (N, t)
        row_t, col_t = valid.nonzero(as_tuple=True)
        target = by_rank[row_t, col_t]  # (R,) outside class i
        weakest = by_rank[row_t, -1]  # (R,) lowest-ranked class j inside T
        ar = torch.arange(row_t.numel(), device=x.device)
        versus_set = torch.where(sets[row_t], 0, -1).to(torch.int8)  # min_T f - f_i
        versus_set[ar, target] = 0
        pair = torch.where(sets[row_t], 1, -1).to(torch.int8)  # f_j - f_i
        pair[ar, target] = 0
        pair[ar, weakest] = 0
        rows = torch.cat([rows, row_t, row_t])
        lift = torch.cat([lift, versus_set, pair])
    worst = torch.empty(rows.numel(), dtype=x.dtype, device=x.device)
    was_training = model.training
    for chunk, start in enumerate(range(0, rows.numel(), batch_size)):
        part = rows[start : start + batch_size]
        xs, ts = x[part], sets[part]
        restricted = _Restricted(model, lift[start : start + batch_size]).eval()
        _, x_adv = pgd_set_attack(restricted, xs, ts, eps, norm,
                                  steps, restarts, seed=seed + chunk)
        model.eval()
        try:
            with torch.no_grad():
                margin = set_margin(model(x_adv), ts)
                found = margin <= 0
                if bool(found.any()):
                    margin[found] = set_margin(model(_into_ball(xs[found], x_adv[found], eps, norm)), ts[found])
        finally:
            model.train(was_training)
        worst[start : start + part.numel()] = margin.detach()
    best = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    return best.scatter_reduce(0, rows, worst, reduce="amin")


@dataclass(frozen=True)
class AttackResult:
    """Per-point outcome of :func:`attack_guarantee`.

    Shape: ``order (B, n)`` (clean rank order), ``accept (B, K)`` bool (acceptable ``k``), ``worst_margin (B, K)``
    (smallest set margin of ``F^k`` found in the ball; NaN where ``k`` is not acceptable),
    ``survived_k (B,)`` (loosest acceptable ``k`` whose set survived every attack, 0 if none),
    ``classes (B, n)`` bool (``F^{survived_k}``), ``labels (B,)`` or ``None``.
    """

    order: Tensor
    accept: Tensor
    worst_margin: Tensor
    survived_k: Tensor
    classes: Tensor
    labels: Tensor | None
    guarantee: str
    eps: float
    norm: float
    steps: int
    restarts: int
    seconds: float

    def __len__(self) -> int:
        return int(self.order.shape[0])

    @property
    def pred(self) -> Tensor:
        """``(B,)`` clean top-1 prediction."""
        return self.order[:, 0]

    @property
    def robust(self) -> Tensor:
        """``(B,)`` bool: some acceptable set survived (empirically robust)."""
        return self.survived_k > 0

    def robust_correct(self, labels: Tensor | None = None) -> Tensor:
        """``(B,)`` bool: robust and the label lies in the surviving set of the loosest ``k``."""
        labels = self.labels if labels is None else labels
        if labels is None:
            raise ValueError("no labels given")
        labels = labels.to(self.classes.device).long()
        return self.robust & self.classes.gather(1, labels[:, None])[:, 0]

    def robust_accuracy(self, labels: Tensor | None = None) -> float:
        """Empirical robust accuracy: an upper bound of the VRA of any sound certifier."""
        return float(self.robust_correct(labels).float().mean()) if len(self) else float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures: robust rate, empirical robust accuracy, surviving set sizes."""
        sizes, counts = torch.unique(self.survived_k.cpu(), return_counts=True)
        record: dict[str, Any] = {
            "guarantee": self.guarantee,
            "eps": self.eps,
            "norm": "inf" if self.norm == float("inf") else f"{self.norm:g}",
            "points": len(self),
            "attacked_sets": int(self.accept.sum()),
            "empirically_robust": float(self.robust.float().mean()) if len(self) else float("nan"),
            "surviving_set_sizes": {int(s): int(c) for s, c in zip(sizes, counts)},
            "attack_seconds": self.seconds,
        }
        if self.labels is not None:
            record["clean_accuracy"] = float((self.pred == self.labels.to(self.pred.device)).float().mean()) if len(self) else float("nan")
            record["empirical_robust_accuracy"] = self.robust_accuracy()
        return record


def _model_logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)])
    finally:
        model.train(was_training)


def attack_guarantee(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None,
    guarantee: str | Guarantee,
    eps: float,
    norm: float | str = 2,
    steps: int = 50,
    restarts: int = 2,
    seed: int = 0,
    *,
    sets: Sequence[Sequence[int]] | None = None,
    batch_size: int = 512,
    targets: int = 3,
) -> AttackResult:
    """Attack every acceptable set ``F^k(x)`` of ``guarantee`` at every point of ``x``.

    All ``(point, k)`` pairs are attacked together (in chunks of ``batch_size``).

    Args:
        y: labels ``(B,)`` for the empirical robust accuracy, or ``None``.
        guarantee: a name (``"rtk:3"``) or an adapter; ``sets`` serves a bare ``affinity``.
        targets: targeted runs per set besides the untargeted one (:func:`attack_sets`).
    Returns:
        an :class:`AttackResult`.
    """
    norm = _attack_norm(norm)
    check_inputs(x, eps)
    spec = resolve_guarantee(guarantee, sets=sets)
    if len(spec.radii(float(eps))) != 1:
        raise ValueError(f"{spec!r} certifies at several radii; attack_guarantee covers one-radius guarantees")
    start = time.perf_counter()
    logits = _model_logits(model, x, batch_size)
    spec.validate(logits.shape[1])
    order = rank_order(logits)  # (B, n)
    accept = spec.accept(order)  # (B, K)
    point, k_index = accept.nonzero(as_tuple=True)  # pairs, k = k_index + 1
    masks = topk_class_mask(order[point], k_index + 1)  # (P, n)
    worst_pairs = attack_sets(model, x[point], masks, eps, norm, steps, restarts, seed, batch_size, targets)
    worst = torch.full(accept.shape, float("nan"), dtype=logits.dtype, device=logits.device)
    worst[point, k_index] = worst_pairs.to(worst.dtype)
    survived = accept & (worst > 0)  # NaN compares False
    ks = torch.arange(1, accept.shape[1] + 1, device=accept.device)
    survived_k = (survived.long() * ks).amax(dim=1)
    return AttackResult(
        order=order,
        accept=accept,
        worst_margin=worst,
        survived_k=survived_k,
        classes=topk_class_mask(order, survived_k),
        labels=None if y is None else torch.as_tensor(y).to(logits.device).long(),
        guarantee=repr(spec),
        eps=float(eps),
        norm=norm,
        steps=steps,
        restarts=restarts,
        seconds=time.perf_counter() - start,
    )


def _certificate_margins(
    model: nn.Module, x: Tensor, cert: Certificate, eps: float, norm: float, steps: int, restarts: int, seed: int,
    batch_size: int, targets: int,
) -> tuple[Tensor, Tensor]:
    """``(indices of certified points (C,), worst margin of their certified sets (C,))``."""
    if len(cert) != x.shape[0]:
        raise ValueError(f"certificate covers {len(cert)} points, x has {x.shape[0]}")
    index = cert.certified.nonzero(as_tuple=True)[0].to(x.device)
    classes = cert.classes.to(x.device)[index]
    if bool((classes.sum(dim=1) == 0).any()):
        raise ValueError("a certified point has an empty certified set")
    worst = attack_sets(model, x[index], classes, eps, norm, steps, restarts, seed, batch_size, targets)
    return index, worst


def check_certificates(
    model: nn.Module,
    x: Tensor,
    cert: Certificate,
    eps: float | None = None,
    norm: float | str | None = None,
    steps: int = 50,
    restarts: int = 2,
    seed: int = 0,
    batch_size: int = 512,
    targets: int = 3,
) -> list[int]:
    """Attack every certified point with its certified set ``cert.classes``.

    Args:
        eps, norm: default to the certificate's own.
    Returns:
        sorted indices of *broken* points: certified, yet a point of the closed ball was found
        where the certified set is not the top-``k`` set (set margin ``<= 0``). Empty when sound.
    """
    eps = cert.eps if eps is None else eps
    norm = _attack_norm(cert.norm if norm is None else norm)
    index, worst = _certificate_margins(model, x, cert, eps, norm, steps, restarts, seed, batch_size, targets)
    return sorted(int(i) for i in index[worst <= 0].tolist())


# ----------------------------------------------------------------------------- AutoAttack


@dataclass(frozen=True)
class AutoAttackResult:
    """AutoAttack outcome for the standard guarantee. Shape: ``robust (B,)`` bool (the
    prediction at ``x_adv``, projected into the closed ball, is the label), ``x_adv (B, ...)``."""

    robust: Tensor
    x_adv: Tensor
    attacks: tuple[str, ...]
    seconds: float

    @property
    def accuracy(self) -> float:
        return float(self.robust.float().mean()) if self.robust.numel() else float("nan")

    def __float__(self) -> float:
        return self.accuracy


def _import_autoattack():
    try:
        from pyautoattack import AutoAttack  # the package index's "pyautoattack"
    except ImportError:
        try:
            from autoattack import AutoAttack  # github.com/fra31/auto-attack
        except ImportError:
            raise ImportError("AutoAttack is not installed: pip install pyautoattack") from None
    return AutoAttack


class _BoxWrapper(nn.Module):
    """``z -> model(low + scale * z)``: AutoAttack clips to ``[0, 1]``; this maps ``[0, 1]`` onto the
    box ``[low, low + scale]`` of the input space. One scalar ``scale``, so a ``norm`` ball of radius
    ``eps`` in ``x`` is the ball of radius ``eps / scale`` in ``z``."""

    def __init__(self, model: nn.Module, low: float, scale: float):
        super().__init__()
        self.model = model
        self.low = low
        self.scale = scale

    def forward(self, z: Tensor) -> Tensor:
        return self.model(self.low + self.scale * z)


def autoattack_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: float | str = 2,
    *,
    fast: bool = False,
    n_iter: int = 20,
    box: tuple[float, float] | None = None,
    seed: int = 0,
    batch_size: int = 250,
) -> AutoAttackResult:
    """Robust accuracy of the standard (top-1) guarantee under AutoAttack.

    Args:
        fast: ``version='custom'`` with APGD-CE and APGD-T, ``n_iter`` iterations and at most 3
            target classes, instead of the full ``'standard'`` ensemble (APGD-CE, APGD-T, FAB-T,
            Square, 100 iterations).
        box: the input domain AutoAttack may not leave (``(0, 1)`` for images as AutoAttack
            assumes); ``None`` (default) leaves the ball unclipped, as certificates are.
    Returns:
        an :class:`AutoAttackResult`; ``float(result)`` is the robust accuracy.
    """
    norm = _attack_norm(norm)
    check_inputs(x, eps)
    AutoAttack = _import_autoattack()
    start = time.perf_counter()
    labels = torch.as_tensor(y).to(x.device).long()
    n_classes = _model_logits(model, x[:1], 1).shape[1]
    if box is None:
        low, high = float(x.min()) - eps, float(x.max()) + eps
    else:
        low, high = (float(v) for v in box)
    scale = max(high - low, 1e-12)
    wrapped = _BoxWrapper(model, low, scale)
    z = ((x - low) / scale).clamp(0, 1)
    was_training = model.training
    model.eval()
    try:
        attack = AutoAttack(wrapped, norm="Linf" if norm == float("inf") else "L2", eps=eps / scale, seed=seed,
                            version="custom" if fast else "standard", device=x.device)
        attack.verbose = False
        if fast:
            attack.attacks_to_run = ["apgd-ce", "apgd-t"]
            for sub in (attack.apgd, attack.apgd_targeted):
                sub.n_iter = n_iter
                sub.n_restarts = 1
            attack.apgd_targeted.n_target_classes = 3
        attack.apgd_targeted.n_target_classes = min(attack.apgd_targeted.n_target_classes, n_classes - 1)
        attack.fab.n_target_classes = min(attack.fab.n_target_classes, n_classes - 1)
        dropped = set()
        if n_classes < 4:  # the targeted DLR loss needs a 4th class
            dropped |= {"apgd-t", "apgd-dlr"}
        if x.ndim != 4:  # Square samples square windows of (C, H, W) images
            dropped.add("square")
        attack.attacks_to_run = [a for a in attack.attacks_to_run if a not in dropped]
        runs = tuple(attack.attacks_to_run)
        result = attack.run_standard_evaluation(z, labels, batch_size=batch_size) if _keyword_batch(attack) \
            else attack.run_standard_evaluation(z, labels, bs=batch_size)
        z_adv = result[0] if isinstance(result, tuple) else result
        with torch.no_grad():
            x_adv = _into_ball(x, (low + scale * z_adv.to(x.dtype)).detach(), eps, norm)
            if box is not None:
                x_adv = torch.maximum(torch.minimum(x_adv, x.new_tensor(high)), x.new_tensor(low))
            robust = rank_order(_model_logits(model, x_adv, batch_size))[:, 0] == labels
    finally:
        model.train(was_training)
    return AutoAttackResult(robust=robust, x_adv=x_adv, attacks=runs, seconds=time.perf_counter() - start)


def _keyword_batch(attack: Any) -> bool:
    return "batch_size" in inspect.signature(attack.run_standard_evaluation).parameters


# ----------------------------------------------------------------------------- report


def _as_tensors(data: Dataset | tuple[Tensor, Tensor], limit: int | None) -> tuple[Tensor, Tensor]:
    if isinstance(data, (tuple, list)):
        x, y = data
        x, y = torch.as_tensor(x), torch.as_tensor(y).long()
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return x, y
    if limit is not None:
        data = Subset(data, range(min(limit, len(data))))
    xs, ys = [], []
    for xb, yb in DataLoader(data, batch_size=1024, shuffle=False):
        xs.append(xb)
        ys.append(torch.as_tensor(yb).long())
    if not xs:
        raise ValueError("the data set is empty")
    return torch.cat(xs), torch.cat(ys)


def attack_report(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    guarantee: str | Guarantee,
    eps: float | None,
    norm: float | str = 2,
    certifier: str | Certifier | None = None,
    *,
    sets: Sequence[Sequence[int]] | None = None,
    limit: int | None = None,
    steps: int = 50,
    restarts: int = 2,
    targets: int = 3,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    autoattack: bool = True,
    autoattack_fast: bool = False,
    progress: bool = False,
    **certifier_options: Any,
) -> dict[str, Any]:
    """Certified and empirical robustness of ``model`` on ``data``, side by side.

    Args:
        data: a data set of ``(x, y)`` pairs or a tuple of tensors ``(x, y)``.
        certifier: a certifier name or instance; ``None`` attacks only.
        autoattack: also run AutoAttack for the standard guarantee (``autoattack_fast`` for a
            quick version, :func:`autoattack_accuracy`).
        eps: the radius; for IGRP, which carries its own radii, ``None`` or its ``eps_out``, and
            the record is :func:`relaxplug.attacks.igrp.igrp_attack_report`'s.
    Returns:
        a JSON-ready record: ``points``, ``clean_accuracy``, ``vra`` (with a certifier),
        ``empirical_robust_accuracy`` (>= VRA when the certifier is sound), ``gap`` (their
        difference), ``certified``, ``attacked`` (certified points whose set was attacked),
        ``broken`` and ``broken_points`` (indices into ``data``), ``autoattack_accuracy`` (top-1)
        and, for standard certificates, ``autoattack_broken``.
    """
    norm_value = _attack_norm(norm)
    x, y = _as_tensors(data, limit)
    if device is not None:
        model = model.to(device)
    param = next(model.parameters(), None)
    x = x.to(param.device if param is not None else x.device)
    y = y.to(x.device)
    spec = resolve_guarantee(guarantee, sets=sets)
    if isinstance(spec, IGRP):
        from relaxplug.attacks.igrp import igrp_attack_report

        resolve_eps(spec, eps)  # IGRP carries its radii: eps must be None or its eps_out
        return igrp_attack_report(
            model, x, y, spec, norm_value, certifier, steps=steps, restarts=restarts, targets=targets, seed=seed,
            batch_size=batch_size, autoattack=autoattack, autoattack_fast=autoattack_fast, progress=progress,
            **certifier_options,
        )
    if eps is None:
        raise ValueError(f"eps is required for {spec!r}")
    start = time.perf_counter()
    result = attack_guarantee(model, x, y, spec, eps, norm_value, steps, restarts, seed, batch_size=batch_size, targets=targets)
    record: dict[str, Any] = {
        "guarantee": repr(spec),
        "certifier": "-",
        "eps": float(eps),
        **{k: v for k, v in result.summary().items() if k not in ("guarantee", "eps")},
        "vra": float("nan"),
        "gap": float("nan"),
        "certified": 0,
        "attacked": 0,
        "broken": 0,
        "broken_points": [],
    }
    if certifier is not None:
        from relaxplug.evaluation.dataset import certify_dataset

        cert_obj = get_certifier(certifier, **certifier_options)
        cert, _, _ = certify_dataset(model, TensorDataset(x, y), eps, norm_value, cert_obj, spec,
                                     batch_size=batch_size, device=x.device, progress=progress)
        cert = cert.to(x.device)
        index, worst = _certificate_margins(model, x, cert, eps, norm_value, steps, restarts, seed + 1, batch_size, targets)
        # the guarantee attack already tried each certified set F^k: a break there counts too
        k_attacked = result.worst_margin[index, cert.k[index] - 1]
        same = (cert.classes[index] == topk_class_mask(result.order[index], cert.k[index])).all(1)
        worst = torch.where(same & (k_attacked <= 0), torch.minimum(worst, k_attacked), worst)
        broken = sorted(int(i) for i in index[worst <= 0].tolist())
        vra = cert.vra(y)
        record.update(
            certifier=cert.certifier,
            vra=vra,
            gap=record["empirical_robust_accuracy"] - vra,
            certified=int(cert.certified.sum()),
            attacked=int(index.numel()),
            broken=len(broken),
            broken_points=broken,
            certify_seconds=cert.seconds,
        )
    if autoattack:
        aa = autoattack_accuracy(model, x, y, eps, norm_value, fast=autoattack_fast, seed=seed, batch_size=batch_size)
        record["autoattack_accuracy"] = aa.accuracy
        record["autoattack_attacks"] = list(aa.attacks)
        if certifier is not None:
            # standard certificates claim the top-1 class on the ball: a correct, certified k = 1
            # point that AutoAttack misclassifies is a broken certificate too
            claim = cert.certified & (cert.k == 1) & (cert.pred == y)
            aa_broken = sorted(int(i) for i in (claim & ~aa.robust).nonzero(as_tuple=True)[0].tolist())
            record["autoattack_broken"] = aa_broken
            if aa_broken:
                record["broken_points"] = sorted(set(record["broken_points"]) | set(aa_broken))
                record["broken"] = len(record["broken_points"])
    record["seconds"] = time.perf_counter() - start
    return record


# ----------------------------------------------------------------------------- command


def load_evaluation(
    checkpoint: str | Path,
    guarantee: str | None = None,
    eps: float | None = None,
    *,
    data: str | None = None,
    data_root: str | None = None,
    split: str = "test",
    device: str | torch.device = "auto",
):
    """Load a checkpoint, its data set and guarantee (the checkpoint's defaults where ``None``).

    A bare ``affinity``/``superclass`` guarantee takes the checkpoint's ``sets``, else the data
    set's first built-in grouping. Returns ``(loaded checkpoint, guarantee, spec string, eps,
    dataset, device)``.
    """
    from relaxplug.models.checkpoint import load_checkpoint
    from relaxplug.data import fit_class_count, load_dataset
    from relaxplug.runtime import resolve_device

    device = resolve_device(device)
    loaded = load_checkpoint(checkpoint, device)
    meta = loaded.metadata
    config = meta.get("config") or {}
    name = data or meta["dataset"]
    options = config.get("dataset_options", {}) if name == meta["dataset"] else {}
    splits = fit_class_count(load_dataset(name, data_root or config.get("data_root"), **options), meta["n_classes"], "the checkpoint")
    spec = guarantee or meta.get("guarantee") or "standard"
    sets = meta.get("sets")
    if spec.strip().lower() in ("affinity", "superclass") and not sets:
        if not splits.groupings:
            raise ValueError(f"'{spec}' needs sets: the checkpoint stores none and {name!r} has no built-in grouping")
        sets = next(iter(splits.groupings.values()))
    resolved = resolve_guarantee(spec, sets=sets, class_names=splits.class_names)
    if len(resolved.radii(1.0)) > 1:
        eps = resolve_eps(resolved, eps)  # IGRP carries its radii; a given eps must be its outer one
    else:
        eps = float(eps) if eps is not None else float(meta.get("eps", 0.0))
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    dataset = splits.test if split == "test" else splits.train
    return loaded, resolved, spec, eps, dataset, device


def checkpoint_norm(metadata: dict[str, Any]) -> str:
    """The norm a checkpoint was trained for, as the CLI spells it (``"2"`` when it records none)."""
    norm = float(metadata.get("norm") or 2.0)
    return "inf" if norm == float("inf") else f"{norm:g}"


def attack_main(
    checkpoint: str | Path,
    guarantee: str | None = None,
    eps: float | None = None,
    norm: str | float | None = None,
    certifier: str | None = "gloro",
    limit: int | None = None,
    steps: int = 50,
    restarts: int = 2,
    out_dir: str | Path | None = None,
    device: str = "auto",
    autoattack: bool = True,
    *,
    autoattack_fast: bool = False,
    targets: int = 3,
    data: str | None = None,
    data_root: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> int:
    """``relaxplug attack``: certify, attack, compare; print a table and write ``attack.json``.

    Args:
        certifier: a certifier name, or ``None``/``"none"`` to attack only.
        norm: ``2`` or ``inf``; ``None`` takes the checkpoint's training norm.
    Returns:
        the exit code: 1 (naming the points) when some certificate is broken, else 0.
    """
    loaded, spec, spec_name, eps, dataset, device = load_evaluation(
        checkpoint, guarantee, eps, data=data, data_root=data_root, split=split, device=device
    )
    if norm is None:
        norm = checkpoint_norm(loaded.metadata)
    if isinstance(certifier, str) and certifier.strip().lower() in ("", "none"):
        certifier = None
    record = attack_report(
        loaded.model, dataset, spec, eps, norm, certifier, limit=limit, steps=steps, restarts=restarts,
        targets=targets, seed=seed, batch_size=batch_size, device=device, autoattack=autoattack,
        autoattack_fast=autoattack_fast, progress=progress,
    )
    record["guarantee"] = spec_name
    record["checkpoint"] = str(checkpoint)
    from relaxplug.evaluation.report import format_table, write_json

    if isinstance(spec, IGRP):
        from relaxplug.attacks.igrp import IGRP_ATTACK_COLUMNS as columns
    else:
        columns = REPORT_COLUMNS
    print(format_table([record], columns))
    target = Path(out_dir) if out_dir is not None else Path(checkpoint).parent
    path = write_json(target / "attack.json", record)
    print(f"wrote {path}")
    if record["broken"]:
        shown = ", ".join(str(i) for i in record["broken_points"][:50])
        more = "" if record["broken"] <= 50 else f" (and {record['broken'] - 50} more)"
        print(f"BROKEN: {record['broken']} certificate(s) broken by attacks at points {shown}{more}")
        return 1
    return 0

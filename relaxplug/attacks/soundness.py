"""Soundness sweep: every registered certifier x every guarantee x both norms, checked by attacks.

Small nets (dense MinMax and ReLU nets, a conv net with invertible downsampling; random
initialisation and briefly trained on random-cluster data) are certified at a radius where a
good share of points certify, and every certified point is attacked with its certified set
is attacked on every claim its certificate makes (:meth:`Guarantee.claims`, attacked by
:func:`relaxplug.attacks.claims.attack_claims`; an IGRP certificate makes two claims, one per
radius). A sound certifier is never broken. User-defined models GloRo-trained through
:class:`relaxplug.GloRoNet` (:data:`WRAPPER_TRAINED`) are swept the same way. Combinations a
certifier does not support (its ``norms``) are skipped and counted.

``benchmarks/soundness_sweep.py`` runs it from the command line; ``tests/test_soundness.py``
runs the fast mode.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relaxplug.adapters import IGRP, Affinity, Guarantee, RTK, Standard, Superclass
from relaxplug.adapters.claims import Claim
from relaxplug.attacks.claims import attack_claims
from relaxplug.attacks.settings import AttackSettings
from relaxplug.certifiers import Certifier, get_certifier, list_certifiers
from relaxplug.certifiers.certify import certify
from relaxplug.models.layers import InvertibleDownsample, MinMax
from relaxplug.models.liresnet import build_bronet, build_liresnet
from relaxplug.norms import Norm
from relaxplug.training.wrapper import GloRoNet

__all__ = [
    "SweepNet",
    "SweepResult",
    "SweepSettings",
    "cluster_data",
    "sweep_nets",
    "sweep_guarantees",
    "sweep_igrp",
    "sweep_eps",
    "calibrate_eps",
    "soundness_sweep",
    "train_briefly",
    "train_with_wrapper",
    "wrapper_trained_nets",
    "WRAPPER_TRAINED",
    "SWEEP_COLUMNS",
    "ADVERSARIAL",
    "ARCHITECTURES",
    "LIPSCHITZ_NETS",
]

SWEEP_COLUMNS = ("net", "norm", "eps", "certifier", "guarantee", "points", "certified", "sizes", "claims", "attacked",
                 "broken")

NORMS = (2.0, float("inf"))


@dataclass(frozen=True)
class SweepSettings:
    """How hard the sweep looks. ``fast()`` is the CI mode, ``full()`` the default of the script."""

    points: int
    train_steps: int
    eps_scales: tuple[float, ...]
    steps: int
    restarts: int
    random_nets: tuple[str, ...]
    trained_nets: tuple[str, ...]
    #: nets of :data:`WRAPPER_TRAINED`, trained ``train_steps`` steps through ``rp.GloRoNet``
    wrapper_nets: tuple[str, ...] = ()
    #: per-certifier constructor options (both modes shorten alpha-CROWN's optimisation, 3 and 5
    #: steps: every iterate is a sound bound, so fewer steps test the same code at a fraction of
    #: the cost; 20 steps on the conv nets would take hours in the full mode)
    certifier_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @classmethod
    def fast(cls) -> "SweepSettings":
        return cls(points=32, train_steps=200, eps_scales=(1.0, 2.0), steps=30, restarts=1,
                   random_nets=("dense-minmax",), trained_nets=("dense-relu", "conv-minmax"),
                   wrapper_nets=("user-rtk2",),
                   certifier_options=(("alpha-crown", (("iterations", 3),)),))

    @classmethod
    def full(cls) -> "SweepSettings":
        archs = (*ARCHITECTURES, *ADVERSARIAL, *LIPSCHITZ_NETS)
        return cls(points=200, train_steps=400, eps_scales=(0.5, 1.0, 2.0), steps=100, restarts=3,
                   random_nets=archs, trained_nets=archs, wrapper_nets=tuple(WRAPPER_TRAINED),
                   certifier_options=(("alpha-crown", (("iterations", 5),)),))


# ----------------------------------------------------------------------------- nets and data


def _dense(act: Callable[[], nn.Module]) -> Callable[[tuple[int, ...], int], nn.Sequential]:
    def build(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
        d = math.prod(input_shape)
        return nn.Sequential(nn.Flatten(), nn.Linear(d, 32), act(), nn.Linear(32, 32), act(), nn.Linear(32, n_classes))

    return build


def _conv(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1), MinMax(), InvertibleDownsample(2),
        nn.Conv2d(32, 16, 3, padding=1), MinMax(),
        nn.Flatten(), nn.Linear(16 * (h // 2) * (w // 2), n_classes),
    )


class _ScaledLinear(nn.Linear):
    """A user's subclass whose ``forward`` is not ``nn.Linear``'s: ``10 W x + b``. A certifier
    must bound what runs, not the parent class's rule."""

    def forward(self, x: Tensor) -> Tensor:
        return 10.0 * F.linear(x, self.weight, self.bias)


def _subclassed(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    d = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), _ScaledLinear(d, 32), nn.ReLU(), nn.Linear(32, 32), MinMax(),
                         nn.Linear(32, n_classes))


def _huge_intermediate(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """Hidden activations of about 1e4 that the next layer scales back: float32 rounding grows
    with them, not with the logits."""
    model = _dense(MinMax)(input_shape, n_classes)
    with torch.no_grad():
        model[1].weight.mul_(1e4)
        model[1].bias.mul_(1e4)
        model[3].weight.mul_(1e-4)
    return model


def _padded_conv(mode: str) -> Callable[[tuple[int, ...], int], nn.Sequential]:
    def build(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
        c, h, w = input_shape
        return nn.Sequential(
            nn.Conv2d(c, 8, 3, padding=1, padding_mode=mode), MinMax(), InvertibleDownsample(2),
            nn.Flatten(), nn.Linear(32 * (h // 2) * (w // 2), n_classes),
        )

    return build


def _stale_after_first_use(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """Certified once (every cache filled), then changed the ways that bypass version counters:
    a write through ``.data`` that scales the head 30x, and a replaced submodule."""
    model = _dense(MinMax)(input_shape, n_classes).eval()
    probe = torch.randn(4, *input_shape)
    for name in list_certifiers():
        certify(model, probe, 0.01, 2 if 2.0 in get_certifier(name).norms else "inf", name, "standard", radius=False)
    model[-1].weight.data.mul_(30.0)
    model[3] = nn.Linear(32, 32)
    return model


#: name -> (constructor, input shape, number of classes)
ARCHITECTURES: dict[str, tuple[Callable[[tuple[int, ...], int], nn.Sequential], tuple[int, ...], int]] = {
    "dense-minmax": (_dense(MinMax), (10,), 5),
    "dense-relu": (_dense(nn.ReLU), (10,), 6),
    "conv-minmax": (_conv, (2, 8, 8), 4),
}

#: models built to break a certifier (issue classes: what runs vs. what is bounded, float rounding
#: at large intermediate magnitudes, padding modes, state changed after a first call); the full
#: sweep runs them with the others, ``benchmarks/soundness_sweep.py --nets adversarial`` alone
ADVERSARIAL: dict[str, tuple[Callable[[tuple[int, ...], int], nn.Sequential], tuple[int, ...], int]] = {
    "dense-subclassed-linear": (_subclassed, (10,), 5),
    "dense-huge-intermediate": (_huge_intermediate, (10,), 5),
    "conv-reflect-padding": (_padded_conv("reflect"), (2, 8, 8), 4),
    "conv-circular-padding": (_padded_conv("circular"), (2, 8, 8), 4),
    "dense-stale-after-first-use": (_stale_after_first_use, (10,), 5),
}


# ---- state-of-the-art Lipschitz nets (issue 15): LiResNet and BRO layers, small sizes


def _liresnet_small(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """LiResNet (one-operator residual convolutions, Cholesky neck and dense layers, row-normalized head)."""
    return build_liresnet(input_shape, n_classes, depth=2, width=8, stem_kernel=3, stem_stride=1, neck_patch=4,
                          neck_features=16, mlp_depth=1)


def _bronet_small(input_shape: tuple[int, ...], n_classes: int) -> nn.Sequential:
    """BRO convolutions (one block reflector per frequency) and BRO dense layers."""
    return build_bronet(input_shape, n_classes, depth=2, width=8, neck_features=16, mlp_depth=1)


#: the orthogonal / residual layers of the state-of-the-art Lipschitz networks; the full sweep runs
#: them with the others, ``benchmarks/soundness_sweep.py --nets lipschitz`` alone
LIPSCHITZ_NETS: dict[str, tuple[Callable[[tuple[int, ...], int], nn.Sequential], tuple[int, ...], int]] = {
    "liresnet-small": (_liresnet_small, (2, 8, 8), 4),
    "bronet-small": (_bronet_small, (2, 8, 8), 4),
}

# ---- end of the state-of-the-art Lipschitz nets


@dataclass
class SweepNet:
    """A model and the points it is certified and attacked on."""

    name: str
    model: nn.Module
    x: Tensor
    y: Tensor
    n_classes: int


def cluster_data(input_shape: Sequence[int], n_classes: int, n_points: int, generator: torch.Generator,
                 centres: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian clusters around random class centres: ``(x (N, *shape), y (N,), centres (n, *shape))``."""
    shape = tuple(int(s) for s in input_shape)
    if centres is None:
        centres = torch.randn((n_classes, *shape), generator=generator)
    y = torch.randint(0, n_classes, (n_points,), generator=generator)
    x = centres[y] + 0.5 * torch.randn((n_points, *shape), generator=generator)
    return x, y, centres


def train_briefly(model: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float = 1e-2) -> None:
    """A few hundred full-batch Adam steps of cross-entropy."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()


def sweep_nets(settings: SweepSettings, seed: int = 0) -> list[SweepNet]:
    """The sweep's random and briefly trained nets, each with its own test points."""
    nets = []
    for trained, names in ((False, settings.random_nets), (True, settings.trained_nets)):
        for index, name in enumerate(names):
            build, shape, n_classes = {**ARCHITECTURES, **ADVERSARIAL, **LIPSCHITZ_NETS}[name]
            net_seed = seed * 1000 + 10 * index + trained
            generator = torch.Generator().manual_seed(net_seed)
            train_x, train_y, centres = cluster_data(shape, n_classes, 256, generator)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(net_seed)
                model = build(shape, n_classes)
                if trained:
                    train_briefly(model, train_x, train_y, settings.train_steps)
            x, y, _ = cluster_data(shape, n_classes, settings.points, generator, centres)
            nets.append(SweepNet(f"{name}-{'trained' if trained else 'random'}", model.eval(), x, y, n_classes))
    return nets + wrapper_trained_nets(settings, seed)


# ----------------------------------------------------------------------------- nets trained through rp.GloRoNet


class _UserNet(nn.Module):
    """A user's own model (not ``nn.Sequential``; its layers wired in ``forward``):
    ``head(minmax(lin(minmax(stem(flatten(x))))))``."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, width: int = 32):
        super().__init__()
        self.stem = nn.Linear(math.prod(input_shape), width)
        self.lin = nn.Linear(width, width)
        self.act = MinMax()
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.lin(self.act(self.stem(x.flatten(1))))))


#: name -> (constructor, input shape, number of classes, training guarantee, training loss): user
#: models trained with GloRo through ``rp.GloRoNet`` (their power-iteration buffers included), then
#: swept like the others (every certifier and guarantee, not only the one they were trained for)
WRAPPER_TRAINED: dict[str, tuple[Callable[[tuple[int, ...], int], nn.Module], tuple[int, ...], int, str, str]] = {
    "user-rtk2": (_UserNet, (10,), 5, "rtk:2", "trades"),
    "conv-standard": (_conv, (2, 8, 8), 4, "standard", "ce"),
    "user-igrp": (_UserNet, (10,), 6, "igrp:0.25,0.5", "trades"),
}


def train_with_wrapper(model: nn.Module, x: Tensor, y: Tensor, steps: int, guarantee: str, loss: str,
                       eps: float = 0.5, lr: float = 1e-2, sets: Sequence[Sequence[int]] | None = None) -> None:
    """Full-batch Adam steps of ``rp.GloRoNet(model, eps, guarantee, loss=loss, sets=sets).loss(x, y)``,
    the radius ramped linearly to ``eps`` over the first half of the steps."""
    net = GloRoNet(model, eps, guarantee, input_shape=x.shape[1:], loss=loss, sets=sets).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for step in range(steps):
        net.eps = eps * min(1.0, (step + 1) / max(1, steps // 2))
        optimizer.zero_grad()
        net.loss(x, y).backward()
        optimizer.step()
    model.eval()


def wrapper_trained_nets(settings: SweepSettings, seed: int = 0) -> list[SweepNet]:
    """The nets of ``settings.wrapper_nets`` (:data:`WRAPPER_TRAINED`), each GloRo-trained through
    ``rp.GloRoNet`` on random-cluster data, with its own test points."""
    nets = []
    for index, name in enumerate(settings.wrapper_nets):
        build, shape, n_classes, guarantee, loss = WRAPPER_TRAINED[name]
        net_seed = seed * 1000 + 500 + index
        generator = torch.Generator().manual_seed(net_seed)
        train_x, train_y, centres = cluster_data(shape, n_classes, 256, generator)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(net_seed)
            model = build(shape, n_classes)
            sets = sweep_igrp(n_classes, 1.0)[1].groups if guarantee.startswith("igrp") else None
            train_with_wrapper(model, train_x, train_y, settings.train_steps, guarantee, loss, sets=sets)
        x, y, _ = cluster_data(shape, n_classes, settings.points, generator, centres)
        nets.append(SweepNet(f"{name}-gloronet", model.eval(), x, y, n_classes))
    return nets


def sweep_guarantees(n_classes: int) -> list[tuple[str, Guarantee]]:
    """standard, rtk:2, rtk:3, affinity with overlapping sets, superclass (a two-set partition)."""
    if n_classes < 4:
        raise ValueError(f"the sweep's guarantees need at least 4 classes, got {n_classes}")
    overlapping = [[0, 1, 2], [2, 3], [1, n_classes - 1]]
    half = n_classes // 2
    partition = [list(range(half)), list(range(half, n_classes))]
    return [
        ("standard", Standard()),
        ("rtk:2", RTK(2)),
        ("rtk:3", RTK(3)),
        ("affinity:" + ";".join(",".join(map(str, s)) for s in overlapping), Affinity(overlapping)),
        ("superclass:" + ";".join(",".join(map(str, s)) for s in partition), Superclass(partition)),
    ]


def sweep_igrp(n_classes: int, eps: float) -> tuple[str, IGRP]:
    """IGRP on a partition into (up to) three contiguous groups, ``eps_in = eps / 2``, ``eps_out = eps``."""
    if n_classes < 4:
        raise ValueError(f"the sweep's guarantees need at least 4 classes, got {n_classes}")
    n_groups = 3 if n_classes >= 6 else 2
    cuts = [round(g * n_classes / n_groups) for g in range(n_groups + 1)]
    groups = [list(range(cuts[g], cuts[g + 1])) for g in range(n_groups)]
    guarantee = IGRP(groups, eps / 2, eps)
    return "igrp:" + ";".join(",".join(map(str, g)) for g in groups) + f"@{eps / 2:.4g},{eps:.4g}", guarantee


def calibrate_eps(net: SweepNet, certifier: Certifier, norm: float, start: float, target: float = 0.5,
                  max_calls: int = 12) -> float:
    """Radius at which ``certifier`` certifies about ``target`` of the points (standard guarantee):
    from ``start``, double or halve until the certified fraction crosses ``target``; return the
    largest radius tried that reached it (the smallest tried when none did)."""
    reached, missed, eps = None, None, start
    for _ in range(max_calls):
        fraction = float(certify(net.model, net.x, eps, norm, certifier, Standard(), radius=False).certified.float().mean())
        if fraction >= target:
            reached = eps if reached is None else max(reached, eps)
        else:
            missed = eps if missed is None else min(missed, eps)
        if reached is not None and missed is not None:
            break
        eps = eps * 2 if missed is None else eps / 2
    return reached if reached is not None else eps * 2  # none reached: the smallest radius tried


def sweep_eps(net: SweepNet) -> dict[float, float]:
    """Starting radius per norm for :func:`calibrate_eps`: the median sound GloRo radius (standard
    guarantee) for L2, and that divided by ``sqrt(d)`` for L-inf (that ball lies inside the L2 one)."""
    cert = certify(net.model, net.x, 0.0, 2, "gloro", "standard", radius=True)
    radius = cert.radius[torch.isfinite(cert.radius) & (cert.radius > 0)]
    if radius.numel() == 0:
        raise ValueError(f"{net.name}: GloRo certifies no point at any radius")
    l2 = float(radius.median())
    return {2.0: l2, float("inf"): l2 / math.sqrt(net.x[0].numel())}


# ----------------------------------------------------------------------------- sweep


@dataclass
class SweepResult:
    """Counts per combination (``rows``) and the combinations skipped as unsupported."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def broken(self) -> int:
        return sum(row["broken"] for row in self.rows)

    def totals(self) -> dict[str, dict[str, int]]:
        """``{certifier: {combinations, skipped, points, certified, claims, attacked, broken}}``."""
        keys = ("combinations", "skipped", "points", "certified", "claims", "attacked", "broken")
        out: dict[str, dict[str, int]] = {}
        for row in self.rows:
            total = out.setdefault(row["certifier"], dict.fromkeys(keys, 0))
            total["combinations"] += 1
            for key in keys[2:]:
                total[key] += row[key]
        for row in self.skipped:
            out.setdefault(row["certifier"], dict.fromkeys(keys, 0))["skipped"] += 1
        return out


def _attack_claims(model: nn.Module, x: Tensor, made: list[tuple[dict[str, Any], Claim]], norm: float,
                   settings: SweepSettings, seed: int) -> None:
    """Attack every distinct claim (point, radius, winners, losers) once, then fill each row's
    ``attacked``, ``broken``, ``broken_points`` and ``min_attack_margin``."""
    attack = AttackSettings(steps=settings.steps, restarts=settings.restarts, seed=seed, autoattack=False)
    worst: dict[int, Tensor] = {}
    for eps in sorted({claim.eps for _, claim in made}):
        batch = [(i, claim) for i, (_, claim) in enumerate(made) if claim.eps == eps and len(claim)]
        if not batch:
            continue
        point = torch.cat([c.point for _, c in batch])
        winners = torch.cat([c.winners for _, c in batch])
        losers = torch.cat([c.losers for _, c in batch])
        keys, inverse = torch.unique(torch.cat([point[:, None], winners.long(), losers.long()], dim=1), dim=0,
                                     return_inverse=True)
        first = torch.full((keys.shape[0],), point.numel(), dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(point.numel()), reduce="amin")
        unique = Claim("sweep", eps, point[first], winners[first], losers[first])
        margins = attack_claims(model, x, [unique], norm, attack)[0][inverse]
        start = 0
        for i, claim in batch:
            worst[i] = margins[start : start + len(claim)]
            start += len(claim)
    for i, (row, claim) in enumerate(made):
        mine = worst.get(i, x.new_zeros(0))
        row["attacked"] += len(claim)
        row["broken_points"] = sorted(set(row["broken_points"]) | {int(p) for p in claim.point[mine <= 0].tolist()})
        row["broken"] = len(row["broken_points"])
        if mine.numel():
            row["min_attack_margin"] = min(row.get("min_attack_margin", math.inf), float(mine.min()))


def _sizes(claims: tuple[Claim, ...]) -> dict[Any, int]:
    """Claims per set size ``{k: count}``, or per claim name for a guarantee with several."""
    if len(claims) > 1:
        return {c.name: len(c) for c in claims}
    sizes, counts = torch.unique(claims[0].winners.sum(1), return_counts=True)
    return {int(k): int(n) for k, n in zip(sizes, counts)}


def _new_row(net: SweepNet, norm: float, eps: float, certifier: str, guarantee: str) -> dict[str, Any]:
    """A sweep row with zero counts."""
    return {"net": net.name, "norm": Norm(norm).to_json(), "eps": eps, "certifier": certifier, "guarantee": guarantee,
            "points": int(net.x.shape[0]), "certified": 0, "claims": 0, "attacked": 0, "broken": 0,
            "broken_points": []}


def _certify_row(row: dict[str, Any], net: SweepNet, eps: float, norm: float, certifier: Certifier,
                 guarantee: Guarantee, keep_going: bool):
    """Certify ``net``'s points for ``row`` (at the guarantee's own radii when it carries them);
    on a certifier error, raise, or with ``keep_going`` record it in ``row["error"]`` and return
    ``None``."""
    try:
        return certify(net.model, net.x, None if guarantee.carries_radii else eps, norm, certifier, guarantee,
                       radius=False)
    except Exception as error:
        if not keep_going:
            raise RuntimeError(f"{row['certifier']} failed on {net.name}, {row['guarantee']}, norm {row['norm']}, "
                               f"eps {row['eps']:.4g}: {error}") from error
        row["error"] = f"{type(error).__name__}: {error}"
        return None


def soundness_sweep(
    fast: bool = True,
    certifiers: Sequence[str] | None = None,
    norms: Sequence[float] = NORMS,
    seed: int = 0,
    settings: SweepSettings | None = None,
    keep_going: bool = False,
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Certify and attack every combination of net x guarantee x certifier x norm x eps.

    Args:
        fast: :meth:`SweepSettings.fast` (CI) rather than :meth:`SweepSettings.full`;
            ``settings`` overrides both.
        certifiers: names to sweep; default every registered certifier.
        keep_going: record a certifier's exception in its row (``error``) instead of raising.
    Returns:
        a :class:`SweepResult`: one row per combination with ``points``, ``certified``,
        ``attacked``, ``broken`` (and ``broken_points``), plus the skipped combinations.
    """
    settings = settings or (SweepSettings.fast() if fast else SweepSettings.full())
    names = list(certifiers) if certifiers is not None else list_certifiers()
    result = SweepResult()
    start = time.perf_counter()
    for net in sweep_nets(settings, seed):
        base = sweep_eps(net)
        guarantees = sweep_guarantees(net.n_classes)
        for norm in (float(n) for n in norms):
            for name in names:
                certifier = get_certifier(name, **dict(dict(settings.certifier_options).get(name, ())))
                try:
                    certifier.check_norm(norm)
                except ValueError as error:
                    result.skipped.extend(
                        {"net": net.name, "norm": Norm(norm).to_json(), "eps_scale": scale, "certifier": name, "guarantee": g,
                         "reason": str(error)}
                        for scale in settings.eps_scales
                        for g in [*(g for g, _ in guarantees), "igrp"]
                    )
                    continue
                try:
                    calibrated = calibrate_eps(net, certifier, norm, base[norm])
                except Exception as error:
                    if not keep_going:
                        raise RuntimeError(f"{name} failed on {net.name}, norm {Norm(norm)}: {error}") from error
                    calibrated = base[norm]
                for scale in settings.eps_scales:
                    eps = calibrated * scale
                    made: list[tuple[dict[str, Any], Claim]] = []
                    done = []
                    for label, guarantee in [*guarantees, sweep_igrp(net.n_classes, eps)]:
                        row = _new_row(net, norm, eps, name, label)
                        result.rows.append(row)
                        done.append(row)
                        cert = _certify_row(row, net, eps, norm, certifier, guarantee, keep_going)
                        if cert is None:
                            continue
                        claims = guarantee.claims(cert)
                        row.update(seconds=cert.seconds, certified=int(cert.certified.sum()),
                                   claims=sum(len(c) for c in claims),
                                   sizes=_sizes(claims))
                        made.extend((row, claim) for claim in claims)
                    _attack_claims(net.model, net.x, made, norm, settings, seed)
                    if log is not None:
                        log(f"{net.name} {name} norm {Norm(norm)} eps {eps:.4g}: "
                            f"{sum(r['certified'] for r in done)} certified, {sum(r['broken'] for r in done)} broken")
    result.seconds = time.perf_counter() - start
    return result

"""Write your own guarantee adapter: relaxed top-K that never accepts a set mixing "unsafe" pairs.

A guarantee in relaxplug only says which top-k sets ``F^k(x)`` it accepts (``accept(order)``,
prefix-closed in ``k``); the margin ``m(x) = max over acceptable k of m^k(x)``, the certificate
and every certifier (GloRo, IBP, CROWN-IBP, CROWN) come for free. ``SafeTopK(K, pairs)`` accepts
``F^k`` for ``k <= K`` unless the set holds both classes of a forbidden pair: on digits, a
certificate may say "a 1 or a 4" but never "a 3 or an 8" if (3, 8) is forbidden.

The script registers it as ``safe-topk`` (so ``rp.certify(..., guarantee="safe-topk:3",
sets=[[3, 8], [4, 9]])`` resolves it by name), trains a small GloRo net for RT3 on the embedded
digits, and certifies the test split under standard, SafeTopK(3) and RTK(3): SafeTopK sits
between the two, and no certified set contains a forbidden pair. A brute-force check recomputes
every certified point's margin from the pairwise bounds, and PGD attacks every claim the
certificates make: the base class's ``claims`` hook turns each certified set ``F^k`` into the
claim "``F^k`` beats every other class on the ball", so ``check_certificates`` needs nothing
more from the adapter (a guarantee with other statements overrides ``claims``, as IGRP does;
``docs/guarantees.md``, "Writing a guarantee").

    python examples/custom_guarantee.py --epochs 30
    python examples/custom_guarantee.py --fast --out /tmp/custom   # seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

import relaxplug as rp
from relaxplug.adapters import Guarantee, register_guarantee

REPO = Path(__file__).resolve().parent.parent


class SafeTopK(Guarantee):
    """Relaxed top-K robustness restricted to sets without a forbidden pair.

    Args:
        K: the largest acceptable top-k set.
        pairs: class pairs ``(a, b)`` that must never be certified together.
    """

    name = "safe-topk"

    def __init__(self, K: int, pairs: Sequence[Sequence[int]]):
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"SafeTopK needs an integer K >= 1, got {K!r}")
        self.K = K
        self.pairs = tuple((int(a), int(b)) for a, b in pairs)
        if any(a == b for a, b in self.pairs):
            raise ValueError("a forbidden pair needs two different classes")

    def max_k(self, n_classes: int) -> int:
        return self.K

    def validate(self, n_classes: int) -> None:
        super().validate(n_classes)
        if self.K >= n_classes:
            raise ValueError(f"K={self.K} must be smaller than the number of classes ({n_classes})")
        if any(max(a, b) >= n_classes or min(a, b) < 0 for a, b in self.pairs):
            raise ValueError(f"a forbidden pair names a class outside 0..{n_classes - 1}")

    def accept(self, order: Tensor) -> Tensor:
        """``F^k`` holds both classes of a pair iff both ranks are below ``k``: accept ``k`` up to the
        smallest such ``max(rank_a, rank_b)`` (prefix-closed), and at most ``K``."""
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))  # (B, n)
        limit = torch.full((order.shape[0],), self.K, dtype=torch.long, device=order.device)
        for a, b in self.pairs:
            limit = torch.minimum(limit, torch.maximum(ranks[:, a], ranks[:, b]))  # F^k with k > that mixes a, b
        ks = torch.arange(1, self.K + 1, device=order.device)
        return ks[None, :] <= limit[:, None]  # (B, K); k = 1 is always a single class

    def __repr__(self) -> str:
        return f"SafeTopK({self.K}, pairs={list(self.pairs)})"


def _safe_topk(argument: str | None, sets, class_names) -> Guarantee:
    """``safe-topk:K`` with the forbidden pairs given as ``sets`` (``sets=[[3, 8], [4, 9]]``)."""
    if argument is None or not argument.strip().isdigit():
        raise ValueError(f"'safe-topk' needs an integer K, e.g. 'safe-topk:3', got {argument!r}")
    if not sets or any(len(s) != 2 for s in sets):
        raise ValueError("'safe-topk' takes its forbidden pairs as sets=[[a, b], ...]")
    return SafeTopK(int(argument), sets)


if "safe-topk" not in rp.list_guarantees():
    register_guarantee("safe-topk")(_safe_topk)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="3,8;4,9;1,7", help="forbidden pairs, a,b;c,d")
    parser.add_argument("--eps", type=float, default=None, help="L2 radius (default 0.3; --fast 0.05)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fast", action="store_true", help="2 epochs, 64 points (tests)")
    parser.add_argument("--out", default="out/custom_guarantee")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    from relaxplug.adapters import rank_order
    from relaxplug.certifiers import get_certifier
    from relaxplug.models.checkpoint import load_checkpoint
    from relaxplug.training.config import load_config
    from relaxplug.data import load_dataset
    from relaxplug.training.trainer import train

    out = Path(args.out)
    if args.eps is None:
        args.eps = 0.05 if args.fast else 0.3
    pairs = [[int(c) for c in p.split(",")] for p in args.pairs.split(";") if p.strip()]
    overrides = [f"epochs={2 if args.fast else args.epochs}", f"out_dir={out / 'run'}", "guarantee=rtk:3", "device=cpu"]
    if args.fast:
        overrides += ["limit_train=256", "eps_ramp_epochs=0"]
    result = train(load_config(REPO / "configs" / "digits_rtk2.yaml", overrides), resume=False, progress=False)
    model = load_checkpoint(result.checkpoint).model
    splits = load_dataset("digits")
    n = 64 if args.fast else len(splits.test)
    x = torch.stack([splits.test[i][0] for i in range(n)])
    y = torch.tensor([splits.test[i][1] for i in range(n)])

    certs = {name: rp.certify(model, x, args.eps, 2, "gloro", name, sets=pairs if name.startswith("safe") else None)
             for name in ("standard", "safe-topk:3", "rtk:3")}
    rows = {name: {"certified": int(c.certified.sum()), "vra": c.vra(y)} for name, c in certs.items()}
    for name, row in rows.items():
        print(f"{name:12s} certified {row['certified']:4d} / {n}   VRA {100 * row['vra']:.1f}%")

    safe = certs["safe-topk:3"]
    assert (certs["standard"].certified <= safe.certified).all() and (safe.certified <= certs["rtk:3"].certified).all()
    for a, b in pairs:  # no certified set mixes a forbidden pair
        assert not (safe.classes[:, a] & safe.classes[:, b]).any()
    # brute force: m(x) = max over acceptable k of min_{j in F^k, i not in F^k} lower(j, i)
    with torch.no_grad():
        logits = model(x)
    spec = SafeTopK(3, pairs)
    request = spec.requests(logits, args.eps)[0]
    lower = get_certifier("gloro").bounds(model, x, logits, [request], 2.0)[0]
    order, accept = rank_order(logits), spec.accept(rank_order(logits))
    for point in range(n):
        best = max((min(float(lower[point, r, s]) for r in range(k) for s in range(k, logits.shape[1]))
                    for k in range(1, 4) if accept[point, k - 1]), default=float("-inf"))
        assert abs(best - float(safe.margin[point])) <= 1e-5 * (1 + abs(best)), point
    from relaxplug.attacks import AttackSettings, check_certificates

    broken = check_certificates(model, x, safe, spec, AttackSettings(steps=10 if args.fast else 50, restarts=1))
    assert broken.points == [], f"attacks broke certificates at {broken.points}"
    print("SafeTopK sits between standard and RTK(3); no certified set mixes a forbidden pair; margins match brute "
          f"force; PGD broke none of its {len(spec.claims(safe)[0])} claims")
    summary = {"pairs": pairs, "eps": args.eps, "points": n, "results": rows, "broken": broken.points}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

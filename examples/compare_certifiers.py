"""Compare certifiers on one model: GloRo's Lipschitz margins against IBP, CROWN-IBP and CROWN.

Trains a small GloRo net for RT2 on the embedded 8x8 digits (``configs/digits_rtk2.yaml``, fewer
epochs), or loads ``--checkpoint``, then certifies the same test points with every certifier
under one guarantee and radius (L2) with :func:`relaxplug.evaluation.compare.compare_certifiers`: VRA,
rejection rate, time and peak memory per instance, and which certifier certifies points another
does not. Writes ``compare.json`` and ``compare.png``.

The same comparison from the command line: ``relaxplug compare --checkpoint CKPT --guarantee
rtk:2 --eps 0.3`` (or ``--robustbench NAME ...`` / ``--lirpa-model ARCH ...``).

Run from the repository root::

    python examples/compare_certifiers.py --epochs 40 --limit 200
    python examples/compare_certifiers.py --fast --out /tmp/compare   # seconds (tests)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="relaxplug checkpoint (default: train one)")
    parser.add_argument("--config", default=str(REPO / "configs" / "digits_rtk2.yaml"))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--guarantee", default="rtk:2")
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--certifiers", default="gloro,ibp,crown-ibp,crown")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--fast", action="store_true", help="1 epoch, 8 points, no CROWN (tests)")
    parser.add_argument("--out", default="out/compare_certifiers")
    return parser


def main(argv: Sequence[str] | None = None) -> Any:
    args = _parser().parse_args(argv)
    from relaxplug.models.checkpoint import load_checkpoint
    from relaxplug.evaluation.compare import compare_certifiers, format_table, save
    from relaxplug.training.config import load_config
    from relaxplug.data import load_dataset
    from relaxplug.training.trainer import train

    out = Path(args.out)
    if args.fast:
        args.epochs, args.limit, args.certifiers = 1, 8, "gloro,ibp,crown-ibp"
    checkpoint = args.checkpoint
    if checkpoint is None:
        overrides = [f"epochs={args.epochs}", f"out_dir={out / 'run'}", "device=cpu"]
        if args.fast:
            overrides += ["limit_train=128", "eps_ramp_epochs=0"]
        result = train(load_config(args.config, overrides), resume=False, progress=False)
        checkpoint = result.checkpoint
        print(f"trained {checkpoint}")
    loaded = load_checkpoint(checkpoint)
    meta = loaded.metadata
    splits = load_dataset(meta["dataset"])
    n = min(args.limit, len(splits.test))
    x = torch.stack([splits.test[i][0] for i in range(n)])
    y = torch.tensor([splits.test[i][1] for i in range(n)])
    names = [c.strip() for c in args.certifiers.split(",") if c.strip()]
    result = compare_certifiers(loaded.model, x, y, args.guarantee, args.eps, 2, names, batch_size=n, progress=False)
    print(format_table(result))
    save(result, out)
    print(f"wrote {out / 'compare.json'} and {out / 'compare.png'}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

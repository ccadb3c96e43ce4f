"""Soundness sweep: certify small random and briefly trained nets with every registered
certifier, for every guarantee and both norms, and attack every certified point.

Prints the counts (points, certified, claims, attacked, broken) per combination and per
certifier (every claim of every certificate is attacked: an IGRP certificate makes two, one per
radius; docs/attacks.md),
and exits 1 when any certificate is broken (3 when a certifier raised under --keep-going).
Bound-propagation certifiers (ibp, crown-ibp, crown, alpha-crown) join when auto_LiRPA is importable.

Usage: python benchmarks/soundness_sweep.py [--fast] [--certifiers gloro,crown] [--seed 0]
       [--keep-going] [--json sweep.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys

import torch

from relaxplug.certifiers import list_certifiers
from relaxplug.evaluation.report import format_table, write_json
from relaxplug.attacks.soundness import (ADVERSARIAL, LIPSCHITZ_NETS, SWEEP_COLUMNS, WRAPPER_TRAINED, SweepSettings,
                                        soundness_sweep)


def _load_optional_certifiers() -> None:
    """Register the bound-propagation certifiers when auto_LiRPA is installed (any other import
    error in relaxplug's own glue is raised, not hidden)."""
    if importlib.util.find_spec("auto_LiRPA") is None:
        print(f"bound propagation not available (auto_LiRPA is not installed); sweeping "
              f"{', '.join(list_certifiers())}", file=sys.stderr)
        return
    from relaxplug.certifiers import lirpa  # noqa: F401  (registers ibp, crown-ibp, crown, alpha-crown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="the CI mode: fewer nets, points, radii and attack steps")
    parser.add_argument("--certifiers", default=None, help="comma-separated names (default: every registered one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--keep-going", action="store_true", help="record a certifier's error and go on")
    parser.add_argument("--all-rows", action="store_true", help="print every combination, not only the totals")
    parser.add_argument("--json", default=None, help="write every row to this JSON file")
    parser.add_argument("--nets", choices=("default", "adversarial", "lipschitz", "wrapper"), default="default",
                        help="'adversarial': only the models built to break a certifier (subclassed layers, huge "
                             "intermediate values, padding modes, state changed after a first call); 'lipschitz': "
                             "only the small LiResNet and BRO nets; 'wrapper': only the user models GloRo-trained "
                             "through rp.GloRoNet")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _load_optional_certifiers()
    names = [n.strip() for n in args.certifiers.split(",") if n.strip()] if args.certifiers else None

    settings = SweepSettings.fast() if args.fast else SweepSettings.full()
    if args.nets == "adversarial":
        settings = dataclasses.replace(settings, random_nets=tuple(ADVERSARIAL), trained_nets=tuple(ADVERSARIAL),
                                       wrapper_nets=())
    elif args.nets == "lipschitz":
        settings = dataclasses.replace(settings, random_nets=tuple(LIPSCHITZ_NETS), trained_nets=tuple(LIPSCHITZ_NETS),
                                       wrapper_nets=())
    elif args.nets == "wrapper":
        settings = dataclasses.replace(settings, random_nets=(), trained_nets=(), wrapper_nets=tuple(WRAPPER_TRAINED))
    result = soundness_sweep(certifiers=names, seed=args.seed, settings=settings, keep_going=args.keep_going,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.all_rows:
        print(format_table(result.rows, (*SWEEP_COLUMNS, "seconds")))
        print()
    totals = [{"certifier": name, **counts} for name, counts in result.totals().items()]
    print(format_table(totals, ("certifier", "combinations", "skipped", "points", "certified", "claims", "attacked",
                                     "broken")))
    print(f"\n{len(result.rows)} combinations run, {len(result.skipped)} skipped (norm not supported), "
          f"{result.seconds:.1f} s")
    if args.json:
        write_json(args.json, {"rows": result.rows, "skipped": result.skipped, "totals": result.totals()})

    errors = [row for row in result.rows if "error" in row]
    for row in errors:
        print(f"ERROR {row['certifier']} on {row['net']} {row['guarantee']} norm {row['norm']}: {row['error']}")
    broken = [row for row in result.rows if row["broken"]]
    for row in broken:
        print(f"BROKEN {row['certifier']} on {row['net']} {row['guarantee']} norm {row['norm']} eps {row['eps']:.4g}: "
              f"points {row['broken_points']}")
    if broken:
        return 1
    return 3 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

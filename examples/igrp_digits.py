"""IGRP on the embedded default data (scikit-learn 8x8 digits), end to end.

1. Train a network naturally (``configs/digits_natural.yaml`` with the architecture of
   ``configs/digits_igrp.yaml``).
2. Cluster the rows of its logit layer into label groups (``relaxplug.groups``); print them and
   write ``groups.yaml`` and ``similarity.png`` (similarity matrix with the dendrogram).
3. Train with IGRP CROWN-IBP (``configs/digits_igrp.yaml``: ``L_inner`` at ``eps_in`` over the
   label's group + ``L_outer`` at ``eps_out`` over the other groups) and, as baselines, with
   standard CROWN-IBP (``configs/digits_crown_ibp.yaml``) at the same outer radius ``eps_out``
   and at the inner radius ``eps_in``.
4. Certify every model on the test split for IGRP(groups, eps_in, eps_out) with CROWN-IBP
   bounds (L-inf): clean accuracy, verified accuracy at ``eps_in``, group-verified accuracy at
   ``eps_out``, both, per-group figures; attack every certified claim (PGD) to check soundness.
5. Print the comparison table and write ``results.json``.

Run from the repository root::

    python examples/igrp_digits.py --out out/igrp_digits       # about 40 s on one CPU core
    python examples/igrp_digits.py --fast --out /tmp/igrp_fast     # seconds (tests)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

TABLE = ("model", "trained_for", "clean_accuracy", "verified_accuracy_in", "group_verified_accuracy_out",
         "igrp_verified_accuracy", "broken_in", "broken_out", "train_seconds")
GROUP_TABLE = ("model", "group", "classes", "points", "clean_accuracy", "verified_accuracy_in", "group_verified_accuracy_out")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/igrp_digits", help="output directory")
    parser.add_argument("--fast", action="store_true", help="tiny run (few epochs, few points): for tests")
    parser.add_argument("--n-groups", type=int, default=3, help="number of label groups")
    parser.add_argument("--linkage", default="average")
    parser.add_argument("--metric", default="cosine")
    parser.add_argument("--eps-in", type=float, default=None, help="inner radius (default: configs/digits_igrp.yaml's eps_in)")
    parser.add_argument("--eps-out", type=float, default=None, help="outer radius (default: configs/digits_igrp.yaml's eps)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the certified runs (default: the configs')")
    parser.add_argument("--certifier", default="crown-ibp", help="certifier of the evaluation (ibp, crown-ibp, crown)")
    parser.add_argument("--attack-steps", type=int, default=None, help="PGD steps per attack (default 30; --fast 5)")
    parser.add_argument("--limit", type=int, default=None, help="certify only the first N test points")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the models are tiny, and more threads oversubscribe a busy CPU)")
    parser.add_argument("--no-inner-baseline", action="store_true", help="skip the standard CROWN-IBP run at eps_in")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _configs(args: argparse.Namespace, out: Path, groups_file: Path):
    from relaxplug.training.config import apply_overrides, load_config

    igrp = load_config(CONFIGS / "digits_igrp.yaml")
    # the groups come from a naturally trained net of the certified runs' architecture
    natural = load_config(CONFIGS / "digits_natural.yaml", [f"out_dir={out / 'natural'}", f"architecture={igrp.architecture}"])
    eps_in = igrp.eps_in if args.eps_in is None else args.eps_in
    eps_out = igrp.eps if args.eps_out is None else args.eps_out
    common = [f"eps={eps_out}"]
    if args.epochs is not None:
        common.append(f"epochs={args.epochs}")
    if args.fast:
        natural = apply_overrides(natural, ["epochs=3", "limit_train=256"])
        common += ["epochs=3", "crown-ibp.warmup_epochs=1", "eps_ramp_epochs=1", "limit_train=256"]
    igrp = apply_overrides(igrp, [*common, f"eps_in={eps_in}", f"sets_file={groups_file}", f"out_dir={out / 'igrp'}"])
    ramp = [f"crown-ibp.warmup_epochs={igrp.method_options.warmup_epochs}", f"eps_ramp_epochs={igrp.eps_ramp_epochs}"]
    standard = load_config(CONFIGS / "digits_crown_ibp.yaml")
    standard_out = apply_overrides(standard, [*common, *ramp, f"out_dir={out / 'crown_ibp_eps_out'}", "name=crown_ibp_eps_out"])
    standard_in = apply_overrides(standard, [*common, *ramp, f"eps={eps_in}", f"out_dir={out / 'crown_ibp_eps_in'}", "name=crown_ibp_eps_in"])
    return natural, igrp, standard_out, standard_in


def _evaluate(name: str, trained_for: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, guarantee, certifier: str,
              attack_steps: int, class_names: Sequence[str], train_seconds: float) -> dict[str, Any]:
    import relaxplug as rp
    from relaxplug.attacks.igrp_metrics import check_igrp_certificates, igrp_summary

    model.eval()
    cert = rp.certify(model, x, norm="inf", certifier=certifier, guarantee=guarantee)
    record = igrp_summary(cert, y, guarantee.groups, class_names)
    broken = check_igrp_certificates(model, x, cert, steps=attack_steps, restarts=1, targets=2)
    record.update(model=name, trained_for=trained_for, broken_in=len(broken["in"]), broken_out=len(broken["out"]),
                  train_seconds=train_seconds, broken_points=broken)
    return record


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = _parser().parse_args(argv)
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from relaxplug.adapters import IGRP
    from relaxplug.data import load_dataset
    from relaxplug.groups import format_groups, groups_from_model, plot_similarity, write_groups
    from relaxplug.evaluation.report import format_table, write_json
    from relaxplug.training.trainer import train

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups_file = out / "groups.yaml"
    natural_cfg, igrp_cfg, standard_out_cfg, standard_in_cfg = _configs(args, out, groups_file)
    data = load_dataset("digits")
    progress = not args.quiet

    # 1-2. natural training, then groups from the logit layer
    print(f"[1/4] natural training ({natural_cfg.epochs} epochs)", flush=True)
    t = time.perf_counter()
    natural = train(natural_cfg, resume=False, progress=progress)
    natural_seconds = time.perf_counter() - t
    grouping = groups_from_model(natural.model, args.n_groups, args.linkage, args.metric)
    write_groups(groups_file, grouping.groups, data.class_names,
                 f"{len(grouping.groups)} groups of the digits from a naturally trained {natural_cfg.architecture} "
                 f"({args.linkage} linkage, {args.metric} distance of logit-layer rows)")
    png = plot_similarity(grouping, out / "similarity.png", data.class_names)
    print(f"[2/4] label groups ({args.linkage} linkage, {args.metric} distance of the logit-layer rows):")
    print(format_groups(grouping.groups, data.class_names))
    print(f"      wrote {groups_file} and {png}", flush=True)

    # 3. certified training
    eps_in, eps_out = igrp_cfg.eps_in, igrp_cfg.eps
    runs = [("igrp", f"IGRP eps_in={eps_in:g} eps_out={eps_out:g}", igrp_cfg),
            ("crown-ibp@eps_out", f"standard eps={eps_out:g}", standard_out_cfg)]
    if not args.no_inner_baseline:
        runs.append(("crown-ibp@eps_in", f"standard eps={eps_in:g}", standard_in_cfg))
    trained = [("natural", "natural", natural.model, natural_seconds)]
    for name, label, config in runs:
        print(f"[3/4] CROWN-IBP training: {name} ({label}, L-inf, {config.epochs} epochs)", flush=True)
        t = time.perf_counter()
        result = train(config, resume=False, progress=progress)
        trained.append((name, label, result.model, time.perf_counter() - t))

    # 4. certification and attacks
    guarantee = IGRP(grouping.groups, eps_in, eps_out)
    limit = args.limit if args.limit is not None else (100 if args.fast else None)
    test = data.test
    count = len(test) if limit is None else min(limit, len(test))
    x = torch.stack([test[i][0] for i in range(count)])
    y = torch.tensor([int(test[i][1]) for i in range(count)])
    steps = args.attack_steps if args.attack_steps is not None else (5 if args.fast else 30)
    print(f"[4/4] certifying {guarantee!r} with {args.certifier} (L-inf) on {count} test points; PGD checks ({steps} steps)", flush=True)
    records = [_evaluate(name, label, model, x, y, guarantee, args.certifier, steps, data.class_names, seconds)
               for name, label, model, seconds in trained]

    print()
    print(f"digits test set ({count} points), IGRP groups {[list(g) for g in grouping.groups]}, "
          f"{args.certifier} bounds, L-inf, eps_in={eps_in:g}, eps_out={eps_out:g}:")
    print(format_table(records, TABLE))
    print()
    print("per group (points labelled in the group):")
    rows = [{"model": r["model"], **g} for r in records for g in r["per_group"]]
    print(format_table(rows, GROUP_TABLE))
    results = {
        "groups": [list(g) for g in grouping.groups],
        "eps_in": eps_in,
        "eps_out": eps_out,
        "certifier": args.certifier,
        "norm": "inf",
        "points": count,
        "records": records,
        "seconds": time.perf_counter() - started,
    }
    path = write_json(out / "results.json", results)
    print(f"\nwrote {path}; finished in {time.perf_counter() - started:.0f} s")
    return records


if __name__ == "__main__":
    main()

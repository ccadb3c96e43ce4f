"""Cost of relaxed guarantees under bound propagation, side by side in one run.

On the seeds' CIFAR architecture (``cifar_cnn``: 3x32x32 inputs, 100 classes, random weights
scaled down), for each auto_LiRPA certifier (ibp, crown-ibp, and crown on a tiny batch):

1. the time of RTK-5 certification divided by the time of standard (top-1) certification, in
   both spec modes: ``pairwise`` (one spec row per needed pair: 99 rows for top-1, 485 for RTK-5)
   ``anchor`` (margins to the top-1 class only, ``n - 1 + K - 1`` rows, combined by the triangle
   identity ``f_j - f_i = (f_j - f_top) + (f_top - f_i)``) and ``logit`` (each of the 100 logits
   bounded once, whatever the guarantee);
2. what the faster modes cost in certificates: points certified (= VRA with the predictions as
   labels) under both guarantees, against pairwise.

``eps`` is calibrated per certifier (on the standard guarantee, pairwise) so that about half the
points certify. The auto_LiRPA graph is built once per model before timing (its cost is printed).

Usage: python benchmarks/spec_cost.py [--batch 16] [--crown-batch 2] [--device cpu]
       [--weight-scale 0.5] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import relaxplug as rp
from relaxplug.adapters import RTK, Standard
from relaxplug import lirpa as glue
from relaxplug.certifiers import lirpa  # noqa: F401  (registers the bound-propagation certifiers)
from relaxplug.certifiers.base import CERTIFIERS
from relaxplug.models.architectures import build_model
from relaxplug.evaluation.report import format_table


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """Median wall-clock seconds of ``fn`` over ``repeats`` runs, and its last result."""
    samples, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), out


def calibrate(model, x, certifier, start: float, calls: int = 12) -> float:
    """Search (log scale) for an ``eps`` where the standard guarantee certifies 25-75% of ``x``:
    steps of 10x until the target is bracketed, then geometric bisection. Returns the probed
    ``eps`` whose certified fraction came closest to one half."""
    eps, lo, hi = start, None, None
    best = (2.0, start)
    for _ in range(calls):
        fraction = float(rp.certify(model, x, eps, 2, certifier, Standard(), radius=False).certified.float().mean())
        best = min(best, (abs(fraction - 0.5), eps))
        if 0.25 <= fraction <= 0.75:
            break
        if fraction < 0.25:
            hi = eps
            eps = eps / 10 if lo is None else (lo * hi) ** 0.5
        else:
            lo = eps
            eps = eps * 10 if hi is None else (lo * hi) ** 0.5
    return best[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="points for ibp and crown-ibp")
    parser.add_argument("--crown-batch", type=int, default=2, help="points for crown")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weight-scale", type=float, default=0.5, help="multiply every weight by this")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (crown: 1)")
    parser.add_argument("--certifiers", default="ibp,crown-ibp,crown")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    model = build_model("cifar_cnn", (3, 32, 32), 100).to(device).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                p.mul_(args.weight_scale)
    x_all = torch.rand(max(args.batch, args.crown_batch), 3, 32, 32, device=device)

    start = time.perf_counter()
    glue.bounded_module(model, x_all[:1], norm=2.0)
    build_seconds = time.perf_counter() - start

    rows = []
    eps = 0.05
    for name in [n.strip() for n in args.certifiers.split(",") if n.strip()]:
        batch = args.crown_batch if name == "crown" else args.batch
        repeats = 1 if name == "crown" else args.repeats
        x = x_all[:batch]
        # CROWN is far tighter than CROWN-IBP on this net: start its search higher
        start = eps * 100 if name == "crown" else eps
        eps = calibrate(model, x, CERTIFIERS.create(name), start, calls=6 if name == "crown" else 14)
        for spec in ("pairwise", "anchor", "logit"):
            certifier = CERTIFIERS.create(name, spec=spec)
            result = {"certifier": name, "spec": spec, "batch": batch, "eps": f"{eps:.3g}"}
            for label, guarantee in (("top1", Standard()), ("rtk5", RTK(5))):
                seconds, cert = timed(lambda: rp.certify(model, x, eps, 2, certifier, guarantee, radius=False),
                                      repeats, device)
                result[f"{label}_s"] = seconds
                result[f"{label}_rows"] = certifier.last_rows[0]
                result[f"{label}_certified"] = int(cert.certified.sum())
            result["rtk5/top1"] = result["rtk5_s"] / result["top1_s"]
            rows.append(result)
            print(f"{name} {spec}: done", flush=True)

    print(f"\ncifar_cnn (3x32x32, 100 classes), weights x{args.weight_scale}, L2, device {device}, "
          f"{torch.get_num_threads()} threads; auto_LiRPA graph built once in {build_seconds:.2f} s\n")
    columns = ("certifier", "spec", "batch", "eps", "top1_rows", "rtk5_rows", "top1_s", "rtk5_s", "rtk5/top1",
               "top1_certified", "rtk5_certified")
    print(format_table(rows, columns))

    print("\nfaster spec modes vs pairwise (same eps, same points):")
    summary = []
    for name in dict.fromkeys(r["certifier"] for r in rows):
        pair = next(r for r in rows if r["certifier"] == name and r["spec"] == "pairwise")
        for mode in ("anchor", "logit"):
            fast = next(r for r in rows if r["certifier"] == name and r["spec"] == mode)
            summary.append({
                "certifier": name,
                "mode": mode,
                "points": pair["batch"],
                "top1 certified (pairwise/mode)": f"{pair['top1_certified']}/{fast['top1_certified']}",
                "rtk5 certified (pairwise/mode)": f"{pair['rtk5_certified']}/{fast['rtk5_certified']}",
                "rtk5 speed-up": pair["rtk5_s"] / fast["rtk5_s"],
                "rtk5/top1 (mode)": fast["rtk5/top1"],
            })
    print(format_table(summary, list(summary[0]) if summary else []))


if __name__ == "__main__":
    main()

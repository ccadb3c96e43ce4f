"""auto_LiRPA 0.3 against 0.7.1, side by side in one run: time per instance and certified points.

The same measurement runs in two interpreters (one venv per auto_LiRPA release; this script is
started with either and runs itself as a worker in both through ``subprocess``):

- nets: the seeds' CIFAR architecture (``cifar_cnn``, 3x32x32, 10 classes) and CROWN-IBP's
  ``cnn_4layer`` CNN from the zoo (``crown-ibp/cnn_4layer``, CIFAR normalization inside), both
  with seeded random weights (scaled down so that some points certify), on seeded random inputs;
- certifiers: ibp, crown-ibp, crown, alpha-crown (``iterations=3``), standard guarantee, L-inf;
- per (net, certifier): seconds per instance (median of ``--repeats`` runs, the conversion built
  beforehand), points certified, and the certified margins.

Printed: both versions' figures, the time ratio 0.7.1 / 0.3, and the largest margin difference.
For ibp, crown-ibp and crown the methods are the same, so the margins must agree up to float
tolerance (``1e-4 (1 + |m|)``); the script exits 1 if they do not. alpha-crown's optimisation
differs between releases; its margins are reported, not compared.

Usage: python benchmarks/lirpa_versions.py [--python-03 PY] [--python-07 PY] [--batch 8]
       [--crown-batch 2] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")
SAME_METHOD = ("ibp", "crown-ibp", "crown")
NETS = ("cifar_cnn", "crown-ibp/cnn_4layer")


def _net(name: str):
    import torch

    from relaxplug.models.architectures import build_model
    from relaxplug.zoo import build_lirpa_model

    torch.manual_seed(0)
    if name == "cifar_cnn":
        model, eps, scale = build_model("cifar_cnn", (3, 32, 32), 10), 1 / 255, 0.6
    else:
        model, eps, scale = build_lirpa_model(name, (3, 32, 32), 10, width=2, linear_size=64), 2 / 255, 0.8
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.eval(), eps


def worker(args: argparse.Namespace) -> None:
    import torch

    import relaxplug as rp
    from relaxplug import lirpa as glue
    from relaxplug.certifiers.base import CERTIFIERS

    torch.set_num_threads(args.threads)
    out = {"version": glue.version_string(), "rows": []}
    for net in NETS:
        model, eps = _net(net)
        torch.manual_seed(1)
        x_all = torch.rand(args.batch, 3, 32, 32)
        for method in METHODS:
            if method == "alpha-crown" and net == "cifar_cnn":
                continue  # measured: 20 GB and over 15 min for one point on 2 CPU cores (patches mode)
            x = x_all[: args.crown_batch] if method in ("crown", "alpha-crown") else x_all
            options = {"iterations": 3} if method == "alpha-crown" else {}
            certifier = CERTIFIERS.create(method, **options)
            started = time.perf_counter()
            rp.certify(model, x[:1], eps, "inf", certifier, "standard", radius=False)  # conversion
            build = time.perf_counter() - started
            samples, cert = [], None
            for _ in range(args.repeats):
                started = time.perf_counter()
                cert = rp.certify(model, x, eps, "inf", certifier, "standard", radius=False)
                samples.append(time.perf_counter() - started)
            out["rows"].append({"net": net, "method": method, "n": len(x), "build_s": build,
                                "s_per_instance": statistics.median(samples) / len(x),
                                "certified": int(cert.certified.sum()), "margins": cert.margin.tolist()})
    print(json.dumps(out))


def fingerprint_cost(threads: int) -> str:
    """The conversion cache's validity check (``relaxplug.lirpa.Fingerprint.matches``) against a
    forward pass of the seeds' CIFAR net on a batch of 1024 (best of several runs each)."""
    import torch

    from relaxplug import lirpa as glue
    from relaxplug.models.architectures import build_model

    torch.set_num_threads(threads)
    model = build_model("cifar_cnn", (3, 32, 32), 10).eval()
    x = torch.rand(1024, 3, 32, 32)
    fingerprint = glue.Fingerprint(model)

    def best(fn, runs: int) -> float:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        return min(samples)

    with torch.no_grad():
        forward = best(lambda: model(x), 3)
    check = best(lambda: fingerprint.matches(model), 10)
    return (f"cache check: {check * 1e3:.1f} ms against a forward pass of {forward:.2f} s (cifar_cnn, batch 1024): "
            f"{100 * check / forward:.2f}%")


def _run(python: str, args: argparse.Namespace) -> dict:
    command = [python, __file__, "--worker", "--batch", str(args.batch), "--crown-batch", str(args.crown_batch),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _default_07() -> str:
    for venv in (".venv-lirpa07", ".venv07"):
        candidate = ROOT / venv / "bin" / "python"
        if candidate.exists():
            return str(candidate)
    raise SystemExit("no auto_LiRPA 0.7.1 interpreter: `make install-lirpa07` or pass --python-07")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-03", default=None, help="interpreter with auto_LiRPA 0.3 (default: .venv)")
    parser.add_argument("--python-07", default=None, help="interpreter with auto_LiRPA 0.7.1")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crown-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    python_03 = args.python_03 or str(ROOT / ".venv" / "bin" / "python")
    python_07 = args.python_07 or _default_07()
    old, new = _run(python_03, args), _run(python_07, args)
    print(f"auto_LiRPA {old['version']} ({python_03}) vs {new['version']} ({python_07}); L-inf, standard guarantee, "
          f"{os.cpu_count()} CPUs, {args.threads} threads")
    header = f"{'net':22} {'method':12} {'n':>3} {'s/inst 0.3':>11} {'s/inst 0.7':>11} {'ratio':>6} " \
             f"{'cert 0.3':>8} {'cert 0.7':>8} {'max |dm|':>9}"
    print(header)
    print("-" * len(header))
    disagree = []
    for a, b in zip(old["rows"], new["rows"]):
        diff = max((abs(p - q) for p, q in zip(a["margins"], b["margins"])), default=0.0)
        tol = max((1e-4 * (1 + abs(p)) for p in a["margins"]), default=0.0)
        if a["method"] in SAME_METHOD and not diff <= tol:
            disagree.append(f"{a['net']} {a['method']}: margins differ by {diff:.3g} (tolerance {tol:.3g})")
        print(f"{a['net']:22} {a['method']:12} {a['n']:>3} {a['s_per_instance']:>11.4f} {b['s_per_instance']:>11.4f} "
              f"{b['s_per_instance'] / a['s_per_instance']:>6.2f} {a['certified']:>8} {b['certified']:>8} {diff:>9.2e}")
    print("conversion seconds (0.3 / 0.7): " + ", ".join(
        f"{a['net']} {a['method']} {a['build_s']:.2f}/{b['build_s']:.2f}" for a, b in zip(old["rows"], new["rows"])))
    print(fingerprint_cost(args.threads))
    if disagree:
        print("MARGINS DISAGREE where the methods are the same:\n  " + "\n  ".join(disagree))
        return 1
    print("ibp, crown-ibp, crown: certified margins agree between the versions up to 1e-4 (1 + |m|)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

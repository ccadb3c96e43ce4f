"""Certification cost against the number of classes, measured side by side in one run.

GloRo RTK-5 certification (no radius) of the seeds' CIFAR net (``cifar_cnn``, 3x32x32 inputs)
on a batch of 512, divided by one plain forward pass of the same batch, at 10 / 100 / 1,000 /
10,000 classes (target at 1,000: <= 1.2). The provable Lipschitz bound and the ``(n, n)``
pair matrix are computed once per set of weights and cached; their one-off cost is printed
separately. Certification reads ``K x n`` margins per point (inherent); what it must not do is
sort all ``n`` logits or make many passes over ``(B, K, n)`` tensors.

On a machine shared with other work, ``--threads 1 --clock cpu`` is the steadier figure: with
several threads each of certification's many small operations waits for its slowest thread,
which a loaded machine deschedules, while the forward pass is a few large operations; and CPU
time leaves out the time other processes hold the core.

Usage: python benchmarks/class_scaling.py [--batch 512] [--classes 10 100 1000 10000] [--threads N] [--clock wall|cpu] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

import relaxplug as rp
from relaxplug.adapters import RTK
from relaxplug.lipschitz import estimator_for
from relaxplug.models.architectures import build_model

from gloro_overhead import timed_side_by_side


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--K", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall-clock time, or this process's CPU time (steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.clock == "cpu" and device.type == "cuda":
        parser.error("--clock cpu measures CPU work; on CUDA use the wall clock")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    guarantee = RTK(args.K)

    print(f"device={device} threads={torch.get_num_threads()} clock={args.clock} cifar_cnn, batch {args.batch}, RTK K={args.K}")
    print(f"{'classes':>8s} {'forward s':>10s} {'certify s':>10s} {'ratio':>6s} {'+radius':>8s} {'bound once s':>13s}")
    for n in args.classes:
        model = build_model("cifar_cnn", (3, 32, 32), n).to(device).eval()
        start = time.perf_counter()
        estimator_for(model, (3, 32, 32)).pair_lipschitz("sound")
        once = time.perf_counter() - start

        def forward():
            with torch.no_grad():
                model(x)

        def certify():
            rp.certify(model, x, eps=0.141, certifier="gloro", guarantee=guarantee, radius=False)

        def certify_radius():
            rp.certify(model, x, eps=0.141, certifier="gloro", guarantee=guarantee, radius=True)

        times = timed_side_by_side({"forward": forward, "certify": certify, "radius": certify_radius},
                                   args.repeats, device, clock)
        t_forward = times["forward"]
        print(f"{n:8d} {t_forward:10.4f} {times['certify']:10.4f} {times['certify'] / t_forward:6.2f} "
              f"{times['radius'] / t_forward:8.2f} {once:13.2f}", flush=True)


if __name__ == "__main__":
    main()

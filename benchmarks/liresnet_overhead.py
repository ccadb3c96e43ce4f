"""GloRo certification of a LiResNet against its plain forward pass, measured side by side.

Model: ``build_liresnet`` of depth 12 and width 128 (the NeurIPS 2023 paper's CIFAR size; neck
2048, 8 dense residual layers, last-layer normalization), 3x32x32 inputs, 100 classes. Certifying
a batch (standard and RTK K=5, no radius) is divided by one plain forward pass of the same batch
(target <= 1.1), and the cache check alone (``ComputationSnapshot.matches``: is the model still the
computation the cached bound was built for) likewise. The sound Lipschitz bound is computed once per set of weights and cached; its
one-off cost is printed separately. Timings are medians of interleaved rounds
(``gloro_overhead.timed_side_by_side``).

Usage: python benchmarks/liresnet_overhead.py [--batch 256] [--repeats 5] [--device cpu] [--threads N]
(``-v``-style progress of the one-off bound: it logs per layer at INFO level.)
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from gloro_overhead import timed_side_by_side  # run as a script: benchmarks/ is on sys.path

import relaxplug as rp
from relaxplug.adapters import RTK
from relaxplug.lipschitz import estimator_for
from relaxplug.lipschitz.cache import ComputationSnapshot
from relaxplug.models.liresnet import build_liresnet


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a loaded machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_liresnet((3, 32, 32), 100, depth=args.depth, width=args.width).to(device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    eps = 36 / 255

    start = time.perf_counter()
    estimator_for(model, (3, 32, 32)).sound()
    bound_seconds = time.perf_counter() - start
    rp.certify(model, x[:2], eps, guarantee="standard", radius=False)  # the rounding model, also cached

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def certify_standard() -> None:
        rp.certify(model, x, eps, guarantee="standard", radius=False)

    def certify_rt5() -> None:
        rp.certify(model, x, eps, guarantee=RTK(5), radius=False)

    snapshot = ComputationSnapshot(model)

    def cache_check() -> None:
        if not snapshot.matches(model):
            raise RuntimeError("the model changed during the benchmark")

    times = timed_side_by_side({"forward": forward, "standard": certify_standard, "rt5": certify_rt5,
                                "check": cache_check}, args.repeats, device)
    params = sum(p.numel() for p in model.parameters())
    print(f"device={device} threads={torch.get_num_threads()} LiResNet depth {args.depth} width {args.width}, "
          f"{params / 1e6:.1f}M parameters, 100 classes, batch {args.batch}")
    print(f"{'measurement':44s} {'seconds':>9s} {'ratio':>7s} {'target':>7s}")
    print(f"{'plain forward':44s} {times['forward']:9.4f} {1.0:7.2f}")
    print(f"{'gloro certify, standard (no radius)':44s} {times['standard']:9.4f} "
          f"{times['standard'] / times['forward']:7.2f} {'<= 1.1':>7s}")
    print(f"{'gloro certify, RTK K=5 (no radius)':44s} {times['rt5']:9.4f} {times['rt5'] / times['forward']:7.2f}")
    print(f"{'cache check (structure + tensor values)':44s} {times['check']:9.4f} "
          f"{times['check'] / times['forward']:7.3f} {'<= 0.02':>7s}")
    print(f"{'sound Lipschitz bound (once per weights)':44s} {bound_seconds:9.4f}")


if __name__ == "__main__":
    main()

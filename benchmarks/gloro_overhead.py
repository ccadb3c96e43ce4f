"""GloRo overhead, measured side by side in one run on the seeds' CIFAR architecture.

1. Certifying a batch (3x32x32 inputs, 100 classes, RTK K=5) divided by one plain forward
   pass of the same batch (target <= 1.1). The provable Lipschitz bound is computed once per
   computation and cached; its one-off cost is printed separately.
2. The cache check alone (is the model still the computation the cached bound was built for:
   structure, Python attributes and every tensor's value; ``ComputationSnapshot.matches``)
   divided by the forward pass (target <= 2%).
3. One GloRo training step (forward, power iteration, instrumented TRADES loss, backward,
   Adam step) divided by one plain cross-entropy step (target <= 1.3).

Usage: python benchmarks/gloro_overhead.py [--batch 1024] [--train-batch 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import relaxplug as rp
from relaxplug.adapters import RTK
from relaxplug.lipschitz import LipschitzEstimator, estimator_for
from relaxplug.lipschitz.cache import ComputationSnapshot
from relaxplug.models.architectures import build_model
from relaxplug.training.trainer import gloro_step_loss


def timed_side_by_side(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall-clock seconds of each function, measured in interleaved rounds (one call of
    each per round, after one warm-up round), so drift in machine load hits all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(repeats + 1):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_index:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    model = build_model("cifar_cnn", (3, 32, 32), 100).to(device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    guarantee = RTK(5)

    start = time.perf_counter()
    estimator_for(model, (3, 32, 32)).sound()
    bound_seconds = time.perf_counter() - start

    def forward():
        with torch.no_grad():
            model(x)

    def certify_no_radius():
        rp.certify(model, x, eps=0.141, certifier="gloro", guarantee=guarantee, radius=False)

    def certify_with_radius():
        rp.certify(model, x, eps=0.141, certifier="gloro", guarantee=guarantee, radius=True)

    snapshot = ComputationSnapshot(model)

    def cache_check():
        if not snapshot.matches(model):
            raise RuntimeError("the model changed during the benchmark")

    times = timed_side_by_side({"forward": forward, "certify": certify_no_radius, "radius": certify_with_radius,
                                "check": cache_check}, args.repeats, device)
    t_forward, t_cert, t_cert_radius, t_check = times["forward"], times["certify"], times["radius"], times["check"]

    train_model = build_model("cifar_cnn", (3, 32, 32), 100).to(device).train()
    xb = torch.rand(args.train_batch, 3, 32, 32, device=device)
    yb = torch.randint(0, 100, (args.train_batch,), device=device)
    optimizer = torch.optim.Adam(train_model.parameters(), lr=1e-4)
    estimator = LipschitzEstimator(train_model, (3, 32, 32))

    def plain_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(train_model(xb), yb).backward()
        optimizer.step()

    def gloro_step():
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = gloro_step_loss(train_model, estimator, guarantee, xb, yb, 0.141, "trades", 1.0, 2)
        loss.backward()
        optimizer.step()

    times = timed_side_by_side({"plain": plain_step, "gloro": gloro_step}, args.repeats, device)
    t_plain, t_gloro = times["plain"], times["gloro"]

    threads = torch.get_num_threads()
    print(f"device={device} threads={threads} cifar_cnn, 100 classes, RTK K=5")
    print(f"{'measurement':48s} {'seconds':>9s} {'ratio':>7s} {'target':>7s}")
    print(f"{'plain forward, batch ' + str(args.batch):48s} {t_forward:9.4f} {1.0:7.2f}")
    print(f"{'gloro certify (no radius), batch ' + str(args.batch):48s} {t_cert:9.4f} {t_cert / t_forward:7.2f} {'<= 1.1':>7s}")
    print(f"{'cache check (structure + tensor values)':48s} {t_check:9.4f} {t_check / t_forward:7.3f} {'<= 0.02':>7s}")
    print(f"{'gloro certify + closed-form radius':48s} {t_cert_radius:9.4f} {t_cert_radius / t_forward:7.2f}")
    print(f"{'provable Lipschitz bound (once per weights)':48s} {bound_seconds:9.4f}")
    print(f"{'plain cross-entropy step, batch ' + str(args.train_batch):48s} {t_plain:9.4f} {1.0:7.2f}")
    print(f"{'gloro TRADES step (2 power iterations)':48s} {t_gloro:9.4f} {t_gloro / t_plain:7.2f} {'<= 1.3':>7s}")


if __name__ == "__main__":
    main()

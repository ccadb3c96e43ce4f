"""GloRo overhead, measured side by side in one run on the seeds' CIFAR architecture.

1. Certifying a batch (3x32x32 inputs, 100 classes, RTK K=5) divided by one plain forward
   pass of the same batch (target <= 1.1). The provable Lipschitz bound is computed once per
   computation and cached; its one-off cost is printed separately.
2. The cache check alone (is the model still the computation the cached bound was built for:
   structure, Python attributes and every tensor's value; ``ComputationSnapshot.matches``)
   divided by the forward pass (target <= 2%).
3. One ``rp.GloRoNet`` training step (``net.loss(x, y).backward()`` and an Adam step: the
   forward pass, two power iterations per layer from the persistent buffers, the guarantee's
   margin (Equation B2) and the TRADES loss) divided by one plain cross-entropy step of the same
   batch (target <= 1.3), for standard, RTK K=5, superclass and IGRP (20 groups of 5 classes).

``--clock cpu`` times by process CPU time instead of wall-clock time: on a shared machine the
other processes' load then hits both sides less (use it with ``--threads 1``).

Usage: python benchmarks/gloro_overhead.py [--batch 1024] [--train-batch 256] [--device cpu]
       [--threads N] [--clock wall|cpu] [--train-only]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import relaxplug as rp
from relaxplug.adapters import IGRP, RTK, Guarantee, Standard, Superclass
from relaxplug.lipschitz import estimator_for
from relaxplug.lipschitz.cache import ComputationSnapshot
from relaxplug.models.architectures import build_model

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed_side_by_side(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device,
                       clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of each function by ``clock`` (wall-clock by default), measured in interleaved
    rounds (one call of each per round, after one warm-up round), so drift in machine load hits
    all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(repeats + 1):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_index:
                samples[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def training_guarantees() -> dict[str, Guarantee]:
    """The guarantees whose training step is timed (100 classes; groups: 20 runs of 5 classes; IGRP at
    ``eps_in = 0.0705``, ``eps_out = 0.141``)."""
    groups = [list(range(g, g + 5)) for g in range(0, 100, 5)]
    return {"standard": Standard(), "rtk:5": RTK(5), "superclass (20 groups)": Superclass(groups),
            "igrp (20 groups)": IGRP(groups, 0.0705, 0.141)}


def training_steps(batch: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """One plain cross-entropy step and one ``GloRoNet`` TRADES step per guarantee, each on its own
    ``cifar_cnn`` with its own Adam, all on the same batch."""
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    plain_model = build_model("cifar_cnn", (3, 32, 32), 100).to(device).train()
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-4)

    def plain_step():
        plain_opt.zero_grad(set_to_none=True)
        F.cross_entropy(plain_model(x), y).backward()
        plain_opt.step()

    steps = {"plain": plain_step}
    for name, guarantee in training_guarantees().items():
        net = rp.GloRoNet(build_model("cifar_cnn", (3, 32, 32), 100).to(device), 0.141, guarantee,
                          input_shape=(3, 32, 32), loss="trades").train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def gloro_step(net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            net.loss(x, y).backward()
            opt.step()

        steps[name] = gloro_step
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--train-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall")
    parser.add_argument("--train-only", action="store_true", help="only the training-step figures (3.)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    torch.manual_seed(0)
    print(f"device={device} threads={torch.get_num_threads()} clock={args.clock} cifar_cnn, 100 classes")
    print(f"{'measurement':48s} {'seconds':>9s} {'ratio':>7s} {'target':>7s}")
    if not args.train_only:
        certification(args.batch, args.repeats, device, clock)

    times = timed_side_by_side(training_steps(args.train_batch, device), args.repeats, device, clock)
    t_plain = times.pop("plain")
    print(f"{'plain cross-entropy step, batch ' + str(args.train_batch):48s} {t_plain:9.4f} {1.0:7.2f}")
    for name, seconds in times.items():
        print(f"{'GloRoNet TRADES step, ' + name:48s} {seconds:9.4f} {seconds / t_plain:7.2f} {'<= 1.3':>7s}")


def certification(batch: int, repeats: int, device: torch.device, clock: Callable[[], float]) -> None:
    """Figures 1 and 2: certification and the cache check, each divided by a plain forward pass."""
    model = build_model("cifar_cnn", (3, 32, 32), 100).to(device).eval()
    x = torch.rand(batch, 3, 32, 32, device=device)
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
                                "check": cache_check}, repeats, device, clock)
    t_forward, t_cert, t_cert_radius, t_check = times["forward"], times["certify"], times["radius"], times["check"]
    print(f"{'plain forward, batch ' + str(batch):48s} {t_forward:9.4f} {1.0:7.2f}")
    print(f"{'gloro certify (no radius, RTK K=5), batch ' + str(batch):48s} {t_cert:9.4f} {t_cert / t_forward:7.2f} {'<= 1.1':>7s}")
    print(f"{'cache check (structure + tensor values)':48s} {t_check:9.4f} {t_check / t_forward:7.3f} {'<= 0.02':>7s}")
    print(f"{'gloro certify + closed-form radius':48s} {t_cert_radius:9.4f} {t_cert_radius / t_forward:7.2f}")
    print(f"{'provable Lipschitz bound (once per weights)':48s} {bound_seconds:9.4f}")


if __name__ == "__main__":
    main()

"""A GloRoNet training step vs a plain cross-entropy step, side by side, on the seeds' CIFAR net.

Both steps: forward, loss, backward, Adam step on ``cifar_cnn`` (3x32x32 inputs, 100 classes).
The GloRo step is ``rp.GloRoNet(model, 0.141, guarantee, loss="trades").loss(x, y)``: the
forward pass, two power iterations per layer from the persistent buffers, the guarantee's
margin (Equation B2) and the TRADES loss. Target: ratio <= 1.3 (issue 14). Timing: medians of
interleaved rounds (``benchmarks/gloro_overhead.py``'s ``timed_side_by_side``).

Usage: python benchmarks/gloro_training_step.py [--batch 256] [--repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import relaxplug as rp
from gloro_overhead import timed_side_by_side
from relaxplug.models.architectures import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (args.batch,), device=device)

    plain_model = build_model("cifar_cnn", (3, 32, 32), 100).to(device).train()
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-4)

    def plain_step():
        plain_opt.zero_grad(set_to_none=True)
        F.cross_entropy(plain_model(x), y).backward()
        plain_opt.step()

    steps = {"plain": plain_step}
    for guarantee in ("standard", "rtk:5"):
        net = rp.GloRoNet(build_model("cifar_cnn", (3, 32, 32), 100).to(device), 0.141, guarantee,
                          input_shape=(3, 32, 32), loss="trades").train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)

        def gloro_step(net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            net.loss(x, y).backward()
            opt.step()

        steps[guarantee] = gloro_step
    times = timed_side_by_side(steps, args.repeats, device)
    print(f"device={device} threads={torch.get_num_threads()} cifar_cnn, 100 classes, batch {args.batch}")
    print(f"{'step':44s} {'seconds':>9s} {'ratio':>7s} {'target':>7s}")
    print(f"{'plain cross-entropy step':44s} {times['plain']:9.4f} {1.0:7.2f}")
    for guarantee in ("standard", "rtk:5"):
        ratio = times[guarantee] / times["plain"]
        print(f"{'GloRoNet TRADES step, ' + guarantee:44s} {times[guarantee]:9.4f} {ratio:7.2f} {'<= 1.3':>7s}")


if __name__ == "__main__":
    main()

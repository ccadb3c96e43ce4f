"""How loose is the graph Lipschitz bound (GloRo on arbitrary networks)?

For model-zoo style networks (PreAct-ResNet with the input normalization inside the model,
a torchvision-style ResNet, a CROWN-IBP CNN with BatchNorm, a RobustBench-style WideResNet,
torchvision's ResNet-18), compare
the sound bound of :mod:`relaxplug.lipschitz.graph` on the logits with the largest Lipschitz
ratio observed: the spectral norm of the Jacobian at random inputs, and difference quotients
``||f(x + d) - f(x)|| / ||d||`` pushed up by gradient ascent. Both are lower bounds of the true
constant, so ``bound / observed`` over-states the looseness, never under-states it. The bound is
reported with and without folding BatchNorm / normalization into neighbouring linear layers.

Usage: python benchmarks/graph_lipschitz.py [--points 20] [--steps 100] [--threads 2]
       [--skip-resnet18] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from relaxplug.lipschitz.graph import GraphLipschitzEstimator  # noqa: E402
from relaxplug.evaluation.report import format_table, write_json  # noqa: E402
from tests.lipschitz.test_graph import PreActResNet, SmallResNet, WideResNet, _crown_ibp_cnn, _randomize_bn  # noqa: E402

COLUMNS = ("model", "input", "bound", "bound_nofold", "jacobian", "ascent", "ratio", "ratio_nofold", "bound_s")


def _jacobian_norm(model: nn.Module, x: torch.Tensor) -> float:
    J = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x, vectorize=True)
    return float(torch.linalg.matrix_norm(J.reshape(-1, x.numel()), ord=2))


def _ascent(model: nn.Module, shape: tuple[int, ...], steps: int, restarts: int = 3) -> float:
    gen = torch.Generator().manual_seed(0)
    best = 0.0
    for _ in range(restarts):
        x = torch.rand((1, *shape), generator=gen, dtype=torch.float64).requires_grad_(True)
        d = (torch.randn((1, *shape), generator=gen, dtype=torch.float64) * 0.05).requires_grad_(True)
        opt = torch.optim.Adam([x, d], lr=0.01)
        for _ in range(steps):
            ratio = (model(x + d) - model(x)).norm() / d.norm()
            best = max(best, float(ratio.detach()))
            opt.zero_grad()
            (-ratio).backward()
            opt.step()
    return best


def _train_on_digits(model: nn.Module, epochs: int = 8) -> tuple[nn.Module, float]:
    """A few epochs of plain training on the embedded 8x8 digits (realistic BatchNorm statistics)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = x.expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=gen)
    train, test = perm[:1200], perm[1200:]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=gen).split(64):
            batch = train[idx]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model, accuracy


def measure(label: str, model: nn.Module, shape: tuple[int, ...], points: int, steps: int) -> dict[str, Any]:
    model = model.double().eval()
    start = time.perf_counter()
    bound = GraphLipschitzEstimator(model, shape).total()
    bound_s = time.perf_counter() - start
    nofold = GraphLipschitzEstimator(model, shape, fold=False).total()
    gen = torch.Generator().manual_seed(1)
    jac = max(_jacobian_norm(model, torch.rand(shape, generator=gen, dtype=torch.float64)) for _ in range(points))
    ascent = _ascent(model, shape, steps)
    observed = max(jac, ascent)
    return {
        "model": label, "input": "x".join(map(str, shape)), "bound": bound, "bound_nofold": nofold,
        "jacobian": jac, "ascent": ascent, "ratio": bound / observed, "ratio_nofold": nofold / observed,
        "bound_s": bound_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=20, help="random inputs for Jacobian norms")
    parser.add_argument("--steps", type=int, default=100, help="gradient-ascent steps per restart")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-resnet18", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models: list[tuple[str, nn.Module, tuple[int, ...]]] = [
        ("PreAct-ResNet (default BN init)", PreActResNet(), (3, 8, 8)),
        ("PreAct-ResNet (random BN stats)", _randomize_bn(PreActResNet()), (3, 8, 8)),
        ("PreAct-ResNet 16/32 (random BN stats)", _randomize_bn(PreActResNet((16, 32))), (3, 16, 16)),
    ]
    trained, accuracy = _train_on_digits(PreActResNet((16, 32)))
    models.append((f"PreAct-ResNet 16/32 (trained on digits, acc {accuracy:.2f})", trained, (3, 8, 8)))
    models += [
        ("ResNet BasicBlock + maxpool (random BN stats)", _randomize_bn(SmallResNet(), seed=1), (2, 8, 8)),
        ("CROWN-IBP CNN with BN (random BN stats)", _randomize_bn(_crown_ibp_cnn(), seed=2), (1, 8, 8)),
        ("RobustBench-style WideResNet (random BN stats)", _randomize_bn(WideResNet(), seed=3), (3, 8, 8)),
    ]
    if not args.skip_resnet18:
        import torchvision

        models.append(("torchvision resnet18 (random init)", torchvision.models.resnet18(num_classes=10), (3, 32, 32)))
    rows = []
    for label, model, shape in models:
        rows.append(measure(label, model, shape, args.points, args.steps))
        print(format_table(rows[-1:], COLUMNS), flush=True)
    print()
    print(format_table(rows, COLUMNS))
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

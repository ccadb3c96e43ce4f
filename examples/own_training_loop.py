"""Train your own model in your own PyTorch loop for relaxed top-2 (RT2) robustness, then certify.

No config file, no registered architecture: the model below is defined here, with a residual
block of its own (``x + conv(minmax(conv(x)))`` written in its ``forward``; the Lipschitz engine
traces it and bounds the sum of its two paths, ``1 + L(conv2) L(conv1)``).
:class:`relaxplug.GloRoNet` wraps it: in train mode
``net(x)`` returns the GloRo-instrumented logits ``g(x)`` (Equation B2, RT2's margin at
``eps = 0.3`` in L2) and ``net.loss(x, y)`` the GloRo TRADES loss; the loop is plain PyTorch
(Adam, your batches, your schedule). Afterwards :func:`relaxplug.certify` certifies the plain
model with the sound Lipschitz bound (the power-iteration vectors of training are an estimate,
never a proof) and the script prints clean accuracy, VRA and rejection rate for RT2 and
standard robustness on the embedded 8x8 digits (``relaxplug.data``)::

    python examples/own_training_loop.py                  # about a minute on 2 CPU cores
    python examples/own_training_loop.py --fast           # seconds (tests)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import relaxplug as rp
from relaxplug.data import load_dataset


class ConvResidual(nn.Module):
    """``x + conv2(minmax(conv1(x)))`` at constant width (same padding keeps the shape)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = rp.layers.MinMax()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


def make_model(n_classes: int = 10) -> nn.Sequential:
    """A stem conv, one residual block, invertible downsampling, a dense head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), rp.layers.MinMax(),
        ConvResidual(16), rp.layers.MinMax(),
        rp.layers.InvertibleDownsample(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), rp.layers.MinMax(), nn.Linear(128, n_classes),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--eps", type=float, default=0.3, help="L2 radius")
    parser.add_argument("--fast", action="store_true", help="3 epochs on 256 images (tests)")
    parser.add_argument("--out", default="out/own_training_loop")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    torch.manual_seed(0)
    data = load_dataset("digits")
    train_set = Subset(data.train, range(256)) if args.fast else data.train
    epochs = 3 if args.fast else args.epochs
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))

    model = make_model(data.n_classes)
    net = rp.GloRoNet(model, args.eps, "rtk:2", input_shape=data.input_shape, loss="trades")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for epoch in range(epochs):
        net.eps = args.eps * min(1.0, (epoch + 1) / max(1, epochs // 4))  # ramp the radius up
        net.trades_lambda = 0.01 + (1.2 - 0.01) * min(1.0, epoch / max(1, epochs // 2))
        total = 0.0
        for x, y in loader:
            optimizer.zero_grad()
            loss = net.loss(x, y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
        print(f"epoch {epoch + 1}/{epochs}: eps {net.eps:.3f}, loss {total / len(train_set):.4f}")

    test = [data.test[i] for i in range(64 if args.fast else len(data.test))]
    x = torch.stack([p[0] for p in test])
    y = torch.tensor([int(p[1]) for p in test])
    records = []
    for guarantee in ("rtk:2", "standard"):
        cert = rp.certify(model, x, args.eps, 2, "gloro", guarantee)
        records.append({"guarantee": guarantee, "eps": args.eps, "points": len(y),
                        "clean_accuracy": float((cert.pred == y).float().mean()),
                        "vra": float(cert.vra(y)), "rejection_rate": float(1 - cert.certified.float().mean())})
        print(f"{guarantee:9s} eps={args.eps}: clean {records[-1]['clean_accuracy']:.3f}  "
              f"VRA {records[-1]['vra']:.3f}  rejected {records[-1]['rejection_rate']:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pt")  # weights and the power-iteration buffers
    summary = {"epochs": epochs, "records": records}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

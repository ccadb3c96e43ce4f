"""Train your own model with PyTorch Lightning for relaxed top-2 (RT2) robustness, then certify.

A user-defined model (defined below, nothing registered in relaxplug) is wrapped in
:class:`relaxplug.GloRoNet` inside a ``LightningModule``: ``training_step`` returns
``net.loss(x, y)``, the GloRo TRADES loss on the instrumented logits ``g(x)`` (Equation B2,
RT2's margin at ``eps = 0.3`` in L2), and ``on_train_epoch_start`` ramps the radius and the
TRADES weight. ``lightning.Trainer`` runs the loop on the CPU, with no logger, progress bar,
model summary or automatic checkpoints. Afterwards :func:`relaxplug.certify` certifies the
plain model with the sound Lipschitz bound and the script prints clean accuracy, VRA and
rejection rate for RT2 and standard robustness on the embedded 8x8 digits
(``relaxplug.data``).

The power-iteration vectors of training are buffers of the model's layers, so Lightning's
checkpoint carries them: the script saves one with ``trainer.save_checkpoint``, reloads it with
``load_from_checkpoint`` and checks that the reloaded model gets the same certificate and the
same training estimate of the Lipschitz bound::

    pip install 'relaxplug[lightning]'              # or: make install
    python examples/lightning_training.py           # minutes on 2 CPU cores
    python examples/lightning_training.py --fast    # seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import relaxplug as rp
from relaxplug.data import load_dataset
from relaxplug.lipschitz import estimator_for


def make_model(n_classes: int = 10) -> nn.Sequential:
    """Two conv layers with invertible downsampling, then a dense head (8x8 grey inputs)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), rp.layers.MinMax(), rp.layers.InvertibleDownsample(2),
        nn.Conv2d(64, 32, 3, padding=1), rp.layers.MinMax(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 128), rp.layers.MinMax(), nn.Linear(128, n_classes),
    )


class GloRoDigits(L.LightningModule):
    """A ``LightningModule`` training ``model`` through ``rp.GloRoNet`` (RT2 by default).

    The radius ramps linearly to ``eps`` over the first quarter of the epochs and the TRADES
    weight from 0.01 to 1.2 over the first half (Table F1's shape).
    """

    def __init__(self, model: nn.Module, eps: float = 0.3, guarantee: str = "rtk:2",
                 input_shape: Sequence[int] = (1, 8, 8), lr: float = 1e-3):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.net = rp.GloRoNet(model, eps, guarantee, input_shape=input_shape, loss="trades")

    def on_train_epoch_start(self) -> None:
        epochs, epoch = self.trainer.max_epochs, self.current_epoch
        self.net.eps = self.hparams.eps * min(1.0, (epoch + 1) / max(1, epochs // 4))
        self.net.trades_lambda = 0.01 + (1.2 - 0.01) * min(1.0, epoch / max(1, epochs // 2))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.net.loss(x, y)
        self.log("loss", loss, on_step=False, on_epoch=True, prog_bar=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--eps", type=float, default=0.3, help="L2 radius")
    parser.add_argument("--fast", action="store_true", help="3 epochs on 256 images (tests)")
    parser.add_argument("--out", default="out/lightning_training")
    return parser


def _records(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[list[dict[str, Any]], list]:
    records, certificates = [], []
    for guarantee in ("rtk:2", "standard"):
        cert = rp.certify(model, x, eps, 2, "gloro", guarantee)
        certificates.append(cert)
        records.append({"guarantee": guarantee, "eps": eps, "points": len(y),
                        "clean_accuracy": float((cert.pred == y).float().mean()),
                        "vra": float(cert.vra(y)), "rejection_rate": float(1 - cert.certified.float().mean())})
    return records, certificates


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no "GPU available: ..." lines
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # 8x8 digits need no loader workers
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # lightning 2.6 on torch >= 2.10
    torch.manual_seed(0)
    data = load_dataset("digits")
    train_set = Subset(data.train, range(256)) if args.fast else data.train
    epochs = 3 if args.fast else args.epochs
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))

    module = GloRoDigits(make_model(data.n_classes), eps=args.eps, input_shape=data.input_shape)
    before = {k: v.clone() for k, v in module.net.model.state_dict().items() if "lipschitz_u" in k}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True)
    trainer.fit(module, loader)
    vectors = {k: v for k, v in module.net.model.state_dict().items() if "lipschitz_u" in k}
    print(f"trained {epochs} epochs with lightning {L.__version__}: final loss "
          f"{float(trainer.callback_metrics['loss']):.4f}; {len(vectors)} power vectors, "
          f"{sum(not torch.equal(before[k], v) for k, v in vectors.items())} advanced by the loop")

    model = module.net.model.eval()
    test = [data.test[i] for i in range(64 if args.fast else len(data.test))]
    x = torch.stack([p[0] for p in test])
    y = torch.tensor([int(p[1]) for p in test])
    records, certificates = _records(model, x, y, args.eps)
    for record in records:
        print(f"{record['guarantee']:9s} eps={args.eps}: clean {record['clean_accuracy']:.3f}  "
              f"VRA {record['vra']:.3f}  rejected {record['rejection_rate']:.3f}")

    # Lightning's own checkpoint: weights and power vectors in its state_dict, reloaded as a new module
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(out / "model.ckpt")
    reloaded = GloRoDigits.load_from_checkpoint(out / "model.ckpt", model=make_model(data.n_classes),
                                                map_location="cpu").net.model.eval()
    _, again = _records(reloaded, x, y, args.eps)
    same_certificate = all(torch.equal(a.margin, b.margin) and torch.equal(a.certified, b.certified)
                           and torch.equal(a.pred, b.pred) for a, b in zip(certificates, again))
    same_estimate = torch.equal(estimator_for(model, data.input_shape).power(0),
                                estimator_for(reloaded, data.input_shape).power(0))
    print(f"checkpoint reloaded: same certificates {same_certificate}, same training estimate {same_estimate}")
    summary = {"epochs": epochs, "lightning": L.__version__, "records": records,
               "power_vectors": len(vectors), "checkpoint_same_certificate": same_certificate,
               "checkpoint_same_estimate": same_estimate}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()

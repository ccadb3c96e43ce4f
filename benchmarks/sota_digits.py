"""State-of-the-art Lipschitz training against the seeds' recipe, on the embedded 8x8 digits.

Four GloRo runs at equal epochs, all certified at eps = 0.3 (L2) with the sound GloRo bound
on the 599 test images:

1. ``digits_cnn`` (the seeds' design scaled to 8x8) with GloRo TRADES, the seeds' recipe
   (Adam, lambda "0.01 -> 1.2 log half", eps ramp over the first quarter);
2. ``liresnet_digits`` with EMMA and the Recipe's options (NAdam, Lookahead k=5, gradient
   clipping at 3, training radius ramped from 0.1x to 2x the certified radius over half the run);
3. the same LiResNet trained for RT2 and 4. for affinity (the sets of
   ``configs/digits_affinity_sets.yaml``), with EMMA composed with those guarantees.

Printed: parameters, clean accuracy, standard VRA, the VRA and rejection rate (fraction of test
points not certified) under the run's own guarantee, and training seconds.

Usage: python benchmarks/sota_digits.py [--epochs 10] [--out runs/sota_digits] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

import relaxplug as rp
from relaxplug.data import load_dataset
from relaxplug.training.config import load_config
from relaxplug.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
EPS = 0.3
RECIPE = ["optimizer.name=nadam", "optimizer.lookahead_k=5", "optimizer.clip_grad_norm=3", "gloro.loss=emma"]


def runs(epochs: int, out: Path) -> list[tuple[str, list[str]]]:
    sets = yaml.safe_load((ROOT / "configs" / "digits_affinity_sets.yaml").read_text())["sets"]
    common = [f"epochs={epochs}", "device=cpu", f"eps={EPS}"]
    lires = ["architecture=liresnet_digits", f"eps={2 * EPS}", f"eps_min={0.1 * EPS}", f"eps_ramp_epochs={epochs // 2}", *RECIPE]
    return [
        ("digits_cnn TRADES standard", [*common, f"eps_ramp_epochs={max(1, epochs // 4)}", f"out_dir={out / 'cnn_standard'}"]),
        ("LiResNet EMMA standard", [*common, *lires, f"out_dir={out / 'liresnet_standard'}"]),
        ("LiResNet EMMA RT2", [*common, *lires, "guarantee=rtk:2", f"out_dir={out / 'liresnet_rt2'}"]),
        ("LiResNet EMMA affinity", [*common, *lires, "guarantee=affinity", f"sets={sets}", f"out_dir={out / 'liresnet_affinity'}"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of every run (10: the four runs trained in 32 min on the 2-core machine at load 12-24)")
    parser.add_argument("--out", type=Path, default=Path("runs/sota_digits"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a loaded machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("digits")
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.tensor([int(data.test[i][1]) for i in range(len(data.test))])
    rows = []
    for label, overrides in runs(args.epochs, args.out):
        config = load_config(ROOT / "configs" / "digits_standard.yaml", overrides)
        start = time.perf_counter()
        result = train(config, resume=False, progress=False)
        seconds = time.perf_counter() - start
        model = result.model.eval()
        standard = rp.certify(model, x, EPS, guarantee="standard")
        own = standard if config.guarantee == "standard" else rp.certify(model, x, EPS, guarantee=config.guarantee,
                                                                           sets=config.sets)
        rows.append((label, sum(p.numel() for p in model.parameters()), float((standard.pred == y).float().mean()),
                     standard.vra(y), own.vra(y), 1.0 - float(own.certified.float().mean()), seconds))
    print(f"digits (599 test images), {args.epochs} epochs, GloRo certification at eps = {EPS} (L2, sound bound)")
    print(f"{'run':30s} {'params':>7s} {'clean':>6s} {'std VRA':>8s} {'own VRA':>8s} {'reject':>7s} {'train s':>8s}")
    for label, params, clean, vra, own_vra, reject, seconds in rows:
        print(f"{label:30s} {params:7d} {clean:6.3f} {vra:8.3f} {own_vra:8.3f} {reject:7.3f} {seconds:8.1f}")


if __name__ == "__main__":
    main()

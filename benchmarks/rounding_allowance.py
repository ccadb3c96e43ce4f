"""Size of the floating-point allowance that certificates subtract (docs/soundness.md, "Floating point").

Prints, for a random and a briefly trained seeds' CIFAR net (``cifar_cnn``, 10 classes):

* GloRo: the mean per-point forward-error allowance ``forward_error(model, x, eps)`` (logits) at
  ``eps = 36/255`` (L2), beside the mean top-1 logit gap;
* bound propagation: the mean allowance of the top-1 margin (``ErrorModel.margin_allowance``) at
  L-inf ``eps = 2/255`` (IBP magnitudes), beside the IBP margin bound;

and, with ``--demo DIR`` (the output folder of ``relaxplug demo``), the GloRo VRA and mean allowance
of the three digits nets at their training radius 0.3.

Usage: python benchmarks/rounding_allowance.py [--demo out/demo] [--steps 150]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from relaxplug.certifiers import get_certifier
from relaxplug.models.architectures import build_model


def briefly_trained(steps: int) -> torch.nn.Module:
    """``cifar_cnn`` after ``steps`` Adam steps of cross-entropy on labels of a random teacher."""
    torch.manual_seed(1)
    model = build_model("cifar_cnn", (3, 32, 32), 10)
    teacher = torch.randn(3 * 32 * 32, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        x = torch.rand(64, 3, 32, 32)
        y = (x.flatten(1) - 0.5).matmul(teacher).argmax(1)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def gloro_row(name: str, model: torch.nn.Module, x: torch.Tensor, eps: float) -> None:
    with torch.no_grad():
        logits = model(x)
    top = logits.topk(2, dim=1).values
    allowance = get_certifier("gloro").forward_error(model, x, eps).flatten()
    print(f"gloro  {name:10s} eps={eps:.4f}  allowance mean {allowance.mean():.4g}  max {allowance.max():.4g}"
          f"  (top-1 gap mean {(top[:, 0] - top[:, 1]).mean():.4g})")


def lirpa_row(name: str, model: torch.nn.Module, x: torch.Tensor, eps: float) -> None:
    """Top-1 margin allowance with IBP magnitudes, and with CROWN's intermediate bounds where tighter
    (what the ``crown`` certifier uses)."""
    import relaxplug.lirpa as glue
    from relaxplug.lirpa import api
    from relaxplug.lirpa.tolerance import error_model

    entry = glue.bounded_module(model, x, "patches", float("inf"))
    wide = entry.wide() if hasattr(entry, "wide") else entry.bounded
    xb = x.double() if wide is not entry.bounded else x
    new_api = "forward_dtype" in error_model.__code__.co_varnames
    with torch.no_grad():
        order = model(x).argsort(1, descending=True)
    errors = error_model(wide, xb, eps, float("inf"), forward_dtype=x.dtype) if new_api else error_model(wide, xb, eps)
    top = errors.margin_allowance(order, 1)[:, 0, 1:]  # (B, n - 1): top-1 against every other class
    line = f"lirpa  {name:10s} eps={eps:.4f}  top-1 margin allowance, IBP magnitudes: mean {top.mean():.4g}"
    if new_api:
        c = torch.zeros(len(x), order.shape[1] - 1, order.shape[1], dtype=xb.dtype)
        c.scatter_(2, order[:, :1, None].expand(-1, order.shape[1] - 1, 1), 1.0)
        c.scatter_(2, order[:, 1:, None], -1.0)
        with torch.no_grad():
            api.compute_bounds(wide, (api.bounded_tensor(xb, eps, float("inf")),), C=c, method="CROWN", bound_upper=False)
        final = wide.final_node()
        known = {n.name: (n.lower, n.upper) for n in wide._modules.values()
                 if n is not final and isinstance(getattr(n, "lower", None), torch.Tensor)
                 and isinstance(getattr(n, "upper", None), torch.Tensor)}
        crown = error_model(wide, xb, eps, float("inf"), forward_dtype=x.dtype, known=known).margin_allowance(order, 1)
        line += f";  CROWN magnitudes: mean {crown[:, 0, 1:].mean():.4g}"
    print(line + f"  (per-logit error mean {errors.logit_error.mean():.4g})")


def demo_rows(out: Path) -> None:
    from relaxplug.data import load_dataset
    from relaxplug.evaluation.dataset import certify_dataset
    from relaxplug.evaluation.metrics import summarize
    from relaxplug.models.checkpoint import load_checkpoint
    from relaxplug.demo import DIGITS_AFFINITY_SETS

    digits = load_dataset("digits")
    for name, guarantee, sets in (("digits_standard", "standard", None), ("digits_rtk2", "rtk:2", None),
                                  ("digits_affinity", "affinity", DIGITS_AFFINITY_SETS)):
        paths = sorted((out / name).glob("*.pt"))
        if not paths:
            print(f"demo   {name}: no checkpoint in {out / name}")
            continue
        model = load_checkpoint(paths[-1]).model.eval()
        cert, logits, labels = certify_dataset(model, digits.test, 0.3, 2, "gloro", guarantee, progress=False, sets=sets)
        record = summarize(cert, logits, labels, topk=(2,))
        x = torch.stack([digits.test[i][0] for i in range(len(digits.test))])
        allowance = get_certifier("gloro").forward_error(model, x, 0.3).flatten()
        print(f"demo   {name:16s} VRA {record['vra']:.3f}  allowance mean {allowance.mean():.4g}  max {allowance.max():.4g}"
              f"  ({paths[-1].name})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=None, help="output folder of `relaxplug demo`")
    parser.add_argument("--steps", type=int, default=150, help="training steps of the 'trained' net")
    parser.add_argument("--no-lirpa", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    nets = {"random": build_model("cifar_cnn", (3, 32, 32), 10).eval(), "trained": briefly_trained(args.steps)}
    for name, model in nets.items():
        gloro_row(name, model, x, 36 / 255)
    if not args.no_lirpa:
        for name, model in nets.items():
            lirpa_row(name, model, x[:2], 2 / 255)
    if args.demo is not None:
        demo_rows(args.demo)


if __name__ == "__main__":
    main()

"""Certify a CROWN-IBP / auto_LiRPA model: relaxed guarantees on a network trained elsewhere.

Loads a checkpoint in the projects' formats (CROWN-IBP's ``{"state_dict": [...], "epoch": ...}``,
auto_LiRPA's ``{"state_dict": ..., "epoch": ...}`` or a bare state dict) into the architecture
named by ``--arch`` (``relaxplug list`` shows them; width and layer sizes are read from the
weights), then certifies test points with IBP, CROWN-IBP and CROWN under the standard guarantee,
RTK(2) and an affinity guarantee, in the L-inf ball the projects train for, and attacks every
certificate with PGD (a sound certificate is never broken).

Without ``--checkpoint`` the script first trains the architecture for a few epochs on the
embedded 8x8 digits with interval bound propagation (the CROWN-IBP recipe at its IBP end) and
saves it in CROWN-IBP's format, so it runs anywhere::

    python examples/certify_lirpa_model.py --arch crown-ibp/cnn_4layer --checkpoint cnn_4layer_best.pth \\
        --data cifar10 --eps 0.00784          # a CROWN-IBP CIFAR model (2/255), CIFAR-10 files under --data-root
    python examples/certify_lirpa_model.py    # trains crown-ibp/cnn_2layer on digits, then certifies it
    python examples/certify_lirpa_model.py --fast --out /tmp/lirpa   # seconds (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="crown-ibp/cnn_2layer", help="CROWN-IBP / auto_LiRPA architecture")
    parser.add_argument("--checkpoint", default=None, help="the project's .pth (default: train one on digits)")
    parser.add_argument("--data", default="digits", help="data set name or FILE.npz")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--normalize", default="auto", choices=("auto", "none", "cifar10"))
    parser.add_argument("--eps", type=float, default=0.05, help="L-inf radius in pixel space")
    parser.add_argument("--affinity", default="0,6;1,7;3,5,8", help="affinity sets (indices or FILE.yaml)")
    parser.add_argument("--certifiers", default="ibp,crown-ibp,crown")
    parser.add_argument("--limit", type=int, default=64, help="test points to certify")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs when no checkpoint is given")
    parser.add_argument("--fast", action="store_true", help="2 epochs on 256 images, 16 points, few attack steps (tests)")
    parser.add_argument("--out", default="out/certify_lirpa_model")
    return parser


def train_ibp(arch: str, splits, eps: float, epochs: int, path: Path, seed: int = 0, limit: int | None = None) -> Path:
    """Train ``arch`` on ``splits.train`` with a mix of clean and IBP-robust cross-entropy (eps ramped
    up over the first half), and save it as CROWN-IBP does: ``{"state_dict": [state], "epoch": t}``."""
    from relaxplug._compat import import_auto_lirpa
    from relaxplug.zoo import build_lirpa_model

    lirpa = import_auto_lirpa()
    torch.manual_seed(seed)
    net = build_lirpa_model(arch, splits.input_shape, splits.n_classes)
    count = len(splits.train) if limit is None else min(limit, len(splits.train))
    x_all = torch.stack([splits.train[i][0] for i in range(count)])
    y_all = torch.tensor([splits.train[i][1] for i in range(count)])
    bounded = lirpa.BoundedModule(net, (x_all[:1],))
    optimizer = torch.optim.Adam(bounded.parameters(), lr=2e-3)
    eye = torch.eye(splits.n_classes)
    for epoch in range(epochs):
        ramp = min(1.0, (epoch + 1) / max(1, epochs // 2))
        for batch in torch.randperm(len(y_all)).split(64):
            x, y = x_all[batch], y_all[batch]
            c = eye[y].unsqueeze(1) - eye.unsqueeze(0)  # (B, n, n): f_y - f_i
            ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps * ramp)
            logits = bounded(lirpa.BoundedTensor(x, ptb))
            lower, _ = bounded.compute_bounds(C=c, method="IBP")
            robust = F.cross_entropy(-lower, y)  # the worst-case logits' cross-entropy (lower[y] = 0)
            loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * robust
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save({"state_dict": [state], "epoch": epochs}, path)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    import relaxplug as rp
    from relaxplug.evaluation.metrics import summarize
    from relaxplug.evaluation.report import format_table
    from relaxplug.attacks import AttackSettings, check_certificates
    from relaxplug.evaluation.sources import load_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.fast:
        args.epochs, args.limit = 2, 16
    splits = load_data(args.data, args.data_root)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = train_ibp(args.arch, splits, args.eps, args.epochs, out / "model.pth", limit=256 if args.fast else None)
        print(f"trained {args.arch} on {splits.name} for {args.epochs} epochs with IBP: {checkpoint}")
    normalize = ("cifar10" if splits.name == "cifar10" else None) if args.normalize == "auto" else args.normalize
    if normalize == "none":
        normalize = None
    zoo = rp.zoo.load_lirpa_model(args.arch, checkpoint, splits.input_shape, normalize=normalize)
    print(f"loaded {zoo.name} {zoo.details['params']} from {zoo.path} (normalization: {zoo.details['normalization']})")

    n = min(args.limit, len(splits.test))
    x = torch.stack([splits.test[i][0] for i in range(n)])
    y = torch.tensor([splits.test[i][1] for i in range(n)])
    with torch.no_grad():
        logits = zoo.model(x)
    records = []
    for certifier in [c.strip() for c in args.certifiers.split(",") if c.strip()]:
        for guarantee in ("standard", "rtk:2", f"affinity:{args.affinity}"):
            cert = rp.certify(zoo.model, x, args.eps, "inf", certifier, guarantee, radius=False)
            record = summarize(cert, logits, y)
            record["guarantee"] = guarantee
            broken = check_certificates(zoo.model, x, cert, settings=AttackSettings(steps=5 if args.fast else 30, restarts=1))
            record["broken"] = len(broken.points)
            records.append(record)
    columns = ("certifier", "guarantee", "eps", "points", "clean_accuracy", "vra", "rejection_rate", "certified_set_sizes", "broken")
    print(format_table(records, columns))
    result = {"model": zoo.metadata, "records": records}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out / 'results.json'}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

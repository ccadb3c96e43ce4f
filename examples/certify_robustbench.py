"""Certify a RobustBench model under a relaxed guarantee (CIFAR-10 vehicles vs animals).

Loads a RobustBench zoo entry with ``robustbench.utils.load_model`` from a local checkpoint
(``MODEL_DIR/<dataset>/<threat_model>/<name>.pt``; nothing is downloaded), keeps its input
normalization inside the model, and certifies the first test points at the leaderboard's radius
under the standard guarantee and under ``affinity:cifar10`` (a certified prediction may be any
top-k set inside {airplane, automobile, ship, truck} or inside the six animals), side by side.

Run from the repository root, with the checkpoint where RobustBench puts it::

    python examples/certify_robustbench.py --name Rice2020Overfitting --threat-model L2 \\
        --model-dir models --data-root ~/.relaxplug/data --certifier crown-ibp
    python examples/certify_robustbench.py --fast --out /tmp/rb   # seconds: random weights, random images

``--random-weights`` writes a random-weight checkpoint in ``load_model``'s format first (to try
the script without the real weights; its certificates mean nothing); ``--data FILE.npz`` certifies
your own test images (``x_test`` uint8 NHWC or float NCHW in [0, 1], ``y_test``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="Rice2020Overfitting", help="RobustBench model name")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--threat-model", default="L2")
    parser.add_argument("--model-dir", default="models", help="RobustBench's model folder")
    parser.add_argument("--data", default=None, help="data set name or FILE.npz (default: --dataset)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--certifier", default="crown-ibp", help="gloro, ibp, crown-ibp or crown")
    parser.add_argument("--guarantee", default="affinity:cifar10", help="the relaxed guarantee")
    parser.add_argument("--eps", type=float, default=None, help="radius (default: the leaderboard's)")
    parser.add_argument("--limit", type=int, default=16, help="test points to certify")
    parser.add_argument("--random-weights", action="store_true", help="write a random-weight checkpoint if none exists")
    parser.add_argument("--fast", action="store_true", help="random weights, 4 random images, IBP (tests)")
    parser.add_argument("--out", default="out/certify_robustbench")
    return parser


def write_random_checkpoint(name: str, dataset: str, threat_model: str, model_dir: Path) -> Path:
    """A random-weight checkpoint of ``name``'s architecture where ``load_model`` reads it,
    as ``{"state_dict": ...}`` with DataParallel's ``module.`` prefixes (a layout it accepts)."""
    from relaxplug._compat import import_robustbench
    from relaxplug.zoo import robustbench_paths

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    path = robustbench_paths(name, dataset, threat_model, model_dir)[0]
    if not path.exists():
        net = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)][name]["model"]()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    import relaxplug as rp
    from relaxplug.evaluation.metrics import summarize
    from relaxplug.evaluation.report import format_table
    from relaxplug.evaluation.sources import load_data

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.fast:
        args.name, args.dataset, args.threat_model = "Sehwag2021Proxy_R18", "cifar10", "L2"
        args.model_dir, args.certifier, args.limit = str(out / "models"), "ibp", 4
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4)
        args.data = str(out / "random_images.npz")
        np.savez(args.data, x_train=images, y_train=labels, x_test=images, y_test=labels)
    if args.fast or args.random_weights:
        print(f"random weights: {write_random_checkpoint(args.name, args.dataset, args.threat_model, Path(args.model_dir))}")

    zoo = rp.zoo.load_robustbench(args.name, args.dataset, args.threat_model, args.model_dir)
    eps = args.eps if args.eps is not None else zoo.eps
    splits = load_data(args.data or args.dataset, args.data_root)
    n = min(args.limit, len(splits.test))
    x = torch.stack([splits.test[i][0] for i in range(n)])
    y = torch.tensor([splits.test[i][1] for i in range(n)])
    print(f"{zoo.name} ({zoo.details['architecture_class']}, inputs in [0, 1]), {n} points of "
          f"{args.data or args.dataset}, eps={eps:g} in L{'inf' if zoo.norm == float('inf') else 2}")

    records = []
    with torch.no_grad():
        logits = zoo.model(x)
    for guarantee in ("standard", args.guarantee):
        cert = rp.certify(zoo.model, x, eps, zoo.norm, args.certifier, guarantee, radius=False)
        record = summarize(cert, logits, y)
        record["guarantee"] = guarantee
        records.append(record)
    columns = ("guarantee", "certifier", "eps", "points", "clean_accuracy", "vra", "rejection_rate", "certified_set_sizes")
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

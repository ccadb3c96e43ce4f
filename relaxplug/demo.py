"""``relaxplug demo``: the seeds' headline effect on the embedded default data.

Trains GloRo nets on scikit-learn's 8x8 digits for the standard, RTK and affinity guarantees,
certifies each over a range of radii, prints one comparison table, and writes
``results.json``, ``vra_vs_eps.png`` and the synthetic 2-D decision-region plot (standard vs RT2,
as in the seeds' boundary figure).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from relaxplug.training.config import TrainConfig
from relaxplug.training.methods import GloRoSection
from relaxplug.evaluation.dataset import certify_dataset
from relaxplug.evaluation.metrics import summarize
from relaxplug.evaluation.report import format_table, write_json
from relaxplug.training.trainer import train

__all__ = ["run_demo", "demo_configs", "DEMO_EPS_GRID"]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEMO_EPS_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
TABLE_COLUMNS = ("guarantee", "certifier", "eps", "clean_accuracy", "top2_accuracy", "vra", "rejection_rate", "certified_set_sizes", "seconds")

# the pairs a standard GloRo net (eps 0.3) most often fails to separate on the training split
# (configs/digits_affinity_sets.yaml)
DIGITS_AFFINITY_SETS = ((1, 8), (3, 8, 9), (5, 9))


def demo_configs(out_dir: Path, epochs: int = 120) -> list[TrainConfig]:
    """The three digits runs (mirrored by ``configs/digits_*.yaml``)."""
    base = TrainConfig(
        dataset="digits", architecture="digits_cnn", eps=0.3, epochs=epochs, batch_size=64,
        lr="1e-3 -> 1e-5 after half", eps_ramp_epochs=max(1, epochs // 4), seed=0, device="auto",
        method_options=GloRoSection(loss="trades", trades_lambda="0.01 -> 1.2 log half", power_iterations=2),
    )
    return [
        dataclasses.replace(base, name="digits_standard", guarantee="standard", out_dir=str(out_dir / "digits_standard")),
        dataclasses.replace(base, name="digits_rtk2", guarantee="rtk:2", out_dir=str(out_dir / "digits_rtk2")),
        dataclasses.replace(
            base, name="digits_affinity", guarantee="affinity", sets=DIGITS_AFFINITY_SETS,
            out_dir=str(out_dir / "digits_affinity"),
        ),
    ]


def synthetic_configs(out_dir: Path, epochs: int = 150) -> list[TrainConfig]:
    base = TrainConfig(
        dataset="synthetic2d", architecture="mlp", eps=0.15, epochs=epochs, batch_size=128,
        lr="1e-3 -> 1e-5 after half", eps_ramp_epochs=max(1, epochs // 4), seed=0, device="auto",
        method_options=GloRoSection(loss="ce"),
    )
    return [
        dataclasses.replace(base, name="synthetic_standard", guarantee="standard", out_dir=str(out_dir / "synthetic_standard")),
        dataclasses.replace(base, name="synthetic_rt2", guarantee="rtk:2", out_dir=str(out_dir / "synthetic_rt2")),
    ]


def _plot_vra(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in dict.fromkeys(r["guarantee"] for r in records):
        rows = [r for r in records if r["guarantee"] == name]
        ax.plot([r["eps"] for r in rows], [r["vra"] for r in rows], marker="o", label=name)
    ax.set_xlabel("eps (L2)")
    ax.set_ylabel("VRA")
    ax.set_title("digits: VRA vs radius (GloRo certification)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_regions(models: Sequence[tuple[str, torch.nn.Module, float]], data, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from relaxplug.certifiers.certify import certify

    xs = torch.stack([data.test[i][0] for i in range(len(data.test))])
    ys = torch.tensor([int(data.test[i][1]) for i in range(len(data.test))])
    lo, hi = xs.min(0).values - 0.3, xs.max(0).values + 0.3
    steps = 220
    gx, gy = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), steps), torch.linspace(float(lo[1]), float(hi[1]), steps), indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    colors = np.array(plt.get_cmap("tab10").colors)[: data.n_classes]
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.6))
    for ax, (title, model, eps) in zip(np.atleast_1d(axes), models):
        device = next(model.parameters()).device
        cert = certify(model, grid.to(device), eps=eps, certifier="gloro", guarantee=title, radius=False).to("cpu")
        image = np.ones((grid.shape[0], 3))
        pred = cert.pred.numpy()
        k = cert.k.numpy()
        image[k == 1] = colors[pred[k == 1]]
        if (k >= 2).any():
            members = cert.classes.numpy()[k >= 2].astype(float)
            blend = members @ colors / members.sum(1, keepdims=True)
            image[k >= 2] = 0.55 * blend + 0.45
        ax.imshow(image.reshape(steps, steps, 3), origin="lower", extent=(float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])), aspect="auto")
        ax.scatter(xs[:, 0], xs[:, 1], c=colors[ys.numpy()], s=5, edgecolors="k", linewidths=0.2)
        rejected = float((k == 0).mean())
        ax.set_title(f"{title} (eps={eps}): white = rejected ({rejected:.0%})\npale = certified top-2 set")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_demo(out: str | Path = "out/demo", epochs: int = 120, synthetic_epochs: int = 150, progress: bool = True, eps_grid: Sequence[float] = DEMO_EPS_GRID) -> list[dict[str, Any]]:
    """Train, certify and plot (see module docstring); returns the records of ``results.json``."""
    from relaxplug.data import load_dataset

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    digits = load_dataset("digits")
    records: list[dict[str, Any]] = []
    headline: list[dict[str, Any]] = []
    for config in demo_configs(out_dir, epochs):
        print(f"training {config.name} ({config.guarantee}, eps={config.eps}, {config.epochs} epochs)", flush=True)
        result = train(config, resume=False, progress=progress)
        guarantee = config.guarantee
        for eps in eps_grid:
            cert, logits, labels = certify_dataset(
                result.model, digits.test, eps, 2, "gloro", guarantee, device=next(result.model.parameters()).device,
                progress=False, sets=config.sets,
            )
            record = summarize(cert, logits, labels, topk=(2,))
            record["guarantee"] = config.guarantee
            record["trained_eps"] = config.eps
            records.append(record)
            if eps == config.eps:
                headline.append(record)
    write_json(out_dir / "results.json", records)
    _plot_vra(records, out_dir / "vra_vs_eps.png")

    synthetic = load_dataset("synthetic2d")
    region_models = []
    for config in synthetic_configs(out_dir, synthetic_epochs):
        print(f"training {config.name} ({config.guarantee}, eps={config.eps})", flush=True)
        result = train(config, resume=False, progress=progress)
        region_models.append((config.guarantee, result.model, config.eps))
    _plot_regions(region_models, synthetic, out_dir / "decision_regions.png")

    print()
    print(f"digits test set, GloRo certification at the training radius (L2, eps={headline[0]['eps']}):")
    print(format_table(headline, TABLE_COLUMNS))
    print()
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'vra_vs_eps.png'}, {out_dir / 'decision_regions.png'}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return records

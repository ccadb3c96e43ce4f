"""How tight are the provable per-layer Lipschitz bounds, and what do they cost?

For every weighted body layer of the seeds' CIFAR (``cifar_cnn``, 3x32x32, 100 classes) and
Tiny-ImageNet (``tiny_imagenet_cnn``, 3x64x64, 200 classes) architectures (random init, or a
checkpoint with ``--checkpoint``): the sound bound certification uses
(the rules of ``relaxplug.lipschitz.torch_layers``: exact SVD for dense layers, FFT bound for convolutions, space-to-depth
for strided ones), the time to compute it, and its ratio to the best lower estimate of the true
norm, ``max(power iteration, Lanczos)``:

* power iteration: ``spectral.converged_power_iteration`` (float64, ``--power-iters`` at most);
* Lanczos: ARPACK's ``eigsh`` on ``A^T A`` (float64), the same kind of estimate (a Ritz value
  never exceeds the top eigenvalue, so it is a lower bound too) that converges in far fewer
  products when the top singular values cluster, as they do for convolutions.

Both are lower bounds, so ``sound / max(...)`` over-states the looseness, never under-states
it. Target: <= 1.01 for dense layers and stride-1 convolutions (stride-2 layers are reported
without a target).

Usage: python benchmarks/lipschitz_bounds.py [--arch cifar_cnn tiny_imagenet_cnn]
       [--checkpoint model.pt] [--power-iters 300] [--no-lanczos] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from relaxplug.lipschitz import spectral
from relaxplug.lipschitz.protocol import lipschitz_rule
from relaxplug.models.architectures import build_model
from relaxplug.evaluation.report import format_table, write_json

ARCHITECTURES = {"cifar_cnn": ((3, 32, 32), 100), "tiny_imagenet_cnn": ((3, 64, 64), 200)}
TARGET = 1.01
COLUMNS = ("model", "layer", "kind", "input", "sound", "power", "lanczos", "ratio", "sound_s", "estimate_s", "target", "meets")


def _operators(layer: nn.Module, shape: tuple[int, ...]):
    """``(A, A^T, input shape with batch)`` of a layer's linear part, float64."""
    weight = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        return (lambda u: u @ weight.T), (lambda v: v @ weight), (1, weight.shape[1])
    args = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
    forward, adjoint = spectral.conv_operator_pair(weight, tuple(shape[1:]), **args)
    return forward, adjoint, (1, *shape)


def _lanczos(forward, adjoint, shape: tuple[int, ...], tol: float = 1e-9) -> float:
    """``sqrt`` of the top Ritz value of ``A^T A`` (ARPACK): a lower bound of ``||A||_2``."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    size = math.prod(shape)

    def matvec(v: np.ndarray) -> np.ndarray:
        u = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).reshape(shape))
        with torch.no_grad():
            return adjoint(forward(u)).reshape(-1).numpy()

    op = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    start = np.random.default_rng(0).standard_normal(size)
    value = eigsh(op, k=1, which="LA", tol=tol, ncv=min(size, 48), v0=start, return_eigenvectors=False)[0]
    return math.sqrt(max(float(value), 0.0))


def _input_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Per-example input shape of every submodule (one forward pass on zeros)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: shapes.setdefault(name, tuple(args[0].shape[1:])))
               for name, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _kind(layer: nn.Module) -> str:
    if isinstance(layer, nn.Linear):
        return "dense"
    stride = layer.stride if isinstance(layer.stride, tuple) else (layer.stride, layer.stride)
    return f"conv{layer.kernel_size[0]}x{layer.kernel_size[1]} stride {stride[0]}"


def layer_table(label: str, model: nn.Module, input_shape: tuple[int, ...], power_iters: int, lanczos: bool) -> list[dict[str, Any]]:
    """One record per weighted body layer (the head enters GloRo through ``||w_j - w_i||``)."""
    shapes = _input_shapes(model, input_shape)
    head = list(model.modules())[-1]
    rows = []
    for name, layer in model.named_modules():
        if type(layer) not in (nn.Linear, nn.Conv2d) or layer is head:
            continue
        shape = shapes[name]
        start = time.perf_counter()
        sound = float(lipschitz_rule(layer).bound(layer, shape))
        sound_s = time.perf_counter() - start
        forward, adjoint, full = _operators(layer, shape)
        start = time.perf_counter()
        power = spectral.converged_power_iteration(forward, adjoint, full, tol=1e-9, max_iter=power_iters)
        lanczos_value = _lanczos(forward, adjoint, full) if lanczos else float("nan")
        estimate_s = time.perf_counter() - start
        best = max(power, lanczos_value) if lanczos else power
        ratio = sound / best
        kind = _kind(layer)
        has_target = kind == "dense" or kind.endswith("stride 1")
        rows.append({
            "model": label, "layer": name, "kind": kind, "input": "x".join(map(str, shape)),
            "sound": sound, "power": power, "lanczos": lanczos_value, "ratio": f"{ratio:.5f}",
            "ratio_value": ratio, "sound_s": sound_s, "estimate_s": estimate_s,
            "target": f"<= {TARGET}" if has_target else "-",
            "meets": ("yes" if ratio <= TARGET else "NO") if has_target else "-",
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--checkpoint", default=None, help="also measure this relaxplug checkpoint's layers")
    parser.add_argument("--power-iters", type=int, default=300, help="cap on power iterations per layer")
    parser.add_argument("--no-lanczos", action="store_true", help="power iteration only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the records to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    models: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    for arch in args.arch:
        shape, n_classes = ARCHITECTURES[arch]
        torch.manual_seed(args.seed)
        models.append((f"{arch} (random)", build_model(arch, shape, n_classes).eval(), shape))
    if args.checkpoint:
        from relaxplug.models.checkpoint import load_checkpoint

        loaded = load_checkpoint(args.checkpoint)
        shape = tuple(loaded.metadata["input_shape"])
        models.append((f"{loaded.metadata['architecture']} ({args.checkpoint})", loaded.model, shape))

    rows = []
    for label, model, shape in models:
        table = layer_table(label, model, shape, args.power_iters, not args.no_lanczos)
        rows += table
        print(format_table(table, COLUMNS), flush=True)
        product_sound = math.prod(r["sound"] for r in table)
        product_lower = math.prod(max(r["power"], r["lanczos"]) if not math.isnan(r["lanczos"]) else r["power"] for r in table)
        print(f"{label}: body bound {product_sound:.4f} (product of lower estimates {product_lower:.4f}, "
              f"ratio {product_sound / product_lower:.4f}); sound bounds computed in "
              f"{sum(r['sound_s'] for r in table):.2f} s\n", flush=True)
    missed = [r for r in rows if r["meets"] == "NO"]
    print(f"{len(rows)} layers; {len(missed)} miss the {TARGET} target" + (": " + ", ".join(f"{r['model']} layer {r['layer']}" for r in missed) if missed else ""))
    if args.json:
        write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

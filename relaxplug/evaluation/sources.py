"""Zoo models on relaxplug's data sets: what ``relaxplug eval|compare --robustbench/--lirpa-model`` load."""

from __future__ import annotations

import math
import os
from typing import Any

from relaxplug.adapters import Guarantee, resolve_guarantee
from relaxplug.certifiers.certify import resolve_eps

from relaxplug.zoo.base import ZooModel
from relaxplug.zoo.lirpa_models import load_lirpa_model
from relaxplug.zoo.robustbench_models import load_robustbench

__all__ = ["load_data", "load_zoo_evaluation", "norm_name"]


def norm_name(norm: float | None) -> str | None:
    """``2.0 -> "2"``, ``inf -> "inf"``, ``None -> None`` (the CLI's ``--norm`` spelling)."""
    if norm is None:
        return None
    return "inf" if norm == math.inf else f"{norm:g}"


def load_data(data: str, data_root: str | os.PathLike | None = None):
    """A data set by name (:func:`relaxplug.data.list_datasets`), or a local ``.npz`` file
    (``x_train, y_train, x_test, y_test``) given by its path."""
    from relaxplug.data import load_dataset

    text = str(data)
    if text.lower().endswith(".npz") or os.sep in text:
        return load_dataset("npz", data_root, path=text)
    return load_dataset(text, data_root)


def load_zoo_evaluation(
    *,
    robustbench: str | None = None,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike = "./models",
    lirpa_model: str | None = None,
    lirpa_checkpoint: str | os.PathLike | None = None,
    lirpa_normalize: str = "auto",
    guarantee: str | None = None,
    eps: float | None = None,
    data: str | None = None,
    data_root: str | os.PathLike | None = None,
    split: str = "test",
    device: str = "auto",
) -> tuple[ZooModel, Guarantee, str, float, Any, Any]:
    """Load a RobustBench (``robustbench=NAME``) or CROWN-IBP / auto_LiRPA (``lirpa_model=ARCH``,
    ``lirpa_checkpoint=FILE``) model with the data set to certify it on.

    ``data`` defaults to the RobustBench ``dataset``; for a CROWN-IBP / auto_LiRPA model it is
    required (its input size comes from the data). ``lirpa_normalize="auto"`` applies the
    projects' CIFAR-10 normalization on ``cifar10`` and none otherwise. ``eps`` defaults to the
    RobustBench leaderboard's radius. A bare ``affinity``/``superclass`` guarantee takes the data
    set's first built-in grouping.

    Returns:
        ``(zoo model, guarantee, guarantee string, eps, dataset split, device)``, like
        :func:`relaxplug.attacks.robustness.load_evaluation`.
    """
    from relaxplug.data import GROUPINGS, fit_class_count
    from relaxplug.runtime import resolve_device

    if (robustbench is None) == (lirpa_model is None):
        raise ValueError("give exactly one model source: robustbench=NAME or lirpa_model=ARCH")
    device = resolve_device(device)
    if robustbench is not None:
        zoo = load_robustbench(robustbench, dataset, threat_model, model_dir, device)
        data_name = data or zoo.dataset
        if data is None and data_name not in ("cifar10", "cifar100"):
            raise ValueError(f"relaxplug has no built-in {data_name!r} loader: pass --data FILE.npz with its test images")
        splits = load_data(data_name, data_root)
    else:
        if lirpa_checkpoint is None:
            raise ValueError("--lirpa-model needs --lirpa-checkpoint FILE (the project's .pth)")
        if data is None:
            raise ValueError("--lirpa-model needs --data (a data set name or FILE.npz): the input size comes from it")
        splits = load_data(data, data_root)
        data_name = data
        if lirpa_normalize == "auto":
            normalize = "cifar10" if splits.name == "cifar10" else None
        else:
            normalize = None if lirpa_normalize == "none" else lirpa_normalize
        zoo = load_lirpa_model(lirpa_model, lirpa_checkpoint, splits.input_shape, normalize, device)
        zoo.dataset = splits.name
    if tuple(splits.input_shape) != tuple(zoo.input_shape):
        raise ValueError(f"data set {data_name!r} has inputs of shape {tuple(splits.input_shape)}, the model "
                         f"takes {tuple(zoo.input_shape)}")
    splits = fit_class_count(splits, zoo.n_classes)
    spec = guarantee or "standard"
    sets = None
    if spec.strip().lower() in ("affinity", "superclass"):
        sets = next(iter(splits.groupings.values()), None) or GROUPINGS.get(str(zoo.dataset))
        if sets is None:
            raise ValueError(f"bare '{spec}' needs sets and {data_name!r} has no built-in grouping: "
                             f"give '{spec}:FILE.yaml' or '{spec}:0,1;2,3'")
    class_names = splits.class_names
    if splits.name == "npz" and zoo.class_names and class_names == tuple(str(i) for i in range(splits.n_classes)):
        class_names = zoo.class_names  # an .npz without class_names: the model's (RobustBench's CIFAR names)
    resolved = resolve_guarantee(spec, sets=sets, class_names=class_names)
    if len(resolved.radii(1.0)) > 1:
        eps = resolve_eps(resolved, eps)  # IGRP carries its radii; a given eps must be its outer one
    elif eps is None:
        if zoo.eps is None:
            raise ValueError("--eps is required (the model carries no standard radius)")
        eps = zoo.eps
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    return zoo, resolved, spec, float(eps), (splits.test if split == "test" else splits.train), device

"""Model sources: what ``relaxplug eval|compare|attack`` certify and attack.

One loader, :func:`load_model_source`, for a relaxplug checkpoint (``--checkpoint``), a
RobustBench entry (``--robustbench``) or a CROWN-IBP / auto_LiRPA net (``--lirpa-model``); each
returns a :class:`ModelSource`: the model with the data set, guarantee, radius and default norm
to evaluate it at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from relaxplug.adapters import Guarantee, resolve_guarantee
from relaxplug.adapters.groupings import GROUPINGS
from relaxplug.certifiers.certify import resolve_eps
from relaxplug.norms import Norm

from relaxplug.zoo.base import ZooModel
from relaxplug.zoo.lirpa_models import load_lirpa_model
from relaxplug.zoo.robustbench_models import load_robustbench

__all__ = ["ModelSource", "load_data", "load_evaluation", "load_model_source", "load_zoo_evaluation"]


class ModelSource(NamedTuple):
    """A model to evaluate and what to evaluate it on.

    ``loaded`` is the :class:`~relaxplug.models.checkpoint.LoadedCheckpoint` or
    :class:`~relaxplug.zoo.base.ZooModel`; ``spec`` the guarantee as given (a name);
    ``dataset`` the split to evaluate on. Unpacks as the six-tuple
    ``(loaded, guarantee, spec, eps, dataset, device)``.
    """

    loaded: Any
    guarantee: Guarantee
    spec: str
    eps: float
    dataset: Any
    device: torch.device

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def norm(self) -> Norm:
        """The norm the model was trained for (a checkpoint's, a RobustBench threat model's), else 2."""
        metadata = getattr(self.loaded, "metadata", None)
        value = metadata.get("norm") if metadata is not None else getattr(self.loaded, "norm", None)
        return Norm(value if value is not None else 2)

    def describe(self, norm: Norm | None = None) -> str:
        """One line naming the model (zoo models: source, name, file), its radius and norm."""
        norm = self.norm if norm is None else Norm(norm)
        if hasattr(self.loaded, "source"):
            return f"model: {self.loaded.source} {self.loaded.name} ({self.loaded.path}), eps={self.eps:g}, L{norm}"
        return f"model: checkpoint, eps={self.eps:g}, L{norm}"


#: options that only some model sources take (the rest take every source)
_SOURCE_OPTIONS = {
    "dataset": ("robustbench",),
    "threat_model": ("robustbench",),
    "model_dir": ("robustbench",),
    "lirpa_checkpoint": ("lirpa_model",),
    "lirpa_normalize": ("lirpa_model",),
}


def load_model_source(
    *,
    checkpoint: str | os.PathLike | None = None,
    robustbench: str | None = None,
    lirpa_model: str | None = None,
    **options: Any,
) -> ModelSource:
    """The one loader: exactly one of ``checkpoint``, ``robustbench`` or ``lirpa_model``;
    ``options`` as :func:`load_evaluation` (checkpoint) or :func:`load_zoo_evaluation` take."""
    given = [name for name, v in (("checkpoint", checkpoint), ("robustbench", robustbench), ("lirpa_model", lirpa_model))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one model source (checkpoint, robustbench or lirpa_model), got {given or 'none'}")
    options = {k: v for k, v in options.items() if v is not None}
    source = given[0]
    misplaced = sorted(k for k in options if source not in _SOURCE_OPTIONS.get(k, (source,)))
    if misplaced:
        flags = ", ".join("--" + k.replace("_", "-") for k in misplaced)
        owners = sorted({o for k in misplaced for o in _SOURCE_OPTIONS[k]})
        hint = "; a checkpoint is evaluated on its own data set (another one: --data)" if source == "checkpoint" else ""
        verb = "applies" if len(misplaced) == 1 else "apply"
        raise ValueError(f"{flags} {verb} to {' / '.join('--' + o.replace('_', '-') for o in owners)} only, "
                         f"not to --{source.replace('_', '-')}{hint}")
    if checkpoint is not None:
        return load_evaluation(checkpoint, **options)
    return load_zoo_evaluation(robustbench=robustbench, lirpa_model=lirpa_model, **options)


def load_data(data: str, data_root: str | os.PathLike | None = None):
    """A data set by name (:func:`relaxplug.data.list_datasets`), or a local ``.npz`` file
    (``x_train, y_train, x_test, y_test``) given by its path."""
    from relaxplug.data import load_dataset

    text = str(data)
    if text.lower().endswith(".npz") or os.sep in text:
        return load_dataset("npz", data_root, path=text)
    return load_dataset(text, data_root)


def load_evaluation(
    checkpoint: str | Path,
    guarantee: str | None = None,
    eps: float | None = None,
    *,
    data: str | None = None,
    data_root: str | None = None,
    split: str = "test",
    device: str | torch.device = "auto",
) -> ModelSource:
    """Load a checkpoint, its data set and guarantee (the checkpoint's defaults where ``None``).

    A bare ``affinity``/``superclass`` guarantee takes the checkpoint's ``sets``, else the data
    set's first built-in grouping. Returns a :class:`ModelSource`.
    """
    from relaxplug.models.checkpoint import load_checkpoint
    from relaxplug.data import fit_class_count, load_dataset
    from relaxplug.runtime import resolve_device

    device = resolve_device(device)
    loaded = load_checkpoint(checkpoint, device)
    meta = loaded.metadata
    config = meta.get("config") or {}
    name = data or meta["dataset"]
    options = config.get("dataset_options", {}) if name == meta["dataset"] else {}
    splits = fit_class_count(load_dataset(name, data_root or config.get("data_root"), **options), meta["n_classes"],
                             "the checkpoint")
    spec = guarantee or meta.get("guarantee") or "standard"
    sets = meta.get("sets")
    if spec.strip().lower() in ("affinity", "superclass") and not sets:
        if not splits.groupings:
            raise ValueError(f"'{spec}' needs sets: the checkpoint stores none and {name!r} has no built-in grouping")
        sets = next(iter(splits.groupings.values()))
    resolved = resolve_guarantee(spec, sets=sets, class_names=splits.class_names)
    if resolved.carries_radii:
        eps = resolve_eps(resolved, eps)  # IGRP carries its radii; a given eps must be its outer one
    else:
        eps = float(eps) if eps is not None else float(meta.get("eps", 0.0))
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    dataset = splits.test if split == "test" else splits.train
    return ModelSource(loaded, resolved, spec, eps, dataset, device)


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
) -> ModelSource:
    """Load a RobustBench (``robustbench=NAME``) or CROWN-IBP / auto_LiRPA (``lirpa_model=ARCH``,
    ``lirpa_checkpoint=FILE``) model with the data set to certify it on.

    ``data`` defaults to the RobustBench ``dataset``; for a CROWN-IBP / auto_LiRPA model it is
    required (its input size comes from the data). ``lirpa_normalize="auto"`` applies the
    projects' CIFAR-10 normalization on ``cifar10`` and none otherwise. ``eps`` defaults to the
    RobustBench leaderboard's radius. A bare ``affinity``/``superclass`` guarantee takes the data
    set's first built-in grouping.

    Returns:
        a :class:`ModelSource` holding the :class:`~relaxplug.zoo.base.ZooModel`.
    """
    from relaxplug.data import fit_class_count
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
    if resolved.carries_radii:
        eps = resolve_eps(resolved, eps)  # IGRP carries its radii; a given eps must be its outer one
    elif eps is None:
        if zoo.eps is None:
            raise ValueError("--eps is required (the model carries no standard radius)")
        eps = zoo.eps
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    return ModelSource(zoo, resolved, spec, float(eps), splits.test if split == "test" else splits.train, device)

"""RobustBench's model zoo (Croce et al. 2021) through ``robustbench.utils.load_model``, offline.

``load_model(name, model_dir, dataset, threat_model)`` reads
``model_dir/<dataset>/<threat_model>/<name>.pt`` (ensembles: ``<name>.pt_m0.pt``, ``_m1``, ...)
before it would try a download, builds the entry's architecture and loads the file's
``state_dict`` (or the file itself when it has no such key), stripping ``module.`` and ``model.``
prefixes. :func:`load_robustbench` checks the file is there first (nothing can be downloaded:
a missing file raises :class:`FileNotFoundError` naming the exact path), then calls that same
``load_model``.

RobustBench models take images in ``[0, 1]`` and carry their input normalization in their own
``forward`` (for instance ``(x - mu) / sigma`` with buffers), so certifying the returned model
measures ``eps`` in pixel space, the leaderboard's: ``0.5`` for CIFAR-10 L2, ``8/255`` for
CIFAR-10/100 Linf, ``4/255`` for ImageNet Linf (:data:`ROBUSTBENCH_EPS`).

robustbench 1.1.1 is imported through :func:`relaxplug._compat.import_robustbench` (its
``autoattack`` and ``pkg_resources`` imports need shims), only when a model is loaded.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path

import torch

from relaxplug._compat import import_robustbench

from relaxplug.zoo.base import ZooCheckpointError, ZooModel

__all__ = ["ROBUSTBENCH_EPS", "load_robustbench", "robustbench_paths", "list_robustbench_models"]

#: the leaderboards' radii: ``(dataset, threat model) -> (norm, eps)``
ROBUSTBENCH_EPS: dict[tuple[str, str], tuple[float, float]] = {
    ("cifar10", "L2"): (2.0, 0.5),
    ("cifar10", "Linf"): (math.inf, 8 / 255),
    ("cifar100", "Linf"): (math.inf, 8 / 255),
    ("imagenet", "Linf"): (math.inf, 4 / 255),
}

_INPUT_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "imagenet": (3, 224, 224)}


def _enums(dataset: str, threat_model: str):
    """``(robustbench.utils module, BenchmarkDataset, ThreatModel)``; bad names raise ``ValueError``."""
    utils = import_robustbench()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    try:
        dataset_ = BenchmarkDataset(dataset)
    except ValueError:
        raise ValueError(f"unknown RobustBench dataset {dataset!r}; known: "
                         f"{', '.join(d.value for d in BenchmarkDataset)}") from None
    try:
        threat_ = ThreatModel(threat_model)
    except ValueError:
        raise ValueError(f"unknown RobustBench threat model {threat_model!r}; known: "
                         f"{', '.join(t.value for t in ThreatModel)}") from None
    return utils, dataset_, threat_


def list_robustbench_models(dataset: str = "cifar10", threat_model: str = "Linf") -> list[str]:
    """Names of the zoo entries for ``dataset`` and ``threat_model`` (robustbench's own list)."""
    _, dataset_, threat_ = _enums(dataset, threat_model)
    from robustbench.model_zoo import model_dicts

    return list(model_dicts[dataset_].get(threat_, {}))


def _entry(name: str, dataset_, threat_) -> dict:
    from robustbench.model_zoo import model_dicts

    models = model_dicts[dataset_].get(threat_, {})
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"RobustBench has no model {name!r} for {dataset_.value} {threat_.value} "
                         f"({len(models)} entries){hint}")
    return models[name]


def robustbench_paths(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                      model_dir: str | os.PathLike = "./models") -> list[Path]:
    """The files ``load_model`` reads for ``name``: ``[model_dir/<dataset>/<threat>/<name>.pt]``, or
    ``<name>.pt_m<i>.pt`` for each member of an ensemble entry."""
    _, dataset_, threat_ = _enums(dataset, threat_model)
    entry = _entry(name, dataset_, threat_)
    # load_model looks the threat model up without the "_3d" suffix (one corruptions folder)
    folder = Path(model_dir) / dataset_.value / threat_.value.replace("_3d", "")
    path = folder / f"{name}.pt"
    ids = entry.get("gdrive_id")
    if isinstance(ids, list):
        return [Path(f"{path}_m{i}.pt") for i in range(len(ids))]
    return [path]


def load_robustbench(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                     model_dir: str | os.PathLike = "./models", device: str | torch.device = "cpu") -> ZooModel:
    """Load RobustBench model ``name`` from a local checkpoint with ``robustbench.utils.load_model``.

    Args:
        name: the zoo entry (``Rice2020Overfitting``, ``Standard``, ...).
        dataset: ``cifar10``, ``cifar100`` or ``imagenet``.
        threat_model: ``L2``, ``Linf``, ``corruptions``, ...
        model_dir: the folder holding ``<dataset>/<threat_model>/<name>.pt`` (RobustBench's layout).
    Returns:
        a :class:`~relaxplug.zoo.ZooModel` in eval mode, normalization inside, with the
        leaderboard's ``norm`` and ``eps`` (``None`` for the corruption threat models).
    Raises:
        FileNotFoundError: the checkpoint is absent (nothing is downloaded), naming the path.
        ZooCheckpointError: the file does not hold weights for that entry's architecture.
        ValueError: unknown dataset, threat model or name, or an entry whose weights only load
            from a hub (timm entries).
    """
    utils, dataset_, threat_ = _enums(dataset, threat_model)
    entry = _entry(name, dataset_, threat_)
    timm_name = f"{name.lower().replace('-', '_')}_{dataset_.value.lower()}_{threat_.value.lower()}"
    if utils.timm.is_model(timm_name):
        raise ValueError(f"RobustBench builds {name!r} with timm ({timm_name}), whose weights come from the "
                         "Hugging Face hub, which cannot be reached here; load such a model yourself and "
                         "pass it to relaxplug.certifiers.certify")
    if entry.get("gdrive_id") is None:
        raise ValueError(f"RobustBench lists no checkpoint for {name!r} ({dataset_.value}, {threat_.value})")
    paths = robustbench_paths(name, dataset_.value, threat_.value, model_dir)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        where = " and ".join(f"'{p}'" for p in missing)
        downloaded = "models/" + "/".join(paths[0].parts[-3:-1]) + "/" + (paths[0].name if len(paths) == 1 else f"{name}.pt_m*.pt")
        raise FileNotFoundError(
            f"RobustBench checkpoint for {name!r} ({dataset_.value}, {threat_.value}) not found: expected {where}. "
            "relaxplug never downloads: on a machine with network access, `python -c \"from robustbench.utils "
            f"import load_model; load_model('{name}', model_dir='models', dataset='{dataset_.value}', "
            f"threat_model='{threat_.value}')\"` writes {downloaded}; put that file at {where}"
        )
    try:
        model = utils.load_model(name, model_dir=str(model_dir), dataset=dataset_.value, threat_model=threat_.value)
    except (RuntimeError, KeyError) as error:  # load_state_dict's size / key mismatch; a dict without weights
        raise ZooCheckpointError(f"{paths[0]}: not a checkpoint of RobustBench's {name!r} "
                                 f"({type(error).__name__}: {str(error)[:600]})") from error
    model = model.to(device).eval()
    norm, eps = ROBUSTBENCH_EPS.get((dataset_.value, threat_.value), (None, None))
    return ZooModel(
        model=model,
        source="robustbench",
        name=name,
        input_shape=_INPUT_SHAPES[dataset_.value],
        n_classes=int(utils.DATASET_CLASSES[dataset_]),
        path=paths[0],
        dataset=dataset_.value,
        class_names=_class_names(dataset_.value),
        norm=norm,
        eps=eps,
        details={"threat_model": threat_.value, "architecture_class": type(model).__name__},
    )


def _class_names(dataset: str) -> tuple[str, ...] | None:
    from relaxplug.data import CIFAR10_CLASS_NAMES, CIFAR100_FINE_NAMES

    return {"cifar10": CIFAR10_CLASS_NAMES, "cifar100": CIFAR100_FINE_NAMES}.get(dataset)

"""Label groups from last-layer weights (IGRP, steps 1-2 of Wang et al., seed ``003``).

A naturally trained network's logit layer holds one weight row ``w_c`` per class; classes the
network finds similar have similar rows. Agglomerative clustering (SciPy) of the rows, with the
distance ``metric`` between rows and the ``linkage`` between clusters, is cut into ``n_groups``
groups. The groups are a partition of the classes, usable as ``affinity:``/``superclass:`` sets
and as IGRP groups.

Clustering has no randomness: equal weights give equal groups; groups are listed in a canonical
order (members sorted, groups by their smallest class).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import yaml
from torch import Tensor, nn

__all__ = [
    "LINKAGES",
    "METRICS",
    "Grouping",
    "head_weight",
    "class_distances",
    "class_similarity",
    "cluster_classes",
    "groups_from_model",
    "groups_to_yaml",
    "write_groups",
    "plot_similarity",
    "format_groups",
    "groups_from_checkpoint",
]

#: SciPy linkages whose merge heights are monotone (so a cut into G groups is well defined)
LINKAGES = ("average", "complete", "single", "weighted", "ward")
#: distances between weight rows
METRICS = ("cosine", "euclidean", "correlation")


@dataclass(frozen=True)
class Grouping:
    """Groups found by :func:`cluster_classes`.

    Shape: ``weight (n, d)`` the rows clustered, ``distances (n, n)``, ``linkage ((n - 1), 4)``
    SciPy's linkage matrix.
    """

    groups: tuple[tuple[int, ...], ...]
    weight: np.ndarray
    distances: np.ndarray
    linkage_matrix: np.ndarray
    linkage: str
    metric: str

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def labels(self) -> np.ndarray:
        """``(n,)`` group index of every class."""
        out = np.empty(self.n_classes, dtype=np.int64)
        for position, members in enumerate(self.groups):
            out[list(members)] = position
        return out


def head_weight(model: nn.Module) -> Tensor:
    """The weight ``(n, d)`` of the model's last ``nn.Linear`` (its logit layer), detached, float64."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError("the model has no nn.Linear layer: label groups are read from the logit layer's weights")
    return last.weight.detach().to("cpu", torch.float64)


def _rows(weight: Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(weight.detach().cpu().numpy() if isinstance(weight, Tensor) else weight, dtype=np.float64)


def _check_options(linkage: str, metric: str) -> None:
    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {LINKAGES}, got {linkage!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if linkage == "ward" and metric != "euclidean":
        raise ValueError("ward linkage needs metric='euclidean'")


def class_distances(weight: Tensor | np.ndarray, metric: str = "cosine") -> np.ndarray:
    """``(n, n)`` distances between weight rows: ``1 - cos`` (cosine), ``||w_i - w_j||_2``
    (euclidean) or ``1 - Pearson correlation`` (correlation)."""
    from scipy.spatial.distance import pdist, squareform

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    rows = _rows(weight)
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ValueError(f"need a (n, d) weight with n >= 2 classes, got shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError("the weight rows contain NaN or infinite values")
    if metric in ("cosine", "correlation"):
        centred = rows - rows.mean(axis=1, keepdims=True) if metric == "correlation" else rows
        if (np.linalg.norm(centred, axis=1) == 0).any():
            raise ValueError(f"a weight row is constant (zero after centring): the {metric} distance is undefined")
    return np.clip(squareform(pdist(rows, metric=metric)), 0.0, None)


def class_similarity(weight: Tensor | np.ndarray, metric: str = "cosine") -> np.ndarray:
    """``(n, n)`` similarity matching ``metric``: ``cos`` (cosine), correlation, or
    ``-||w_i - w_j||`` (euclidean)."""
    distances = class_distances(weight, metric)
    return -distances if metric == "euclidean" else 1.0 - distances


def _canonical(labels: np.ndarray) -> tuple[tuple[int, ...], ...]:
    groups: dict[int, list[int]] = {}
    for c, label in enumerate(labels.tolist()):
        groups.setdefault(int(label), []).append(c)
    return tuple(sorted((tuple(sorted(g)) for g in groups.values()), key=lambda g: g[0]))


def cluster_classes(weight: Tensor | np.ndarray, n_groups: int, linkage: str = "average", metric: str = "cosine") -> Grouping:
    """Agglomerative clustering of the weight rows into exactly ``n_groups`` groups.

    Args:
        weight: ``(n, d)`` logit-layer weight, one row per class.
        n_groups: ``1 <= n_groups <= n``.
        linkage: one of :data:`LINKAGES` (``ward`` needs the euclidean metric).
        metric: one of :data:`METRICS`.
    Returns:
        a :class:`Grouping`; the tree is cut after its first ``n - n_groups`` merges.
    """
    from scipy.cluster import hierarchy
    from scipy.spatial.distance import squareform

    _check_options(linkage, metric)
    distances = class_distances(weight, metric)
    n = distances.shape[0]
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or not 1 <= n_groups <= n:
        raise ValueError(f"n_groups must be an integer in [1, {n}] for {n} classes, got {n_groups!r}")
    rows = _rows(weight)
    # ward on the condensed euclidean distances equals ward on the rows
    tree = hierarchy.linkage(squareform(distances, checks=False), method=linkage)
    labels = hierarchy.cut_tree(tree, n_clusters=int(n_groups)).reshape(-1)
    return Grouping(_canonical(labels), rows, distances, tree, linkage, metric)


def groups_from_model(model: nn.Module, n_groups: int, linkage: str = "average", metric: str = "cosine") -> Grouping:
    """:func:`cluster_classes` on the rows of ``model``'s last linear layer (:func:`head_weight`)."""
    return cluster_classes(head_weight(model), n_groups, linkage, metric)


def _names_are_indices(class_names: Sequence[str] | None) -> bool:
    return class_names is None or all(str(name) == str(i) for i, name in enumerate(class_names))


def groups_to_yaml(groups: Sequence[Sequence[int]], class_names: Sequence[str] | None = None, description: str | None = None) -> str:
    """YAML that ``affinity:FILE``, ``superclass:FILE`` and ``igrp:FILE@EPS_IN,EPS_OUT`` read:
    ``sets`` as class names where the data set has names other than the indices (with the
    ``class_names`` list, so they resolve), else as indices."""
    data: dict = {}
    if description:
        data["description"] = description
    if _names_are_indices(class_names):
        data["sets"] = [[int(c) for c in g] for g in groups]
    else:
        names = [str(n) for n in class_names]
        data["class_names"] = names
        data["sets"] = [[names[c] for c in g] for g in groups]
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def write_groups(path: str | os.PathLike, groups: Sequence[Sequence[int]], class_names: Sequence[str] | None = None, description: str | None = None) -> Path:
    """Write :func:`groups_to_yaml` atomically (a temporary file, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(groups_to_yaml(groups, class_names, description))
    os.replace(tmp, target)
    return target


def format_groups(groups: Sequence[Sequence[int]], class_names: Sequence[str] | None = None) -> str:
    """One line per group: ``group 0: 0, 6`` (class names where known)."""
    def name(c: int) -> str:
        return str(class_names[c]) if class_names is not None else str(c)

    return "\n".join(f"group {i}: {', '.join(name(c) for c in g)}" for i, g in enumerate(groups))


def plot_similarity(grouping: Grouping, path: str | os.PathLike, class_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """PNG of the class-similarity matrix (rows and columns in dendrogram order, group borders
    drawn) under the dendrogram of the clustering, coloured by the cut into groups."""
    import matplotlib
    from matplotlib.figure import Figure
    from scipy.cluster import hierarchy

    n = grouping.n_classes
    names = [str(class_names[c]) if class_names is not None else str(c) for c in range(n)]
    similarity = class_similarity(grouping.weight, grouping.metric)
    heights = grouping.linkage_matrix[:, 2]
    g = len(grouping.groups)
    # a threshold between the last kept merge and the first cut one colours exactly g clusters
    if g == 1:
        threshold = float(heights.max()) * 1.01 + 1e-12
    elif g == n:
        threshold = float(heights.min()) * 0.99
    else:
        threshold = float(heights[n - g - 1] + heights[n - g]) / 2

    side = max(4.0, 0.4 * n)
    fig = Figure(figsize=(side / 0.68, side / 0.62))
    top = fig.add_axes([0.15, 0.72, 0.68, 0.22])
    tree = hierarchy.dendrogram(grouping.linkage_matrix, ax=top, labels=names, color_threshold=threshold,
                                above_threshold_color="0.5", no_labels=True)
    top.axhline(threshold, color="0.3", linestyle="--", linewidth=0.8)
    top.set_ylabel(f"{grouping.metric} distance")
    top.set_xlim(0, 10 * n)  # leaf i sits at 10 i + 5, above heatmap column i
    top.set_xticks([])
    for side in ("top", "right"):
        top.spines[side].set_visible(False)
    leaves = tree["leaves"]
    ax = fig.add_axes([0.15, 0.08, 0.68, 0.62])
    cax = fig.add_axes([0.85, 0.08, 0.03, 0.62])
    ordered = similarity[np.ix_(leaves, leaves)]
    off_diagonal = ordered[~np.eye(n, dtype=bool)] if n > 1 else ordered.reshape(-1)
    # colour range from the off-diagonal entries; the diagonal (self-similarity) is drawn grey
    low, high = float(off_diagonal.min()), float(off_diagonal.max())
    shown = np.ma.masked_array(ordered, mask=np.eye(n, dtype=bool) if n > 1 else None)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    image = ax.imshow(shown, cmap=cmap, interpolation="nearest", aspect="auto",  # columns under leaves
                      vmin=low, vmax=high if high > low else low + 1e-12)
    ax.set_xticks(range(n), [names[c] for c in leaves], rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), [names[c] for c in leaves])
    labels = grouping.labels()[leaves]
    for position in range(1, n):
        if labels[position] != labels[position - 1]:
            ax.axhline(position - 0.5, color="white", linewidth=1.5)
            ax.axvline(position - 0.5, color="white", linewidth=1.5)
    label = {"cosine": "cosine similarity", "correlation": "correlation", "euclidean": "- euclidean distance"}[grouping.metric]
    fig.colorbar(image, cax=cax, label=label)
    fig.suptitle(title or f"class similarity of logit-layer weights ({grouping.linkage} linkage, {g} groups)", fontsize=10)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    return target


def groups_from_checkpoint(
    checkpoint: str | os.PathLike,
    n_groups: int,
    linkage: str = "average",
    metric: str = "cosine",
    out_dir: str | os.PathLike | None = None,
) -> tuple[Grouping, Path, Path, tuple[str, ...] | None]:
    """``relaxplug groups``: cluster a checkpoint's logit-layer rows; write ``groups.yaml`` and
    ``similarity.png`` to ``out_dir`` (default: the checkpoint's directory).

    Returns ``(grouping, yaml path, png path, class names)``.
    """
    from relaxplug.models.checkpoint import load_checkpoint

    _check_options(linkage, metric)
    loaded = load_checkpoint(checkpoint, "cpu")
    names = loaded.metadata.get("class_names")
    class_names = tuple(str(n) for n in names) if names else None
    grouping = groups_from_model(loaded.model, n_groups, linkage, metric)
    target = Path(out_dir) if out_dir is not None else Path(checkpoint).parent
    meta = loaded.metadata
    description = (f"{len(grouping.groups)} label groups of {meta.get('dataset', 'the data set')} from the logit-layer "
                   f"weights of {checkpoint} ({meta.get('architecture')}, {meta.get('method')} training): {linkage} "
                   f"linkage, {metric} distance")
    yaml_path = write_groups(target / "groups.yaml", grouping.groups, class_names, description)
    png_path = plot_similarity(grouping, target / "similarity.png", class_names)
    return grouping, yaml_path, png_path, class_names

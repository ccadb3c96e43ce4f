"""Data sets by name: train/test splits as ``(x, y)`` datasets plus class names and groupings.

Every loader returns a :class:`DatasetSplits` whose ``train``/``test`` datasets yield
``(x, y)`` with ``x`` a float32 tensor of shape ``input_shape`` and ``y`` a Python ``int``.
Images are scaled to ``[0, 1]`` (``x / 255``, channels first, like ``ToTensor``).

Nothing is ever downloaded: the file-backed loaders read local files under ``root`` (default:
``$RELAXPLUG_DATA``, else ``~/.relaxplug/data``) and raise :class:`FileNotFoundError` naming
the expected path and how to obtain the files.

===============  =====================================================================
``digits``       embedded default: scikit-learn's bundled 8x8 digits (no files needed),
                 ``(1, 8, 8)``, fixed seeded 2/3 - 1/3 split of the 1797 images.
``synthetic2d``  2-D Gaussian mixture, pairs of classes strongly overlapping, ``(2,)``.
``cifar10``      ``<root>/cifar-10-batches-py`` (the official python pickles).
``cifar100``     ``<root>/cifar-100-python``; option ``labels="fine"|"coarse"``.
``eurosat``      ``<root>/eurosat/2750/<Class>/*.jpg`` (or ``<root>/2750/...``), seeded split.
``tinyimagenet`` ``<root>/tiny-imagenet-200`` (train split; the labelled val split as test).
``npz``          option ``path``: ``x_train, y_train, x_test, y_test[, class_names]``.
===============  =====================================================================

CIFAR files are read directly with :mod:`pickle`, in the same format torchvision's
``CIFAR10``/``CIFAR100`` read, but without torchvision's md5 check by default (so re-packed or
test copies load too); pass ``verify=True`` to check the official md5 sums.
"""

from __future__ import annotations

import inspect
import os
import pickle
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from relaxplug.adapters.groupings import (
    CIFAR10_ANIMALS,
    CIFAR10_VEHICLES,
    CIFAR10_VEHICLES_ANIMALS,
    CIFAR100_COARSE,
    GROUPINGS,
)
from relaxplug.registry import Registry

__all__ = [
    "CIFAR10_ANIMALS",
    "CIFAR10_CLASS_NAMES",
    "CIFAR10_VEHICLES",
    "CIFAR10_VEHICLES_ANIMALS",
    "CIFAR100_COARSE",
    "CIFAR100_COARSE_NAMES",
    "CIFAR100_FINE_NAMES",
    "DATASETS",
    "EUROSAT_CLASS_NAMES",
    "GROUPINGS",
    "ArrayDataset",
    "DatasetSplits",
    "ImageFileDataset",
    "default_root",
    "fit_class_count",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]

# --------------------------------------------------------------------------------------------
# Class tables
# --------------------------------------------------------------------------------------------

CIFAR10_CLASS_NAMES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

#: CIFAR-100 fine label names in the official label order (``meta["fine_label_names"]``).
CIFAR100_FINE_NAMES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

#: CIFAR-100 coarse (superclass) names in the official label order (``meta["coarse_label_names"]``).
CIFAR100_COARSE_NAMES: tuple[str, ...] = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)

EUROSAT_CLASS_NAMES: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSplits:
    """A named data set: ``train``/``test`` datasets yielding ``(float32 x, int y)``.

    ``groupings`` maps a name to a tuple of class-index tuples usable as affinity/superclass
    sets (``{}`` when the data set has none).
    """

    name: str
    train: Dataset
    test: Dataset
    n_classes: int
    input_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    groupings: dict[str, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    #: ``True`` when ``n_classes`` was only inferred from the largest label (an ``.npz`` without
    #: ``class_names``): a model's class count may then be larger (see :func:`fit_class_count`)
    classes_from_labels: bool = False


def _max_label(dataset: Dataset) -> int:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return max((int(dataset[i][1]) for i in range(len(dataset))), default=-1)
    return int(torch.as_tensor(targets).max()) if len(targets) else -1


def fit_class_count(splits: DatasetSplits, n_classes: int, what: str = "the model") -> DatasetSplits:
    """``splits`` with the class count of the model that reads them (``n_classes``).

    A data set whose class count was only inferred from its labels (an ``.npz`` without
    ``class_names``) may hold a subset of the model's classes: its count becomes
    ``n_classes`` when every label is below it. Otherwise the counts must agree; a mismatch
    raises ``ValueError`` naming both counts (and the largest label when it is out of range).
    """
    n_classes = int(n_classes)
    if splits.n_classes == n_classes:
        return splits
    largest = max(_max_label(splits.train), _max_label(splits.test))
    if largest >= n_classes:
        raise ValueError(f"data set {splits.name!r} has labels up to {largest}, but {what} has {n_classes} classes "
                         f"(labels must lie in [0, {n_classes}))")
    if not splits.classes_from_labels:
        raise ValueError(f"data set {splits.name!r} has {splits.n_classes} classes, {what} {n_classes}")
    return replace(splits, n_classes=n_classes, class_names=tuple(str(i) for i in range(n_classes)))


class ArrayDataset(Dataset):
    """In-memory ``(x, y)`` pairs. ``x`` float (returned as float32) or uint8 (returned / 255)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise ValueError(f"x and y lengths differ: {len(x)} vs {len(y)}")
        if x.dtype != torch.uint8:
            x = x.to(torch.float32)
        self.x = x
        self.targets = y.to(torch.long)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.x[index]
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0)
        return x, int(self.targets[index])


class ImageFileDataset(Dataset):
    """Images read from disk on access: RGB, resized to ``size`` if needed, CHW in [0, 1]."""

    def __init__(self, paths: Sequence[str | os.PathLike], targets: Sequence[int], size: tuple[int, int]):
        if len(paths) != len(targets):
            raise ValueError(f"paths and targets lengths differ: {len(paths)} vs {len(targets)}")
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.size = (int(size[0]), int(size[1]))  # (height, width)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            image = image.convert("RGB")
            if image.size != (self.size[1], self.size[0]):
                image = image.resize((self.size[1], self.size[0]), Image.BILINEAR)
            array = np.array(image, dtype=np.uint8)
        x = torch.from_numpy(array).permute(2, 0, 1).to(torch.float32).div_(255.0)
        return x, self.targets[index]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

DATASETS: Registry[DatasetSplits] = Registry("dataset")


def register_dataset(name: str) -> Callable:
    """Decorator registering ``loader(root: Path, **options) -> DatasetSplits``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return DATASETS.names()


def default_root() -> Path:
    """``$RELAXPLUG_DATA`` if set, else ``~/.relaxplug/data``."""
    env = os.environ.get("RELAXPLUG_DATA")
    return Path(env).expanduser() if env else Path("~/.relaxplug/data").expanduser()


def load_dataset(name: str, root: str | os.PathLike | None = None, **options: Any) -> DatasetSplits:
    """Load data set ``name`` (see :func:`list_datasets`) from ``root`` with loader ``options``.

    ``name`` may also be a ``FILE.npz`` (the ``npz`` loader with ``path=FILE.npz``).
    ``root`` defaults to :func:`default_root`; unknown names raise ``ValueError`` listing the
    known ones, unknown options raise ``ValueError`` listing the accepted ones.
    """
    key = str(name).strip().lower()
    if key.endswith(".npz"):  # a file given where a name is expected: the npz loader
        if "path" in options:
            raise ValueError(f"dataset {name!r} is a file and option path={options['path']!r} another")
        key, options = "npz", {**options, "path": str(name)}
    loader = DATASETS.get(key)
    accepted = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset {key!r} does not accept option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    base = Path(root).expanduser() if root is not None else default_root()
    return loader(base, **options)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _split_indices(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation of ``range(n)`` cut into train (first ``round(f * n)``) and test."""
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    perm = np.random.default_rng(int(seed)).permutation(n)
    n_train = int(round(n * float(train_fraction)))
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def _missing(dataset: str, expected: Path | Sequence[Path], how: str) -> FileNotFoundError:
    paths = [expected] if isinstance(expected, Path) else list(expected)
    where = " or ".join(f"'{p}'" for p in paths)
    return FileNotFoundError(
        f"{dataset} data set not found: expected {where}. {how} "
        f"(relaxplug never downloads; pass root=... / --data-root or set RELAXPLUG_DATA)"
    )


def _decode(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _read_pickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as handle:
        entry = pickle.load(handle, encoding="latin1")
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(entry).__name__}")
    # Files pickled by Python 3 with bytes keys (b"data") load with bytes keys; normalise.
    return {_decode(k): v for k, v in entry.items()}


def _cifar_images(entries: list[dict[str, Any]], path_hint: Path) -> torch.Tensor:
    arrays = []
    for entry in entries:
        if "data" not in entry:
            raise ValueError(f"{path_hint}: CIFAR batch without a 'data' entry")
        arrays.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays)))


def _check_labels(labels: np.ndarray, n_classes: int, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{what}: labels must lie in [0, {n_classes}), got range [{labels.min()}, {labels.max()}]"
        )


def _verify_md5(folder: Path, files: Sequence[Sequence[str]], dataset: str) -> None:
    from torchvision.datasets.utils import check_integrity

    bad = [name for name, md5 in files if not check_integrity(str(folder / name), md5)]
    if bad:
        raise ValueError(f"{dataset}: md5 mismatch (not the official files) for {', '.join(bad)} in {folder}")


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


@register_dataset("digits")
def _load_digits(root: Path, seed: int = 0, train_fraction: float = 2.0 / 3.0) -> DatasetSplits:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    train_idx, test_idx = _split_indices(len(y), train_fraction, seed)
    train_idx_t, test_idx_t = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return DatasetSplits(
        name="digits",
        train=ArrayDataset(x[train_idx_t], y[train_idx_t]),
        test=ArrayDataset(x[test_idx_t], y[test_idx_t]),
        n_classes=10,
        input_shape=(1, 8, 8),
        class_names=tuple(str(i) for i in range(10)),
        groupings={},
    )


def synthetic2d_means(n_classes: int = 4, radius: float = 0.9, pair_angle: float = 0.5) -> np.ndarray:
    """Class means of ``synthetic2d``: pairs ``(2k, 2k+1)`` sit ``pair_angle`` radians apart on a
    circle of ``radius``, the pairs spread evenly around it (an odd last class sits alone)."""
    n_pairs = (n_classes + 1) // 2
    means = []
    for c in range(n_classes):
        pair, member = divmod(c, 2)
        alone = pair == n_pairs - 1 and n_classes % 2 == 1
        angle = 2.0 * np.pi * pair / n_pairs + (0.0 if alone else (member - 0.5) * pair_angle)
        means.append((radius * np.cos(angle), radius * np.sin(angle)))
    return np.asarray(means, dtype=np.float64)


@register_dataset("synthetic2d")
def _load_synthetic2d(
    root: Path,
    n_per_class: int = 300,
    n_test_per_class: int | None = None,
    n_classes: int = 4,
    seed: int = 0,
    std: float = 0.3,
    radius: float = 0.9,
    pair_angle: float = 0.5,
) -> DatasetSplits:
    """2-D Gaussian mixture: classes ``2k`` and ``2k+1`` strongly overlap (means ``pair_angle``
    apart on a circle), different pairs are well separated. Points are clipped to
    ``[-1.5, 1.5]^2``. Deterministic for a given ``seed``; the test set (``n_test_per_class``,
    default ``n_per_class // 2``) is drawn independently of the training set."""
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    n_test = max(1, n_per_class // 2) if n_test_per_class is None else int(n_test_per_class)
    means = synthetic2d_means(n_classes, radius, pair_angle)
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(2))

    def draw(rng: np.random.Generator, n: int) -> ArrayDataset:
        xs = [rng.normal(means[c], std, size=(n, 2)) for c in range(n_classes)]
        x = np.clip(np.concatenate(xs), -1.5, 1.5).astype(np.float32)
        y = np.repeat(np.arange(n_classes, dtype=np.int64), n)
        return ArrayDataset(torch.from_numpy(x), torch.from_numpy(y))

    pairs = tuple((2 * k, 2 * k + 1) for k in range(n_classes // 2))
    return DatasetSplits(
        name="synthetic2d",
        train=draw(train_rng, int(n_per_class)),
        test=draw(test_rng, n_test),
        n_classes=int(n_classes),
        input_shape=(2,),
        class_names=tuple(str(i) for i in range(n_classes)),
        groupings={"overlap_pairs": pairs},
    )


_CIFAR_HOW = (
    "Download {url} and extract it into the root directory (or run "
    "torchvision.datasets.{cls}(root, download=True) on a machine with network access)."
)


@register_dataset("cifar10")
def _load_cifar10(root: Path, verify: bool = False) -> DatasetSplits:
    """CIFAR-10 python pickles in ``<root>/cifar-10-batches-py`` (``data_batch_1..5``,
    ``test_batch``, ``batches.meta``). ``verify=True`` checks torchvision's md5 sums."""
    folder = root / "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    needed = [*train_files, "test_batch"]
    how = _CIFAR_HOW.format(url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", cls="CIFAR10")
    if not folder.is_dir():
        raise _missing("cifar10", folder, how)
    absent = [f for f in needed if not (folder / f).is_file()]
    if absent:
        raise _missing("cifar10", [folder / f for f in absent], how)
    if verify:
        from torchvision.datasets import CIFAR10

        _verify_md5(folder, [*CIFAR10.train_list, *CIFAR10.test_list], "cifar10")

    def split(files: list[str]) -> ArrayDataset:
        entries = [_read_pickle(folder / f) for f in files]
        x = _cifar_images(entries, folder)
        labels = np.concatenate([np.asarray(e["labels"], dtype=np.int64) for e in entries])
        _check_labels(labels, 10, f"cifar10 {folder}")
        return ArrayDataset(x, torch.from_numpy(labels))

    names = CIFAR10_CLASS_NAMES
    meta_path = folder / "batches.meta"
    if meta_path.is_file():
        names = tuple(str(_decode(n)) for n in _read_pickle(meta_path)["label_names"])
    return DatasetSplits(
        name="cifar10",
        train=split(train_files),
        test=split(["test_batch"]),
        n_classes=10,
        input_shape=(3, 32, 32),
        class_names=names,
        groupings={"vehicles_animals": CIFAR10_VEHICLES_ANIMALS},
    )


@register_dataset("cifar100")
def _load_cifar100(root: Path, labels: str = "fine", verify: bool = False) -> DatasetSplits:
    """CIFAR-100 python pickles in ``<root>/cifar-100-python`` (``train``, ``test``, ``meta``).

    ``labels="fine"`` (100 classes, grouping ``coarse`` = :data:`CIFAR100_COARSE`) or
    ``"coarse"`` (the 20 superclasses from the pickles' ``coarse_labels``, no grouping).
    """
    if labels not in ("fine", "coarse"):
        raise ValueError(f"cifar100 labels must be 'fine' or 'coarse', got {labels!r}")
    folder = root / "cifar-100-python"
    how = _CIFAR_HOW.format(url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", cls="CIFAR100")
    if not folder.is_dir():
        raise _missing("cifar100", folder, how)
    absent = [f for f in ("train", "test") if not (folder / f).is_file()]
    if absent:
        raise _missing("cifar100", [folder / f for f in absent], how)
    if verify:
        from torchvision.datasets import CIFAR100

        _verify_md5(folder, [*CIFAR100.train_list, *CIFAR100.test_list], "cifar100")

    fine_of_coarse_ok = True
    fine_to_coarse = np.empty(100, dtype=np.int64)
    for c, members in enumerate(CIFAR100_COARSE):
        fine_to_coarse[list(members)] = c
    seen_pairs: set[tuple[int, int]] = set()

    def split(file: str) -> ArrayDataset:
        nonlocal fine_of_coarse_ok
        entry = _read_pickle(folder / file)
        key = "fine_labels" if labels == "fine" else "coarse_labels"
        for needed in ("fine_labels", key):
            if needed not in entry:
                raise ValueError(f"{folder / file}: CIFAR-100 pickle without '{needed}'")
        fine = np.asarray(entry["fine_labels"], dtype=np.int64)
        _check_labels(fine, 100, f"cifar100 {folder / file} fine_labels")
        if "coarse_labels" in entry:
            coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
            _check_labels(coarse, 20, f"cifar100 {folder / file} coarse_labels")
            if len(coarse) != len(fine):
                raise ValueError(f"{folder / file}: fine_labels and coarse_labels lengths differ")
            seen_pairs.update(zip(fine.tolist(), coarse.tolist()))
            if np.any(fine_to_coarse[fine] != coarse):
                fine_of_coarse_ok = False
        target = fine if labels == "fine" else np.asarray(entry["coarse_labels"], dtype=np.int64)
        return ArrayDataset(_cifar_images([entry], folder / file), torch.from_numpy(target))

    train, test = split("train"), split("test")
    fine_names, coarse_names = CIFAR100_FINE_NAMES, CIFAR100_COARSE_NAMES
    meta_path = folder / "meta"
    if meta_path.is_file():
        meta = _read_pickle(meta_path)
        if "fine_label_names" in meta:
            fine_names = tuple(str(_decode(n)) for n in meta["fine_label_names"])
        if "coarse_label_names" in meta:
            coarse_names = tuple(str(_decode(n)) for n in meta["coarse_label_names"])

    if labels == "coarse":
        return DatasetSplits("cifar100", train, test, 20, (3, 32, 32), coarse_names, {})

    grouping: tuple[tuple[int, ...], ...] | None = CIFAR100_COARSE
    if not fine_of_coarse_ok:
        # Not the official label order: derive the superclasses from the files if they are complete.
        mapping = dict(seen_pairs)
        consistent = len(mapping) == len(seen_pairs) and len(mapping) == 100
        grouping = (
            tuple(tuple(sorted(f for f, c in mapping.items() if c == k)) for k in range(20)) if consistent else None
        )
        warnings.warn(
            f"cifar100 files in {folder} do not follow the official fine->coarse label table; "
            + ("using the superclasses found in the files" if grouping else "no 'coarse' grouping available"),
            stacklevel=3,
        )
    return DatasetSplits(
        "cifar100", train, test, 100, (3, 32, 32), fine_names, {"coarse": grouping} if grouping else {}
    )


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)


@register_dataset("eurosat")
def _load_eurosat(root: Path, seed: int = 0, train_fraction: float = 2.0 / 3.0) -> DatasetSplits:
    """EuroSAT RGB (64x64) in ImageFolder layout ``<root>/eurosat/2750/<Class>/*.jpg`` (what
    ``torchvision.datasets.EuroSAT`` produces) or ``<root>/2750/<Class>/*.jpg``.

    Classes are the sub-folders in sorted order (the standard 10 give AnnualCrop=0 ...
    SeaLake=9); a seeded permutation splits the images 2/3 train, 1/3 test. Grouping
    ``highway_river`` uses the folder indices of Highway and River when both are present.
    """
    candidates = [root / "eurosat" / "2750", root / "2750"]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise _missing(
            "eurosat", candidates,
            "Download EuroSAT_RGB (https://zenodo.org/records/7711810, or "
            "torchvision.datasets.EuroSAT(root, download=True) on a machine with network access) "
            "so that the class folders (AnnualCrop, Forest, ...) lie in <root>/eurosat/2750.",
        )
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise FileNotFoundError(f"eurosat: no class folders in '{folder}'")
    paths: list[Path] = []
    targets: list[int] = []
    for index, name in enumerate(classes):
        files = _list_images(folder / name)
        paths.extend(files)
        targets.extend([index] * len(files))
    if not paths:
        raise FileNotFoundError(f"eurosat: no images ({', '.join(_IMAGE_EXTENSIONS)}) under '{folder}'")
    unknown = sorted(set(classes) - set(EUROSAT_CLASS_NAMES))
    if unknown:
        warnings.warn(f"eurosat: non-standard class folders {unknown} in {folder}", stacklevel=3)
    train_idx, test_idx = _split_indices(len(paths), train_fraction, seed)
    size = (64, 64)
    groupings: dict[str, tuple[tuple[int, ...], ...]] = {}
    if "Highway" in classes and "River" in classes:
        groupings["highway_river"] = ((classes.index("Highway"), classes.index("River")),)
    return DatasetSplits(
        name="eurosat",
        train=ImageFileDataset([paths[i] for i in train_idx], [targets[i] for i in train_idx], size),
        test=ImageFileDataset([paths[i] for i in test_idx], [targets[i] for i in test_idx], size),
        n_classes=len(classes),
        input_shape=(3, *size),
        class_names=tuple(classes),
        groupings=groupings,
    )


@register_dataset("tinyimagenet")
def _load_tinyimagenet(root: Path) -> DatasetSplits:
    """Tiny ImageNet (200 classes, 64x64 RGB) in ``<root>/tiny-imagenet-200``: ``train/<wnid>/
    images/*.JPEG`` for training, ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``
    as the test split (the official test split has no labels). Classes are the wnids (from
    ``wnids.txt``, else the train folders) in sorted order, like ``ImageFolder``; names come
    from ``words.txt`` (first synonym) when present, else the wnids."""
    base = root / "tiny-imagenet-200"
    how = (
        "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into the root directory."
    )
    if not base.is_dir():
        raise _missing("tinyimagenet", base, how)
    train_dir, val_dir = base / "train", base / "val"
    annotations = val_dir / "val_annotations.txt"
    for needed in (train_dir, val_dir / "images", annotations):
        if not needed.exists():
            raise _missing("tinyimagenet", needed, how)
    wnids_file = base / "wnids.txt"
    if wnids_file.is_file():
        wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    else:
        wnids = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    if not wnids:
        raise FileNotFoundError(f"tinyimagenet: no classes found in '{wnids_file}' or '{train_dir}'")
    index = {w: i for i, w in enumerate(wnids)}

    train_paths: list[Path] = []
    train_targets: list[int] = []
    for wnid in wnids:
        folder = train_dir / wnid / "images"
        if not folder.is_dir():
            raise _missing("tinyimagenet", folder, how)
        files = _list_images(folder)
        train_paths.extend(files)
        train_targets.extend([index[wnid]] * len(files))

    test_paths: list[Path] = []
    test_targets: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        parts = line.strip().split("\t")
        if not parts or not parts[0]:
            continue
        if len(parts) < 2 or parts[1] not in index:
            raise ValueError(f"{annotations}:{number}: expected '<file>\\t<known wnid>...', got {line!r}")
        test_paths.append(val_dir / "images" / parts[0])
        test_targets.append(index[parts[1]])
    missing_val = [p for p in test_paths if not p.is_file()]
    if missing_val:
        raise _missing("tinyimagenet", missing_val[:3], how)

    names = list(wnids)
    words = base / "words.txt"
    if words.is_file():
        table = {}
        for line in words.read_text().splitlines():
            wnid, _, text = line.partition("\t")
            table[wnid.strip()] = text.split(",")[0].strip()
        names = [table.get(w) or w for w in wnids]
    size = (64, 64)
    return DatasetSplits(
        name="tinyimagenet",
        train=ImageFileDataset(train_paths, train_targets, size),
        test=ImageFileDataset(test_paths, test_targets, size),
        n_classes=len(wnids),
        input_shape=(3, *size),
        class_names=tuple(names),
        groupings={},
    )


def _npz_inputs(x: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if x.dtype == np.uint8:
        if x.ndim == 3:  # N, H, W: grey images
            x = x[:, None, :, :]
        elif x.ndim == 4:  # N, H, W, C -> N, C, H, W
            x = x.transpose(0, 3, 1, 2)
        else:
            raise ValueError(f"{path}: uint8 '{key}' must be NHWC or NHW images, got shape {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x))  # ArrayDataset scales uint8 by 1/255
    if np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer):
        if x.ndim < 2:
            raise ValueError(f"{path}: '{key}' must have shape (N, ...), got {x.shape}")
        if x.size and not np.all(np.isfinite(x)):
            raise ValueError(f"{path}: '{key}' holds NaN or infinite values")
        if x.ndim >= 3 and x.size:
            low, high = float(x.min()), float(x.max())
            if low < 0.0 or high > 1.0:
                hint = " (0-255 pixels? divide by 255 or store uint8 NHWC)" if high > 1.0 and low >= 0.0 else ""
                raise ValueError(f"{path}: float images '{key}' must lie in [0, 1], got values in [{low:g}, {high:g}]{hint}")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    raise ValueError(f"{path}: '{key}' has unsupported dtype {x.dtype}")


@register_dataset("npz")
def _load_npz(root: Path, path: str | os.PathLike | None = None, n_classes: int | None = None) -> DatasetSplits:
    """Arrays from a ``.npz`` with ``x_train, y_train, x_test, y_test`` (optional ``class_names``).

    ``x`` is accepted as either
      * float (any float/int dtype except uint8): taken as is, shape ``(N, *input_shape)``
        (NCHW for images, ``(N, d)`` for vectors), converted to float32, *not* rescaled; or
      * uint8 images, NHWC (or NHW): transposed to NCHW and scaled by 1/255.
    Float images (3 or more dimensions) must lie in ``[0, 1]`` (0-255 floats are refused), and
    no array may hold NaN or infinities; vectors (``(N, d)``) are taken as they are.
    ``y``: integer labels in ``[0, n_classes)``; ``n_classes`` defaults to
    ``len(class_names)`` if given, else ``max label + 1`` (then only a lower bound: a model
    with more classes may read the file, see :func:`fit_class_count`). A relative ``path`` is looked up in
    the working directory first, then under ``root``.
    """
    if path is None:
        raise ValueError("dataset 'npz' needs option path=<file.npz>")
    given = Path(path).expanduser()
    candidates = [given] if given.is_absolute() else [given, root / given]
    file = next((c for c in candidates if c.is_file()), None)
    if file is None:
        raise FileNotFoundError(
            "npz data set not found: expected " + " or ".join(f"'{c}'" for c in candidates)
            + ". Provide a .npz with arrays x_train, y_train, x_test, y_test (and optional class_names)."
        )
    with np.load(file, allow_pickle=False) as archive:
        required = ("x_train", "y_train", "x_test", "y_test")
        absent = [k for k in required if k not in archive.files]
        if absent:
            raise ValueError(f"{file}: missing array(s) {', '.join(absent)} (has: {', '.join(archive.files)})")
        arrays = {k: archive[k] for k in required}
        try:
            names_array = archive["class_names"] if "class_names" in archive.files else None
        except ValueError as error:  # object arrays need pickle
            raise ValueError(f"{file}: 'class_names' must be a plain string array (saved without pickle)") from error

    xs = {s: _npz_inputs(arrays[f"x_{s}"], f"x_{s}", file) for s in ("train", "test")}
    ys = {}
    for s in ("train", "test"):
        y = arrays[f"y_{s}"]
        integral = np.issubdtype(y.dtype, np.integer) or (
            np.issubdtype(y.dtype, np.floating) and bool(np.all(y == np.round(y)))
        )
        if y.ndim != 1 or not integral:
            raise ValueError(f"{file}: 'y_{s}' must be a 1-D integer label array, got {y.dtype} {y.shape}")
        if len(y) != len(xs[s]):
            raise ValueError(f"{file}: x_{s} has {len(xs[s])} rows but y_{s} has {len(y)} labels")
        ys[s] = y.astype(np.int64)
    if xs["train"].shape[1:] != xs["test"].shape[1:]:
        raise ValueError(f"{file}: x_train and x_test shapes differ: {tuple(xs['train'].shape[1:])} vs {tuple(xs['test'].shape[1:])}")

    class_names = None if names_array is None else tuple(str(n) for n in np.asarray(names_array).reshape(-1))
    inferred = n_classes is None and class_names is None
    if n_classes is None:
        if class_names is not None:
            n_classes = len(class_names)
        else:
            n_classes = int(max([int(y.max()) for y in ys.values() if y.size] or [0])) + 1
    n_classes = int(n_classes)
    if class_names is not None and len(class_names) != n_classes:
        raise ValueError(f"{file}: {len(class_names)} class_names for {n_classes} classes")
    for s in ("train", "test"):
        _check_labels(ys[s], n_classes, f"{file} y_{s}")
    return DatasetSplits(
        name="npz",
        train=ArrayDataset(xs["train"], torch.from_numpy(ys["train"])),
        test=ArrayDataset(xs["test"], torch.from_numpy(ys["test"])),
        n_classes=n_classes,
        input_shape=tuple(int(d) for d in xs["train"].shape[1:]),
        class_names=class_names if class_names is not None else tuple(str(i) for i in range(n_classes)),
        groupings={},
        classes_from_labels=inferred,
    )

"""Data loaders: embedded sets, class tables, and the file-backed loaders on tiny fake files
written in the exact on-disk formats (no network, nothing downloaded)."""

import pickle

import numpy as np
import pytest
import torch

from relaxplug import data as D
from relaxplug.data import (
    CIFAR100_COARSE,
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_NAMES,
    DatasetSplits,
    list_datasets,
    load_dataset,
)

# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_list_datasets():
    names = list_datasets()
    for name in ("digits", "synthetic2d", "cifar10", "cifar100", "eurosat", "tinyimagenet", "npz"):
        assert name in names
    assert names == sorted(names)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as info:
        load_dataset("mnist-not-here")
    message = str(info.value)
    assert "mnist-not-here" in message
    for name in list_datasets():
        assert name in message


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="bogus"):
        load_dataset("digits", bogus=1)


def test_default_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RELAXPLUG_DATA", str(tmp_path / "here"))
    assert D.default_root() == tmp_path / "here"
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "here" / "cifar-10-batches-py")):
        load_dataset("cifar10")
    monkeypatch.delenv("RELAXPLUG_DATA")
    assert D.default_root().parts[-2:] == (".relaxplug", "data")


# --------------------------------------------------------------------------------------------
# digits, synthetic2d
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_digits_shapes_and_ranges(digits):
    assert isinstance(digits, DatasetSplits)
    assert digits.name == "digits" and digits.n_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert digits.class_names == tuple(str(i) for i in range(10))
    assert digits.groupings == {}
    assert len(digits.train) + len(digits.test) == 1797
    assert len(digits.train) == 1198 and len(digits.test) == 599
    x, y = digits.train[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 8, 8) and isinstance(y, int)
    xs = torch.stack([digits.train[i][0] for i in range(len(digits.train))])
    assert xs.min() >= 0 and xs.max() <= 1 and xs.max() == 1
    labels = {digits.test[i][1] for i in range(len(digits.test))}
    assert labels == set(range(10))


def test_digits_deterministic_and_disjoint(digits):
    again = load_dataset("digits")
    assert torch.equal(digits.train.x, again.train.x) and torch.equal(digits.test.targets, again.test.targets)
    # train and test are a partition of the 1797 images (compare by exact pixel rows).
    from sklearn.datasets import load_digits

    full = torch.as_tensor(load_digits().images / 16.0, dtype=torch.float32).reshape(-1, 64)
    rows = torch.cat([digits.train.x.reshape(-1, 64), digits.test.x.reshape(-1, 64)])
    assert torch.equal(rows.sort(dim=0).values, full.sort(dim=0).values)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.train.x, digits.train.x)


def test_synthetic2d_deterministic_and_shapes():
    a = load_dataset("synthetic2d", seed=3)
    b = load_dataset("synthetic2d", seed=3)
    c = load_dataset("synthetic2d", seed=4)
    assert a.input_shape == (2,) and a.n_classes == 4
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.train.x, c.train.x)
    assert len(a.train) == 4 * 300 and len(a.test) == 4 * 150
    assert not torch.equal(a.train.x[: len(a.test)], a.test.x)
    x, y = a.train[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == (2,) and isinstance(y, int)
    assert a.train.x.abs().max() <= 1.5
    assert a.groupings == {"overlap_pairs": ((0, 1), (2, 3))}
    small = load_dataset("synthetic2d", n_per_class=10, n_classes=3, n_test_per_class=4)
    assert len(small.train) == 30 and len(small.test) == 12 and small.n_classes == 3


def test_synthetic2d_pairs_overlap_and_others_separate():
    data = load_dataset("synthetic2d")
    x, y = data.train.x.numpy(), data.train.targets.numpy()
    means = np.stack([x[y == c].mean(0) for c in range(4)])

    def pair_accuracy(a, b):
        """Nearest-mean accuracy between classes a and b (Bayes-optimal for equal spherical Gaussians)."""
        mask = (y == a) | (y == b)
        pts, lab = x[mask], y[mask]
        da = ((pts - means[a]) ** 2).sum(1)
        db = ((pts - means[b]) ** 2).sum(1)
        return float(np.mean(np.where(da < db, a, b) == lab))

    assert pair_accuracy(0, 1) < 0.85 and pair_accuracy(2, 3) < 0.85  # strong overlap
    assert pair_accuracy(0, 2) > 0.97 and pair_accuracy(1, 3) > 0.97  # well separated


# --------------------------------------------------------------------------------------------
# CIFAR-100 class tables
# --------------------------------------------------------------------------------------------


def test_cifar100_coarse_is_partition():
    assert len(CIFAR100_FINE_NAMES) == 100 and len(set(CIFAR100_FINE_NAMES)) == 100
    assert list(CIFAR100_FINE_NAMES) == sorted(CIFAR100_FINE_NAMES)  # official order is alphabetical
    assert len(CIFAR100_COARSE_NAMES) == 20
    assert len(CIFAR100_COARSE) == 20
    assert all(len(group) == 5 for group in CIFAR100_COARSE)
    flat = [f for group in CIFAR100_COARSE for f in group]
    assert sorted(flat) == list(range(100))


def _coarse_of(fine_name):
    index = CIFAR100_FINE_NAMES.index(fine_name)
    return next(CIFAR100_COARSE_NAMES[c] for c, g in enumerate(CIFAR100_COARSE) if index in g)


@pytest.mark.parametrize(
    "superclass, members",
    [
        ("fruit_and_vegetables", ["apple", "mushroom", "orange", "pear", "sweet_pepper"]),
        ("aquatic_mammals", ["beaver", "dolphin", "otter", "seal", "whale"]),
        ("people", ["baby", "boy", "girl", "man", "woman"]),
        ("vehicles_2", ["lawn_mower", "rocket", "streetcar", "tank", "tractor"]),
        ("non-insect_invertebrates", ["crab", "lobster", "snail", "spider", "worm"]),
    ],
)
def test_cifar100_known_memberships(superclass, members):
    c = CIFAR100_COARSE_NAMES.index(superclass)
    assert CIFAR100_COARSE[c] == tuple(sorted(CIFAR100_FINE_NAMES.index(m) for m in members))
    for m in members:
        assert _coarse_of(m) == superclass


# --------------------------------------------------------------------------------------------
# CIFAR on-disk pickles
# --------------------------------------------------------------------------------------------


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _write_cifar10(root, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        entry = {
            b"batch_label": name.encode(),
            b"labels": [(i + j) % 10 for j in range(n_per_batch)],
            b"data": _images(n_per_batch, i),
            b"filenames": [f"img{j}.png".encode() for j in range(n_per_batch)],
        }
        _dump(folder / name, entry)
        batches[name] = entry
    _dump(folder / "batches.meta", {b"num_cases_per_batch": n_per_batch, b"label_names": [n.encode() for n in D.CIFAR10_CLASS_NAMES], b"num_vis": 3072})
    return batches


def test_cifar10_reads_pickles(tmp_path):
    batches = _write_cifar10(tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert data.n_classes == 10 and data.input_shape == (3, 32, 32)
    assert data.class_names == D.CIFAR10_CLASS_NAMES
    assert data.groupings == {"vehicles_animals": ((0, 1, 8, 9), (2, 3, 4, 5, 6, 7))}
    assert len(data.train) == 20 and len(data.test) == 4
    x, y = data.train[5]  # batch 2, image 1
    expected = torch.from_numpy(batches["data_batch_2"][b"data"][1].reshape(3, 32, 32).astype(np.float32) / 255)
    assert x.dtype == torch.float32 and torch.allclose(x, expected)
    assert y == batches["data_batch_2"][b"labels"][1]
    x, y = data.test[3]
    assert torch.allclose(x, torch.from_numpy(batches["test_batch"][b"data"][3].reshape(3, 32, 32) / 255).float())
    assert y == batches["test_batch"][b"labels"][3]


def test_cifar10_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar10", tmp_path)
    assert "cifar10" in str(info.value) and str(tmp_path / "cifar-10-batches-py") in str(info.value)
    assert "cifar-10-python.tar.gz" in str(info.value)
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_verify_rejects_unofficial_files(tmp_path):
    _write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="md5"):
        load_dataset("cifar10", tmp_path, verify=True)


def _write_cifar100(root, n_train=12, n_test=6, bytes_keys=False):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_to_coarse = {f: c for c, g in enumerate(CIFAR100_COARSE) for f in g}
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    entries = {}
    for seed, (name, n) in enumerate([("train", n_train), ("test", n_test)]):
        fine = [int(v) for v in np.random.default_rng(seed + 10).integers(0, 100, size=n)]
        entry = {
            key("filenames"): [f"{name}{j}.png" for j in range(n)],
            key("batch_label"): f"{name} batch",
            key("fine_labels"): fine,
            key("coarse_labels"): [fine_to_coarse[f] for f in fine],
            key("data"): _images(n, seed + 20),
        }
        _dump(folder / name, entry)
        entries[name] = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    _dump(folder / "meta", {key("fine_label_names"): list(CIFAR100_FINE_NAMES), key("coarse_label_names"): list(CIFAR100_COARSE_NAMES)})
    return entries


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar100_fine_and_coarse(tmp_path, bytes_keys):
    entries = _write_cifar100(tmp_path, bytes_keys=bytes_keys)
    fine = load_dataset("cifar100", tmp_path)
    assert fine.n_classes == 100 and fine.input_shape == (3, 32, 32)
    assert fine.class_names == CIFAR100_FINE_NAMES
    assert fine.groupings == {"coarse": CIFAR100_COARSE}
    assert len(fine.train) == 12 and len(fine.test) == 6
    assert [fine.train[i][1] for i in range(12)] == entries["train"]["fine_labels"]
    coarse = load_dataset("cifar100", tmp_path, labels="coarse")
    assert coarse.n_classes == 20 and coarse.class_names == CIFAR100_COARSE_NAMES and coarse.groupings == {}
    assert [coarse.train[i][1] for i in range(12)] == entries["train"]["coarse_labels"]
    assert [coarse.test[i][1] for i in range(6)] == entries["test"]["coarse_labels"]
    assert torch.equal(coarse.test[2][0], fine.test[2][0])
    with pytest.raises(ValueError, match="fine"):
        load_dataset("cifar100", tmp_path, labels="superclass")


def test_cifar100_matches_torchvision_reader(tmp_path, monkeypatch):
    """Our reader gives what torchvision's CIFAR100 + ToTensor gives on the same files
    (torchvision's md5 checks bypassed for the fake files)."""
    import torchvision.datasets.cifar as tv_cifar
    from torchvision.transforms import ToTensor

    _write_cifar100(tmp_path)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    reference = tv_cifar.CIFAR100(str(tmp_path), train=False, download=False, transform=ToTensor())
    ours = load_dataset("cifar100", tmp_path).test
    assert len(reference) == len(ours)
    for i in range(len(ours)):
        assert torch.allclose(reference[i][0], ours[i][0]) and reference[i][1] == ours[i][1]
    assert tuple(reference.classes) == CIFAR100_FINE_NAMES


def test_cifar100_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("cifar100", tmp_path)
    assert "cifar100" in str(info.value) and str(tmp_path / "cifar-100-python") in str(info.value)


def test_cifar100_nonstandard_coarse_table_warns(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        _dump(folder / name, {"data": _images(2, 0), "fine_labels": [0, 1], "coarse_labels": [7, 7]})
    with pytest.warns(UserWarning, match="fine->coarse"):
        data = load_dataset("cifar100", tmp_path)
    assert "coarse" not in data.groupings  # incomplete files: no grouping can be derived


# --------------------------------------------------------------------------------------------
# EuroSAT, Tiny ImageNet (JPEG folders)
# --------------------------------------------------------------------------------------------


def _color(index):
    return (20 * index + 10, 255 - 20 * index, 128)


def _write_jpeg(path, color, size=(64, 64), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    value = color if mode == "RGB" else color[0]
    Image.new(mode, size, value).save(path, quality=95)


def _write_eurosat(folder, per_class=3):
    for c, name in enumerate(D.EUROSAT_CLASS_NAMES):
        for j in range(per_class):
            _write_jpeg(folder / name / f"{name}_{j + 1}.jpg", _color(c))


@pytest.mark.parametrize("layout", ["eurosat/2750", "2750"])
def test_eurosat_reads_folders(tmp_path, layout):
    _write_eurosat(tmp_path / layout)
    data = load_dataset("eurosat", tmp_path)
    assert data.n_classes == 10 and data.input_shape == (3, 64, 64)
    assert data.class_names == D.EUROSAT_CLASS_NAMES
    assert data.groupings == {"highway_river": ((3, 8),)}
    assert len(data.train) == 20 and len(data.test) == 10
    for dataset in (data.train, data.test):
        for i in range(len(dataset)):
            x, y = dataset[i]
            assert x.dtype == torch.float32 and tuple(x.shape) == (3, 64, 64) and isinstance(y, int)
            expected = torch.tensor(_color(y), dtype=torch.float32) / 255
            assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=0.03)
    again = load_dataset("eurosat", tmp_path)
    assert again.train.paths == data.train.paths and again.test.targets == data.test.targets
    assert set(data.train.paths).isdisjoint(data.test.paths)


def test_eurosat_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("eurosat", tmp_path)
    assert "eurosat" in str(info.value) and str(tmp_path / "eurosat" / "2750") in str(info.value)


def _write_tinyimagenet(root):
    base = root / "tiny-imagenet-200"
    wnids = ["n02124075", "n01443537", "n09999999"]  # deliberately unsorted in wnids.txt
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn02124075\tEgyptian cat\nn00000001\tunused\n"
    )
    order = sorted(wnids)
    for w in wnids:
        c = order.index(w)
        for j in range(2):
            _write_jpeg(base / "train" / w / "images" / f"{w}_{j}.JPEG", _color(c))
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    # val: one grey image and one of the wrong size, to check RGB conversion and resizing
    lines = []
    for j, w in enumerate(["n09999999", "n01443537", "n02124075"]):
        c = order.index(w)
        name = f"val_{j}.JPEG"
        if j == 0:
            _write_jpeg(base / "val" / "images" / name, (90, 90, 90), mode="L")
        elif j == 1:
            _write_jpeg(base / "val" / "images" / name, _color(c), size=(32, 48))
        else:
            _write_jpeg(base / "val" / "images" / name, _color(c))
        lines.append(f"{name}\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return order


def test_tinyimagenet_reads_layout(tmp_path):
    order = _write_tinyimagenet(tmp_path)
    data = load_dataset("tinyimagenet", tmp_path)
    assert data.n_classes == 3 and data.input_shape == (3, 64, 64)
    assert data.class_names == ("goldfish", "Egyptian cat", "n09999999")
    assert order == ["n01443537", "n02124075", "n09999999"]
    assert len(data.train) == 6 and len(data.test) == 3
    assert [data.test[i][1] for i in range(3)] == [2, 0, 1]
    for i in range(len(data.train)):
        x, y = data.train[i]
        assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(_color(y), dtype=torch.float32) / 255, atol=0.03)
    grey, _ = data.test[0]
    assert tuple(grey.shape) == (3, 64, 64) and torch.allclose(grey, torch.full_like(grey, 90 / 255), atol=0.03)
    resized, _ = data.test[1]
    assert tuple(resized.shape) == (3, 64, 64)


def test_tinyimagenet_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("tinyimagenet", tmp_path)
    assert str(tmp_path / "tiny-imagenet-200") in str(info.value)
    _write_tinyimagenet(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val_annotations.txt"):
        load_dataset("tinyimagenet", tmp_path)


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------


def test_npz_uint8_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8)
    path = tmp_path / "set.npz"
    np.savez(path, x_train=x_train, y_train=np.array([0, 1, 2, 0, 1, 2]), x_test=x_test,
             y_test=np.array([2, 1]), class_names=np.array(["a", "b", "c"]))
    data = load_dataset("npz", path=str(path))
    assert data.input_shape == (3, 5, 4) and data.n_classes == 3 and data.class_names == ("a", "b", "c")
    x, y = data.train[1]
    assert x.dtype == torch.float32 and y == 1
    assert torch.allclose(x, torch.from_numpy(x_train[1].transpose(2, 0, 1).astype(np.float32) / 255))
    assert data.test[0][1] == 2


def test_npz_float_vectors_relative_to_root(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.normal(size=(10, 5)).astype(np.float64)
    np.savez(tmp_path / "acas.npz", x_train=x_train, y_train=np.arange(10) % 5,
             x_test=rng.normal(size=(4, 5)), y_test=np.array([0, 1, 2, 4]))
    data = load_dataset("npz", tmp_path, path="acas.npz")
    assert data.input_shape == (5,) and data.n_classes == 5
    assert data.class_names == ("0", "1", "2", "3", "4")
    x, y = data.train[3]
    assert x.dtype == torch.float32 and torch.allclose(x, torch.from_numpy(x_train[3]).float()) and y == 3


def test_npz_float_nchw_and_explicit_classes(tmp_path):
    x = np.random.default_rng(2).random((3, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "img.npz", x_train=x, y_train=np.array([0, 1, 0]), x_test=x[:1], y_test=np.array([1]))
    data = load_dataset("npz", path=tmp_path / "img.npz", n_classes=4)
    assert data.input_shape == (1, 4, 4) and data.n_classes == 4
    assert torch.equal(data.train[2][0], torch.from_numpy(x[2]))


def test_npz_errors(tmp_path):
    good = dict(x_train=np.zeros((3, 2), np.float32), y_train=np.array([0, 1, 1]),
                x_test=np.zeros((2, 2), np.float32), y_test=np.array([0, 1]))
    with pytest.raises(ValueError, match="path"):
        load_dataset("npz", tmp_path)
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_dataset("npz", tmp_path, path="nothere.npz")

    def write(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    missing = write("missing.npz", **{k: v for k, v in good.items() if k != "y_test"})
    with pytest.raises(ValueError, match="y_test"):
        load_dataset("npz", path=missing)
    mismatched = write("mismatch.npz", **{**good, "y_train": np.array([0, 1])})
    with pytest.raises(ValueError, match="x_train has 3 rows but y_train has 2"):
        load_dataset("npz", path=mismatched)
    out_of_range = write("range.npz", **{**good, "y_test": np.array([0, 5])}, class_names=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        load_dataset("npz", path=out_of_range)
    negative = write("negative.npz", **{**good, "y_train": np.array([0, -1, 1])})
    with pytest.raises(ValueError, match="labels must lie"):
        load_dataset("npz", path=negative)
    shapes = write("shapes.npz", **{**good, "x_test": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="shapes differ"):
        load_dataset("npz", path=shapes)


def _write_npz(path, x_train, y_train, x_test=None, y_test=None, **extra):
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_train if x_test is None else x_test,
             y_test=y_train if y_test is None else y_test, **extra)
    return path


def test_npz_float_images_outside_unit_range_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(4, 3, 4, 4)).astype(np.float32)  # 0-255 floats: a common slip
    path = _write_npz(tmp_path / "raw.npz", pixels, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\].*divide by 255"):
        load_dataset("npz", path=path)
    negative = _write_npz(tmp_path / "neg.npz", pixels / 255 - 0.5, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values in \[-0.5"):
        load_dataset("npz", path=negative)
    nan = pixels / 255
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_dataset("npz", path=_write_npz(tmp_path / "nan.npz", nan, np.array([0, 1, 2, 3])))
    scaled = load_dataset("npz", path=_write_npz(tmp_path / "ok.npz", pixels / 255, np.array([0, 1, 2, 3])))
    assert float(scaled.test[0][0].max()) <= 1.0
    vectors = load_dataset("npz", path=_write_npz(tmp_path / "vec.npz", rng.normal(size=(4, 5)) * 100, np.array([0, 1, 0, 1])))
    assert vectors.input_shape == (5,)  # vectors (ACAS Xu inputs) are taken as they are


def test_npz_class_count_comes_from_the_model_not_the_largest_label(tmp_path):
    x = np.zeros((4, 1, 2, 2), dtype=np.float32)
    subset = load_dataset("npz", path=_write_npz(tmp_path / "subset.npz", x, np.array([0, 3, 8, 8])))
    assert subset.n_classes == 9 and subset.classes_from_labels
    fitted = D.fit_class_count(subset, 10)  # a valid subset of a 10-class model's classes
    assert fitted.n_classes == 10 and fitted.class_names == tuple(str(i) for i in range(10))
    assert D.fit_class_count(fitted, 10) is fitted
    beyond = load_dataset("npz", path=_write_npz(tmp_path / "beyond.npz", x, np.array([0, 1, 15, 2])))
    with pytest.raises(ValueError, match=r"labels up to 15, but the checkpoint has 10 classes"):
        D.fit_class_count(beyond, 10, "the checkpoint")
    named = load_dataset("npz", path=_write_npz(tmp_path / "named.npz", x, np.array([0, 1, 2, 1]),
                                                 class_names=np.array(["a", "b", "c"])))
    with pytest.raises(ValueError, match="has 3 classes, the model 10"):  # declared names: counts must agree
        D.fit_class_count(named, 10)
    with pytest.raises(ValueError, match="has 10 classes, the model 12"):
        D.fit_class_count(load_dataset("digits"), 12)


def test_a_npz_file_is_accepted_where_a_data_set_name_is(tmp_path):
    x = np.zeros((2, 1, 2, 2), dtype=np.float32)
    path = _write_npz(tmp_path / "mine.npz", x, np.array([0, 1]))
    assert load_dataset(str(path)).name == "npz"
    with pytest.raises(ValueError, match="is a file and option path"):
        load_dataset(str(path), path="other.npz")

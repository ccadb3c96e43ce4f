"""Label groups from logit-layer weights: planted groups are recovered, the grouping is
deterministic, the YAML serves affinity/superclass/igrp, the PNG and the CLI command work."""


import numpy as np
import pytest
import torch

from relaxplug.adapters import IGRP, resolve_guarantee
from relaxplug.cli import main
from relaxplug.training.config import TrainConfig
from relaxplug.groups import (
    LINKAGES,
    class_distances,
    class_similarity,
    cluster_classes,
    format_groups,
    groups_from_model,
    groups_to_yaml,
    head_weight,
    plot_similarity,
    write_groups,
)
from relaxplug.training.trainer import train


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU they oversubscribe it
    (measured here: 0.2 s with one thread, 30 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def planted_weights(planted, d=24, spread=0.25, seed=0):
    """Rows ``w_c = centre[planted[c]] + noise``: classes planted in one group share a centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(planted) + 1, d))
    return centres[np.asarray(planted)] + spread * rng.normal(size=(len(planted), d))


def as_partition(labels):
    groups = {}
    for c, g in enumerate(labels):
        groups.setdefault(g, []).append(c)
    return tuple(sorted(tuple(v) for v in groups.values()))


@pytest.mark.parametrize("linkage", LINKAGES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_groups_are_recovered(linkage, seed):
    planted = [0, 1, 2, 0, 3, 1, 2, 0, 3, 1, 2, 2]
    metric = "euclidean" if linkage == "ward" else "cosine"
    grouping = cluster_classes(planted_weights(planted, seed=seed), 4, linkage, metric)
    assert tuple(sorted(grouping.groups)) == as_partition(planted)
    assert sorted(c for g in grouping.groups for c in g) == list(range(len(planted)))


def test_planted_groups_under_every_metric_and_a_random_class_order():
    planted = [2, 0, 1, 1, 0, 2, 0, 1, 2, 0]
    weights = planted_weights(planted, seed=5)
    for metric in ("cosine", "euclidean", "correlation"):
        assert tuple(sorted(cluster_classes(weights, 3, "average", metric).groups)) == as_partition(planted)


def test_noise_beyond_the_planted_structure_is_detected():
    """With the noise far above the centres' spread the clustering no longer matches (the test
    above is not passing trivially)."""
    planted = [0, 1, 2, 0, 3, 1, 2, 0, 3, 1, 2, 2]
    misses = sum(tuple(sorted(cluster_classes(planted_weights(planted, spread=5.0, seed=s), 4).groups)) != as_partition(planted)
                 for s in range(5))
    assert misses >= 3


def test_groups_are_canonical_and_exactly_n_groups():
    weights = planted_weights([0, 1, 0, 1, 2, 2, 1], seed=3)
    for g in range(1, 8):
        groups = cluster_classes(weights, g).groups
        assert len(groups) == g
        assert all(list(m) == sorted(m) for m in groups)
        assert [m[0] for m in groups] == sorted(m[0] for m in groups)
    assert cluster_classes(weights, 1).groups == (tuple(range(7)),)
    assert cluster_classes(weights, 7).groups == tuple((c,) for c in range(7))


def test_distances_and_similarity():
    w = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    cos = class_similarity(w, "cosine")
    assert cos[0, 2] == pytest.approx(1.0) and cos[0, 1] == pytest.approx(0.0)
    assert class_distances(w, "euclidean")[0, 2] == pytest.approx(2.0)
    assert class_similarity(w, "euclidean")[1, 2] == pytest.approx(-np.sqrt(13))


@pytest.mark.parametrize("kwargs, message", [
    ({"n_groups": 0}, "n_groups"),
    ({"n_groups": 7}, "n_groups"),
    ({"n_groups": 2, "linkage": "centroid"}, "linkage"),
    ({"n_groups": 2, "linkage": "ward", "metric": "cosine"}, "ward"),
    ({"n_groups": 2, "metric": "manhattan"}, "metric"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cluster_classes(planted_weights([0, 1, 0, 1, 2, 2]), **kwargs)


def test_bad_weights():
    with pytest.raises(ValueError, match="NaN"):
        cluster_classes(np.array([[1.0, np.nan], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="constant"):
        cluster_classes(np.array([[0.0, 0.0], [0.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="n >= 2"):
        cluster_classes(np.ones((1, 3)), 1)


def test_head_weight_is_the_last_linear_layer():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    assert torch.equal(head_weight(model), model[2].weight.detach().double())
    with pytest.raises(ValueError, match="no nn.Linear"):
        head_weight(torch.nn.Sequential(torch.nn.ReLU()))


def test_yaml_serves_affinity_superclass_and_igrp(tmp_path):
    groups = ((0, 3), (1, 2, 4))
    path = write_groups(tmp_path / "groups.yaml", groups, ("0", "1", "2", "3", "4"), "test")
    assert "class_names" not in path.read_text()  # index-named classes are written as indices
    assert resolve_guarantee(f"affinity:{path}").sets == groups
    assert resolve_guarantee(f"superclass:{path}").sets == groups
    g = resolve_guarantee(f"igrp:{path}@0.05,0.2")
    assert isinstance(g, IGRP) and g.groups == groups and g.radii() == (0.05, 0.2)
    named = tmp_path / "named.yaml"
    names = ("cat", "dog", "car", "truck", "ship")
    write_groups(named, groups, names)
    text = named.read_text()
    assert "cat" in text and "truck" in text
    assert resolve_guarantee(f"igrp:{named}@0,0.1").groups == groups
    assert format_groups(groups, names) == "group 0: cat, truck\ngroup 1: dog, car, ship"
    assert "sets" in groups_to_yaml(groups)


def test_similarity_png(tmp_path):
    grouping = cluster_classes(planted_weights([0, 1, 0, 1, 2, 2, 1]), 3)
    path = plot_similarity(grouping, tmp_path / "sim.png", [f"c{i}" for i in range(7)])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def _natural_config(tmp_path, name, seed=0):
    return TrainConfig(name=name, dataset="digits", architecture="mlp", method="natural", epochs=3, batch_size=64,
                       lr="3e-3", seed=seed, device="cpu", limit_train=400, out_dir=str(tmp_path / name))


def test_grouping_of_a_trained_net_is_deterministic_for_a_fixed_seed(tmp_path):
    a = train(_natural_config(tmp_path, "a"), progress=False)
    b = train(_natural_config(tmp_path, "b"), progress=False)
    c = train(_natural_config(tmp_path, "c", seed=1), progress=False)
    assert torch.equal(head_weight(a.model), head_weight(b.model))
    assert not torch.equal(head_weight(a.model), head_weight(c.model))
    for g in (2, 3, 4):
        first, second = groups_from_model(a.model, g), groups_from_model(b.model, g)
        assert first.groups == second.groups
        assert groups_from_model(a.model, g).groups == first.groups  # and repeatable on one net


def test_groups_command(tmp_path, capsys):
    result = train(_natural_config(tmp_path, "nat"), progress=False)
    out = tmp_path / "groups"
    assert main(["groups", "--checkpoint", str(result.checkpoint), "--n-groups", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("group ") >= 3 and "groups.yaml" in printed
    g = resolve_guarantee(f"igrp:{out / 'groups.yaml'}@0.01,0.05")
    assert len(g.groups) == 3 and sorted(c for m in g.groups for c in m) == list(range(10))
    assert g.groups == groups_from_model(result.model, 3).groups
    assert (out / "similarity.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["groups", "--checkpoint", str(result.checkpoint), "--n-groups", "11", "--out", str(out)]) == 2
    assert "n_groups" in capsys.readouterr().err

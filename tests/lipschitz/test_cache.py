"""ComputationSnapshot: a cache key on what the model computes."""

import torch
from torch import nn

from relaxplug.lipschitz.cache import MAX_DEPTH, ComputationSnapshot


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_value_changes_that_keep_version_counters_are_seen():
    model = _model()
    snap = ComputationSnapshot(model)
    assert snap.matches(model)
    version = model[0].weight._version
    model[0].weight.data[0, 0] += 1.0
    assert model[0].weight._version == version and not snap.matches(model)


def test_structure_changes_are_seen_and_training_flag_is_not():
    model = _model()
    snap = ComputationSnapshot(model, contents=False)
    model.train()
    assert snap.same_structure(model)
    model[1] = nn.Tanh()
    assert not snap.same_structure(model)


def test_attributes_closures_and_power_vectors():
    model = _model()
    scale = [2.0]
    model.fn = lambda x: x * scale[0]
    snap = ComputationSnapshot(model)
    scale[0] = 3.0  # a value in the closure
    assert not snap.matches(model)
    snap = ComputationSnapshot(model)
    model[0].register_buffer("lipschitz_u_in", torch.ones(3))  # training state, not the computation
    assert snap.matches(model)


def test_uncapturable_attributes_disable_the_cache():
    nested = current = {}
    for _ in range(MAX_DEPTH + 1):
        current["x"] = {}
        current = current["x"]
    model = _model()
    model.config = nested
    snap = ComputationSnapshot(model)
    assert not snap.matches(model)


def test_dtype_and_float_settings_are_part_of_the_key():
    model = _model()
    snap = ComputationSnapshot(model, contents=False)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not snap.same_structure(model)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert snap.same_structure(model)
    model.double()
    assert not snap.same_structure(model)


def test_certify_compares_the_cached_analysis_with_the_model_once_per_call(monkeypatch) -> None:
    """GloRo's bounds and radius read the sound analysis three times; inside ``certify`` only the
    first read compares it with the model (``checked_once``), and the next call compares again, so
    a write through ``.data`` between calls is still seen."""
    import relaxplug as rp
    from relaxplug.lipschitz.cache import ComputationSnapshot

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x = torch.randn(5, 6)
    first = rp.certify(model, x, 0.1, radius=True)
    calls = []
    original = ComputationSnapshot.matches
    monkeypatch.setattr(ComputationSnapshot, "matches", lambda self, m: calls.append(1) or original(self, m))
    again = rp.certify(model, x, 0.1, radius=True)
    assert len(calls) == 1
    assert torch.equal(again.margin, first.margin)
    model[2].weight.data.mul_(3.0)
    changed = rp.certify(model, x, 0.1, radius=True)
    assert len(calls) == 2
    assert not torch.allclose(changed.radius, first.radius)

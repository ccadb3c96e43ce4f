"""GloRo certificates against the definition (linear models are exact) and against attacks."""

import pytest
import torch
from torch import nn

import relaxplug as rp
from relaxplug.attacks.pgd import pgd_set_attack
from relaxplug.models.layers import InvertibleDownsample, MinMax, Residual
from relaxplug.lipschitz import LipschitzEstimator, UnsupportedLayerError, estimator_for

from ..brute_force import certify_linear

GUARANTEES = [
    ("standard", "standard", {}),
    ("rtk:2", "rtk", {"K": 2}),
    ("rtk:4", "rtk", {"K": 4}),
    ("affinity:0,1;1,2,3", "affinity", {"sets": [[0, 1], [1, 2, 3]]}),
    ("affinity:0,2,4;1,3", "affinity", {"sets": [[0, 2, 4], [1, 3]]}),
]


def _linear_model(n=6, d=5, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, n)).double()
    return model


@pytest.mark.parametrize("name, kind, kwargs", GUARANTEES)
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2, 0.6])
def test_linear_model_equals_definition(name, kind, kwargs, eps):
    model = _linear_model()
    x = torch.randn(64, 5, dtype=torch.float64)
    cert = rp.certify(model, x, eps=eps, certifier="gloro", guarantee=name)
    W = model[0].weight.tolist()
    b = model[0].bias.tolist()
    for row in range(x.shape[0]):
        certified, k, top, margin = certify_linear(W, b, x[row].tolist(), eps, kind, **kwargs)
        assert bool(cert.certified[row]) == certified
        assert int(cert.k[row]) == k
        assert set(torch.nonzero(cert.classes[row]).flatten().tolist()) == top
        assert cert.margin[row].item() == pytest.approx(margin, abs=1e-9)


@pytest.mark.parametrize("name, kind, kwargs", GUARANTEES)
def test_ties_are_never_certified_as_separated(name, kind, kwargs):
    model = _linear_model()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([3.0, 3.0, 1.0, 1.0, -2.0, -2.0]))
    x = torch.zeros(1, 5, dtype=torch.float64)
    for eps in (0.0, 0.01):
        cert = rp.certify(model, x, eps=eps, certifier="gloro", guarantee=name)
        certified, k, top, _ = certify_linear(model[0].weight.tolist(), model[0].bias.tolist(), [0.0] * 5, eps, kind, **kwargs)
        assert bool(cert.certified[0]) == certified and int(cert.k[0]) == k
        if certified:
            assert set(torch.nonzero(cert.classes[0]).flatten().tolist()) == top
        # the tied pair (0, 1) can never be split at k = 1
        assert int(cert.k[0]) != 1


@pytest.mark.parametrize("name", [g[0] for g in GUARANTEES])
def test_radius_is_the_certification_threshold(name):
    model = _linear_model().float()
    x = torch.randn(128, 5)
    radius = rp.certify(model, x, eps=0.0, certifier="gloro", guarantee=name).radius
    assert torch.isfinite(radius).all() and (radius >= 0).all()
    below = rp.certify(model, x, eps=0.0, certifier="gloro", guarantee=name, radius=False)
    for scale in (0.98, 1.02):
        for row in range(0, 128, 7):
            r = radius[row].item()
            if r == 0:
                assert not below.certified[row]
                continue
            cert = rp.certify(model, x[row : row + 1], eps=r * scale, certifier="gloro", guarantee=name, radius=False)
            assert bool(cert.certified[0]) == (scale < 1)


def _nonlinear_nets():
    torch.manual_seed(3)
    dense = nn.Sequential(nn.Linear(4, 32), MinMax(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 6))
    conv = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), MinMax(), InvertibleDownsample(2),
        nn.Conv2d(32, 8, 3, stride=2, padding=1), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), MinMax())),
        nn.Flatten(), nn.Linear(32, 6),
    )
    return [(dense, (4,)), (conv, (1, 8, 8))]


@pytest.mark.parametrize("net_index", [0, 1])
@pytest.mark.parametrize("name", ["standard", "rtk:3", "affinity:0,1;2,3,4"])
def test_attack_never_breaks_a_certified_set(net_index, name):
    model, shape = _nonlinear_nets()[net_index]
    x = torch.randn(96, *shape)
    # pick eps so that a good share of points is certified but not all
    radius = rp.certify(model, x, eps=0.0, certifier="gloro", guarantee=name).radius
    eps = float(radius.median()) * 1.0
    cert = rp.certify(model, x, eps=eps, certifier="gloro", guarantee=name)
    assert 0 < int(cert.certified.sum()) < len(x)
    idx = cert.certified.nonzero().flatten()
    worst, x_adv = pgd_set_attack(model, x[idx], cert.classes[idx], eps, norm=2, steps=40, restarts=2)
    assert ((x_adv - x[idx]).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()
    assert (worst > 0).all(), f"certificate broken at rows {idx[worst <= 0].tolist()}"
    # the attack is strong enough to break uncertified standard sets at 4x the radius
    rejected = (~cert.certified).nonzero().flatten()
    broken, _ = pgd_set_attack(model, x[rejected], cert.classes[rejected] | torch.nn.functional.one_hot(cert.pred[rejected], cert.classes.shape[1]).bool(), 4 * eps, norm=2, steps=40)
    assert (broken <= 0).any()


def test_sound_bound_cache_follows_weight_changes():
    model = nn.Sequential(nn.Linear(3, 8), MinMax(), nn.Linear(8, 4))
    est = estimator_for(model, (3,))
    first = est.sound()
    assert est.sound() == first
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    assert est.sound() == pytest.approx(2 * first, rel=1e-6)


def test_cast_pair_matrix_is_shared_until_the_model_or_the_matrix_changes():
    """The certifier's ``(n, n)`` matrix in the model's dtype is one cached copy, not one per call;
    a weight change (also through ``.data``, which no version counter sees) and a write into the
    shared copy both rebuild it."""
    model = nn.Sequential(nn.Linear(3, 8), MinMax(), nn.Linear(8, 4))
    certifier = rp.certifiers.get_certifier("gloro")
    est = estimator_for(model, (3,))
    first = certifier.pair_lipschitz(model, (3,))
    assert first.dtype == torch.float32 and torch.equal(first, est.pair_lipschitz().float())
    assert certifier.pair_lipschitz(model, (3,)) is first  # no copy per call
    model[2].weight.data[1] *= 3.0
    changed = certifier.pair_lipschitz(model, (3,))
    assert changed is not first and torch.equal(changed, est.pair_lipschitz().float())
    assert not torch.equal(changed, first)
    changed.mul_(0.5)  # a caller writing into the shared matrix
    rebuilt = certifier.pair_lipschitz(model, (3,))
    assert torch.equal(rebuilt, est.pair_lipschitz().float())
    power = rp.certifiers.get_certifier("gloro", lipschitz="power").pair_lipschitz(model, (3,))
    assert power is not rebuilt and bool((power <= rebuilt).all())


def test_sound_bound_is_above_power_iteration():
    model = _nonlinear_nets()[1][0]
    est = estimator_for(model, (1, 8, 8))
    assert est.sound() >= est.converged()


def test_unsupported_layer_is_named():
    # Tanh and heads other than nn.Linear are bounded by relaxplug.lipschitz.graph since issue 5;
    # a layer with no global Lipschitz bound is still named
    model = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    with pytest.raises(UnsupportedLayerError, match="LayerNorm"):
        rp.certify(model, torch.randn(2, 3), eps=0.1)
    # GloRo training's head split needs a final nn.Linear module
    headless = nn.Sequential(nn.Linear(3, 4), nn.ReLU())  # the estimator holds the model weakly: keep it alive
    with pytest.raises(UnsupportedLayerError, match="nn.Linear"):
        LipschitzEstimator(headless, (3,)).head


def test_bad_inputs_fail_early():
    model = _linear_model().float()
    with pytest.raises(ValueError, match="NaN"):
        rp.certify(model, torch.tensor([[float("nan")] * 5]), eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        rp.certify(model, torch.randn(2, 5), eps=-1)
    with pytest.raises(ValueError, match="supports norms"):
        rp.certify(model, torch.randn(2, 5), eps=0.1, norm="inf", certifier="gloro")
    with pytest.raises(ValueError, match="unknown certifier"):
        rp.certify(model, torch.randn(2, 5), eps=0.1, certifier="nope")
    with pytest.raises(ValueError, match="out of range"):
        rp.certify(model, torch.randn(2, 5), eps=0.1, guarantee="affinity:0,9")


def test_certificate_fields_shapes():
    model = _linear_model().float()
    cert = rp.certify(model, torch.randn(7, 5), eps=0.1, guarantee="rtk:3")
    assert cert.pred.shape == (7,) and cert.pred.dtype == torch.long
    assert cert.certified.dtype == torch.bool and cert.k.dtype == torch.long
    assert cert.classes.shape == (7, 6) and cert.margin.shape == (7,) and cert.radius.shape == (7,)
    assert ((cert.k == 0) == ~cert.certified).all()
    assert (cert.classes.sum(1) == cert.k).all()


def _graph_nets():
    """Models outside the layer stacks: bounded through their torch.fx graph."""
    torch.manual_seed(8)
    conv = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5),
    )
    dense = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 6))
    for model in (conv, dense):
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    m.running_var.uniform_(0.5, 2.0)
                    m.running_mean.normal_(0, 0.3)
                    m.weight.uniform_(0.5, 1.5)
    return [(conv.eval(), (1, 6, 6)), (dense.eval(), (4,))]


@pytest.mark.parametrize("net_index", [0, 1])
def test_graph_model_radius_is_the_certification_threshold(net_index):
    model, shape = _graph_nets()[net_index]
    x = torch.randn(40, *shape)
    radius = rp.certify(model, x, eps=0.0, certifier="gloro", guarantee="rtk:2").radius
    assert torch.isfinite(radius).all() and (radius > 0).any()
    for row in range(0, 40, 6):
        r = radius[row].item()
        if r == 0:
            continue
        for scale in (0.98, 1.02):
            cert = rp.certify(model, x[row : row + 1], eps=r * scale, certifier="gloro", guarantee="rtk:2", radius=False)
            assert bool(cert.certified[0]) == (scale < 1)


@pytest.mark.parametrize("net_index", [0, 1])
@pytest.mark.parametrize("name", ["standard", "rtk:3"])
def test_attack_never_breaks_a_graph_model_certificate(net_index, name):
    model, shape = _graph_nets()[net_index]
    x = torch.randn(64, *shape)
    eps = float(rp.certify(model, x, eps=0.0, certifier="gloro", guarantee=name).radius.median())
    cert = rp.certify(model, x, eps=eps, certifier="gloro", guarantee=name)
    assert 0 < int(cert.certified.sum()) < len(x)
    idx = cert.certified.nonzero().flatten()
    worst, _ = pgd_set_attack(model, x[idx], cert.classes[idx], eps, norm=2, steps=40, restarts=2)
    assert (worst > 0).all(), f"certificate broken at rows {idx[worst <= 0].tolist()}"

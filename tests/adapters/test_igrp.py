"""IGRP: the certificate equals the brute-force definition on linear models, every certifier is
sound under attack on small nonlinear nets, names and files resolve, bad input fails early."""

import dataclasses
import math

import pytest
import torch
from torch import nn

import relaxplug as rp
from relaxplug.adapters import IGRP, Affinity, IGRPCertificate, Standard, rank_order, resolve_guarantee
from relaxplug.attacks.igrp_metrics import attack_group_claims, check_igrp_certificates, group_margin, igrp_summary
from relaxplug.lipschitz import LipschitzEstimator, head_distances
from relaxplug.evaluation.metrics import summarize
from relaxplug.training.losses import guarantee_margin

from ..brute_force import _norm, ranked

lirpa = pytest.importorskip("relaxplug.certifiers.lirpa", reason="auto_LiRPA is not installed", exc_type=ImportError)

GROUPS = [[0, 3], [1, 4, 5], [2]]
NORMS = {2.0: 2, math.inf: 1}  # norm -> dual norm of the exact linear-model margin


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU they oversubscribe it
    (measured here: 0.2 s with one thread, 30 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def certify_igrp_linear(W, b, x, groups, eps_in, eps_out, dual_norm):
    """IGRP from its definition, for ``f(x) = W x + b`` (plain loops).

    ``p`` = top class (ties by index); over the ball the exact minimum of ``f_p - f_i`` is
    ``f_p(x) - f_i(x) - eps ||w_p - w_i||_dual``. Verified at eps_in iff that is positive for every
    ``i != p`` at ``eps_in``; group-verified iff positive for every ``i`` outside ``p``'s group at
    ``eps_out``; certified iff both.
    """
    n = len(W)
    logits = [sum(w * v for w, v in zip(W[c], x)) + b[c] for c in range(n)]
    p = ranked(logits)[0]
    group = next(set(g) for g in groups if p in g)

    def exact(i, eps):
        return logits[p] - logits[i] - eps * _norm([a - c for a, c in zip(W[p], W[i])], dual_norm)

    m_in = min(exact(i, eps_in) for i in range(n) if i != p)
    outside = [exact(i, eps_out) for i in range(n) if i not in group]
    m_out = min(outside) if outside else math.inf
    return {"pred": p, "m_in": m_in, "m_out": m_out, "verified_in": m_in > 0, "group_verified": m_out > 0,
            "certified": m_in > 0 and m_out > 0, "group": group}


def _linear(n=6, d=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, n)).double().eval()


# ----------------------------------------------------------------------------- the definition


@pytest.mark.parametrize("certifier, norm", [("gloro", 2.0), ("crown", 2.0), ("crown", math.inf), ("ibp", math.inf),
                                             ("crown-ibp", 2.0)])
def test_certificate_equals_the_definition_on_linear_models(certifier, norm):
    model = _linear()
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    x = torch.randn(60, 5, dtype=torch.float64)
    checked = {"in": 0, "out": 0, "both": 0, "neither": 0}
    for eps_in, eps_out in ((0.0, 0.1), (0.05, 0.3), (0.2, 0.2), (0.1, 0.8)):
        guarantee = IGRP(GROUPS, eps_in, eps_out)
        cert = rp.certify(model, x, norm=norm, certifier=certifier, guarantee=guarantee)
        assert isinstance(cert, IGRPCertificate)
        for row in range(x.shape[0]):
            want = certify_igrp_linear(W, b, x[row].tolist(), GROUPS, eps_in, eps_out, NORMS[norm])
            assert int(cert.pred[row]) == want["pred"]
            assert bool(cert.verified_in[row]) == want["verified_in"], row
            assert bool(cert.group_verified[row]) == want["group_verified"], row
            assert bool(cert.certified[row]) == want["certified"], row
            assert cert.margin_in[row].item() == pytest.approx(want["m_in"], abs=1e-9)
            assert cert.margin_out[row].item() == pytest.approx(want["m_out"], abs=1e-9)
            assert cert.margin[row].item() == pytest.approx(min(want["m_in"], want["m_out"]), abs=1e-9)
            assert set(cert.group_classes[row].nonzero().flatten().tolist()) == want["group"]
            # the certified set is the prediction, at eps_in
            assert cert.classes[row].tolist() == [c == want["pred"] and want["certified"] for c in range(6)]
            assert int(cert.k[row]) == int(want["certified"])
            key = ("both" if want["certified"] else "in" if want["verified_in"] else "out" if want["group_verified"]
                   else "neither")
            checked[key] += 1
        assert cert.eps == eps_in and cert.eps_in == eps_in and cert.eps_out == eps_out
        assert torch.isnan(cert.radius).all()
    assert all(v > 0 for v in checked.values()), checked  # every outcome was exercised


def test_one_group_is_top1_at_eps_in_and_singletons_are_top1_at_eps_out():
    model = _linear(seed=2)
    x = torch.randn(80, 5, dtype=torch.float64)
    whole = rp.certify(model, x, certifier="gloro", guarantee=IGRP([list(range(6))], 0.1, 0.4))
    assert torch.isinf(whole.margin_out).all()
    standard_in = rp.certify(model, x, eps=0.1, certifier="gloro", guarantee="standard")
    assert torch.equal(whole.certified, standard_in.certified)
    singletons = rp.certify(model, x, certifier="gloro", guarantee=IGRP([[c] for c in range(6)], 0.1, 0.4))
    standard_out = rp.certify(model, x, eps=0.4, certifier="gloro", guarantee="standard")
    assert torch.equal(singletons.group_verified, standard_out.certified)
    assert torch.allclose(singletons.margin_out, standard_out.margin)


def test_outer_margin_dominates_affinity_with_the_groups_as_sets():
    """``m_out >= max_{F^k ⊆ G(p)} m^k``: IGRP's outer test certifies whatever the affinity-style
    test with the groups as sets certifies (here on random rank-form bounds)."""
    torch.manual_seed(3)
    groups = [[0, 1, 2], [3, 4], [5, 6, 7]]
    igrp, affinity = IGRP(groups, 0.1, 0.2), Affinity(groups)
    logits = torch.randn(300, 8)
    order = rank_order(logits)
    lower = torch.randn(300, 3, 8) + 1.0
    out = igrp.evaluate(order, [lower[:, :1], lower[:, :1]])
    aff = affinity.evaluate(order, [lower])
    assert (out.margin_out >= aff.margin - 1e-6).all()
    assert (out.margin_out > aff.margin + 1e-3).any()  # and strictly more on some points


def test_radii_and_scaling():
    g = IGRP(GROUPS, 0.05, 0.2)
    assert g.radii(None) == (0.05, 0.2) and g.radii(0.2) == (0.05, 0.2)
    inner, outer = g.radii(0.1)
    assert outer == 0.1 and inner == pytest.approx(0.025)
    assert IGRP(GROUPS, 0.0, 0.0).radii(0.3) == (0.0, 0.3)


def test_certify_takes_the_radii_from_the_guarantee():
    model = _linear()
    x = torch.randn(4, 5, dtype=torch.float64)
    g = IGRP(GROUPS, 0.05, 0.3)
    a = rp.certify(model, x, guarantee=g)
    b = rp.certify(model, x, 0.3, guarantee=g)
    assert torch.equal(a.margin, b.margin)
    with pytest.raises(ValueError, match="carries its own radii"):
        rp.certify(model, x, 0.2, guarantee=g)
    with pytest.raises(ValueError, match="eps is required"):
        rp.certify(model, x, guarantee="rtk:2")


def test_gloro_training_margin_is_the_certified_margin():
    """The GloRo IGRP variant trains on the same two-radius margin that certifies."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), rp.layers.MinMax(), nn.Linear(16, 6)).double().eval()
    x = torch.randn(40, 5, dtype=torch.float64)
    est = LipschitzEstimator(model, (5,))
    pair = est.sound() * head_distances(est.head.weight.detach())
    g = IGRP(GROUPS, 0.02, 0.1)
    with torch.no_grad():
        margin = guarantee_margin(model(x), pair, 0.1, g)
    cert = rp.certify(model, x, certifier="gloro", guarantee=g)
    assert torch.allclose(margin, cert.margin, atol=1e-9)


def test_certificate_keeps_its_type_and_metrics():
    model = _linear()
    x = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randint(0, 6, (30,))
    cert = rp.certify(model, x, certifier="gloro", guarantee=IGRP(GROUPS, 0.05, 0.3))
    both = rp.Certificate.concat([cert, cert.to("cpu")])
    assert isinstance(both, IGRPCertificate) and len(both) == 60 and both.eps_out == 0.3
    record = summarize(cert, model(x).detach(), y)
    summary = igrp_summary(cert, y, GROUPS)
    correct = cert.pred == y
    assert record["verified_accuracy_in"] == pytest.approx(float((cert.verified_in & correct).float().mean()))
    assert summary["group_verified_accuracy_out"] == record["group_verified_accuracy_out"]
    in_group = torch.tensor([any(int(y[i]) in g and int(cert.pred[i]) in g for g in GROUPS) for i in range(30)])
    assert summary["group_verified_accuracy_out"] == pytest.approx(float((cert.group_verified & in_group).float().mean()))
    assert summary["igrp_verified_accuracy"] == pytest.approx(float((cert.certified & correct).float().mean()))
    assert sum(g["points"] for g in summary["per_group"]) == 30


# ----------------------------------------------------------------------------- soundness


def _small_net(seed, d=6, n=6, act=nn.ReLU):
    from relaxplug.attacks.soundness import _train_briefly, cluster_data

    generator = torch.Generator().manual_seed(seed)
    x, y, centres = cluster_data((d,), n, 256, generator)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 32), act(), nn.Linear(32, 32), act(), nn.Linear(32, n))
    _train_briefly(model, x, y, 150)
    test_x, test_y, _ = cluster_data((d,), n, 32, generator, centres)
    return model.eval(), test_x, test_y


# radii (eps_out; eps_in = eps_out / 3) where each certifier certifies part of the points at each radius
SOUNDNESS = [("gloro", 2.0, 0.4), ("ibp", math.inf, 0.2), ("crown-ibp", math.inf, 0.4), ("crown", math.inf, 0.4),
             ("crown", 2.0, 0.8)]


@pytest.mark.parametrize("certifier, norm, eps_out", SOUNDNESS)
def test_certificates_survive_attacks_on_small_nonlinear_nets(certifier, norm, eps_out):
    act = rp.layers.MinMax if certifier == "gloro" else nn.ReLU
    model, x, _ = _small_net(1, act=act)
    g = IGRP(GROUPS, eps_out / 3, eps_out)
    cert = rp.certify(model, x, norm=norm, certifier=certifier, guarantee=g)
    assert cert.group_verified.any() and cert.verified_in.any()
    assert (cert.verified_in & ~cert.group_verified).any()  # the two parts differ: both are exercised
    broken = check_igrp_certificates(model, x, cert, steps=25, restarts=1, targets=2)
    assert broken == {"in": [], "out": []}


def test_group_attack_finds_violations_exactly_where_a_linear_model_has_them():
    """On a linear model the attack reaches the exact outer margin: it breaks every point whose
    exact margin is negative and none whose margin is positive."""
    model = _linear(seed=4)
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    x = torch.randn(40, 5, dtype=torch.float64)
    eps = 0.5
    logits = model(x).detach()
    pred = rank_order(logits)[:, 0]
    g = IGRP(GROUPS, 0.0, eps)
    members = g.group_of(6)[None, :] == g.group_of(6)[pred][:, None]
    worst = attack_group_claims(model, x, pred, members, eps, norm=2, steps=60, restarts=1, targets=3)
    exact = torch.tensor([certify_igrp_linear(W, b, x[i].tolist(), GROUPS, 0.0, eps, 2)["m_out"] for i in range(40)],
                         dtype=torch.float64)
    assert ((exact < -1e-3) <= (worst <= 0)).all()  # every real violation is found
    assert not (worst[exact > 1e-6] <= 0).any()  # and none where there is none
    assert (exact < -1e-3).any() and (exact > 1e-3).any()
    assert torch.allclose(group_margin(logits, pred, members), torch.tensor(
        [certify_igrp_linear(W, b, x[i].tolist(), GROUPS, 0.0, 0.0, 2)["m_out"] for i in range(40)], dtype=torch.float64))


def test_a_false_certificate_is_caught():
    """Claims that the definition rejects are broken by the attack (the check has teeth)."""
    model = _linear(seed=5)
    x = torch.randn(40, 5, dtype=torch.float64)
    cert = rp.certify(model, x, norm=2, certifier="crown", guarantee=IGRP(GROUPS, 0.3, 0.9))
    assert (~cert.group_verified).any() and (~cert.verified_in).any()
    fake = dataclasses.replace(cert, verified_in=torch.ones_like(cert.verified_in),
                               group_verified=torch.ones_like(cert.group_verified))
    broken = check_igrp_certificates(model, x, fake, steps=40, restarts=1, targets=3)
    assert set(broken["in"]) == set((~cert.verified_in).nonzero().flatten().tolist())
    assert set(broken["out"]) == set((~cert.group_verified & torch.isfinite(cert.margin_out)).nonzero().flatten().tolist())


# ----------------------------------------------------------------------------- names, files, errors


def test_names_resolve(tmp_path):
    g = resolve_guarantee("igrp:0,3;1,4,5;2@0.05,0.3")
    assert isinstance(g, IGRP) and g.groups == ((0, 3), (1, 4, 5), (2,)) and g.radii() == (0.05, 0.3)
    g = resolve_guarantee("igrp:0.1,0.2", sets=GROUPS)
    assert g.groups == ((0, 3), (1, 4, 5), (2,)) and (g.eps_in, g.eps_out) == (0.1, 0.2)
    path = tmp_path / "groups.yaml"
    path.write_text("class_names: [cat, dog, car, truck]\nsets:\n  - [cat, dog]\n  - [car, truck]\neps_in: 0.01\neps_out: 0.05\n")
    g = resolve_guarantee(f"igrp:{path}")
    assert g.groups == ((0, 1), (2, 3)) and g.radii() == (0.01, 0.05)
    assert resolve_guarantee(f"igrp:{path}@0.02,0.1").radii() == (0.02, 0.1)  # the name's radii win
    assert "igrp" in rp.list_guarantees()


def test_a_groups_file_without_radii_needs_them_in_the_name(tmp_path):
    path = tmp_path / "groups.yaml"
    path.write_text("sets: [[0, 1], [2]]\n")
    with pytest.raises(ValueError, match="needs both 'eps_in' and 'eps_out'"):
        resolve_guarantee(f"igrp:{path}")
    assert resolve_guarantee(f"igrp:{path}@0,0.1").groups == ((0, 1), (2,))
    assert resolve_guarantee(f"affinity:{path}").sets == ((0, 1), (2,))  # the same file serves affinity


@pytest.mark.parametrize("spec, message", [
    ("igrp", "needs groups and two radii"),
    ("igrp:0.1", "two numbers"),
    ("igrp:0.1,0.2", "none were given"),
    ("igrp:0,1;2@0.3,0.1", "eps_in <= eps_out"),
    ("igrp:0,1;1,2@0.1,0.3", "disjoint"),
    ("igrp:0,1;cat@0.1,0.3", "class name"),
    ("igrp:0,1;2@-0.1,0.3", ">= 0"),
    ("igrp:0,1;2@nan,0.3", "finite"),
])
def test_bad_names_fail_early(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_guarantee(spec)


def test_unknown_class_name_in_a_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("class_names: [a, b, c]\nsets: [[a, b], [z]]\neps_in: 0\neps_out: 0.1\n")
    with pytest.raises(ValueError, match="unknown class name 'z'"):
        resolve_guarantee(f"igrp:{path}")
    path.write_text("sets: [[0, 1], [2]]\neps_in: 0\neps_out: 0.1\nradius: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_guarantee(f"igrp:{path}")


@pytest.mark.parametrize("groups, message", [
    ([[0, 1], [1, 2]], "class 1 is in group #0 and group #1"),
    ([[0, 0], [1]], "twice"),
    ([[0, 1], []], "empty"),
    ([[0, 1.5]], "non-integer"),
    ([[0, -1]], "negative"),
    ([], "at least one group"),
    ("0,1", "list of lists"),
])
def test_groups_must_be_a_partition(groups, message):
    with pytest.raises(ValueError, match=message):
        IGRP(groups, 0.1, 0.2)


def test_validate_needs_every_class_in_range():
    with pytest.raises(ValueError, match=r"\[5\] are in no group"):
        IGRP([[0, 1], [2, 3, 4]], 0.1, 0.2).validate(6)
    with pytest.raises(ValueError, match="out of range"):
        IGRP([[0, 1], [2, 3, 4, 6]], 0.1, 0.2).validate(6)
    model = _linear()
    with pytest.raises(ValueError, match="no group"):
        rp.certify(model, torch.randn(2, 5, dtype=torch.float64), guarantee=IGRP([[0, 1]], 0.1, 0.2))


def test_evaluate_needs_two_radii():
    g = IGRP(GROUPS, 0.1, 0.2)
    order = torch.arange(6)[None]
    with pytest.raises(ValueError, match="two radii"):
        g.evaluate(order, [torch.zeros(1, 1, 6)])
    assert Standard().radii(0.3) == (0.3,)

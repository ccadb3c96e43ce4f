"""Bound-propagation certifiers (auto_LiRPA): exact on linear models, never broken by attacks,
only the needed spec rows, cache never stale, the L2 input guard."""

import math

import pytest
import torch
from torch import nn

import relaxplug as rp
from relaxplug.adapters import RTK, Affinity, Standard
from relaxplug.attacks.pgd import pgd_set_attack
from relaxplug.models.layers import InvertibleDownsample, MinMax, Normalize, Residual

lirpa = pytest.importorskip("relaxplug.certifiers.lirpa", reason="auto_LiRPA is not installed", exc_type=ImportError)
from relaxplug import lirpa as glue  # noqa: E402
from relaxplug.certifiers.base import CERTIFIERS  # noqa: E402

from ..brute_force import certify_linear  # noqa: E402

pytestmark = pytest.mark.lirpa

METHODS = ("ibp", "crown-ibp", "crown")
NORMS = {2.0: 2, math.inf: 1}  # norm -> dual norm of the brute-force definition
GUARANTEES = [
    ("standard", "standard", {}),
    ("rtk:2", "rtk", {"K": 2}),
    ("rtk:4", "rtk", {"K": 4}),
    ("affinity:0,1;1,2,3", "affinity", {"sets": [[0, 1], [1, 2, 3]]}),
    ("affinity:0,2,4;1,3", "affinity", {"sets": [[0, 2, 4], [1, 3]]}),
]


def make(name, **options):
    return CERTIFIERS.create(name, **options)


def _linear_model(n=6, d=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, n)).double()


def _check_against_definition(cert, W, b, x, eps, kind, kwargs, dual):
    for row in range(x.shape[0]):
        certified, k, top, margin = certify_linear(W, b, x[row].tolist(), eps, kind, dual_norm=dual, **kwargs)
        assert bool(cert.certified[row]) == certified, row
        assert int(cert.k[row]) == k, row
        assert set(torch.nonzero(cert.classes[row]).flatten().tolist()) == top, row
        assert cert.margin[row].item() == pytest.approx(margin, abs=1e-9), row


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("name, kind, kwargs", GUARANTEES)
def test_crown_on_a_linear_model_equals_the_definition(name, kind, kwargs, norm):
    model = _linear_model()
    x = torch.randn(48, 5, dtype=torch.float64)
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    for eps in (0.0, 0.05, 0.2, 0.6):
        cert = rp.certify(model, x, eps=eps, norm=norm, certifier="crown", guarantee=name)
        _check_against_definition(cert, W, b, x, eps, kind, kwargs, NORMS[norm])


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
@pytest.mark.parametrize("norm", list(NORMS))
def test_ibp_and_crown_ibp_are_exact_on_one_linear_layer(method, norm):
    model = _linear_model(seed=1)
    x = torch.randn(32, 5, dtype=torch.float64)
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    for name, kind, kwargs in GUARANTEES[1:4]:
        cert = rp.certify(model, x, eps=0.2, norm=norm, certifier=method, guarantee=name)
        _check_against_definition(cert, W, b, x, 0.2, kind, kwargs, NORMS[norm])


@pytest.mark.parametrize("name, kind, kwargs", GUARANTEES[:2])
def test_ties_are_never_certified_as_separated(name, kind, kwargs):
    model = _linear_model()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([3.0, 3.0, 1.0, 1.0, -2.0, -2.0]))
    x = torch.zeros(1, 5, dtype=torch.float64)
    for eps in (0.0, 0.01):
        cert = rp.certify(model, x, eps=eps, certifier="crown", guarantee=name)
        certified, k, _, _ = certify_linear(model[0].weight.tolist(), model[0].bias.tolist(), [0.0] * 5, eps, kind, **kwargs)
        assert bool(cert.certified[0]) == certified and int(cert.k[0]) == k
        assert int(cert.k[0]) != 1


def test_normalize_first_is_exact_and_l2_is_guarded():
    """auto_LiRPA 0.3 reads an L2 ball only in linear/conv layers: a model starting with
    ``Normalize`` (sub, div) must still be bounded soundly (here exactly: it is linear)."""
    torch.manual_seed(0)
    std = torch.tensor([0.1, 0.5, 2.0, 0.3, 1.0])
    mean = torch.tensor([0.2, -0.1, 0.0, 0.5, 0.3])
    model = nn.Sequential(Normalize(mean, std), nn.Linear(5, 6)).double()
    x = torch.randn(32, 5, dtype=torch.float64)
    W = (model[1].weight / std.double()).tolist()
    b = (model[1].bias - model[1].weight @ (mean.double() / std.double())).tolist()
    for norm, dual in NORMS.items():
        for method in METHODS:
            cert = rp.certify(model, x, eps=0.05, norm=norm, certifier=method, guarantee="rtk:2")
            for row in range(x.shape[0]):
                certified, k, _, margin = certify_linear(W, b, x[row].tolist(), 0.05, "rtk", K=2, dual_norm=dual)
                if method == "crown":
                    assert bool(cert.certified[row]) == certified and int(cert.k[row]) == k
                    assert cert.margin[row].item() == pytest.approx(margin, abs=1e-9)
                else:  # sound: never above the exact margin
                    assert cert.margin[row].item() <= margin + 1e-9


def test_l2_guard_applies_only_when_the_input_meets_a_non_linear_layer():
    x = torch.randn(4, 3)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3, 4))
    assert glue.bounded_module(plain, x, norm=2.0).l2_safe
    for first in (nn.ReLU(), Residual(nn.Linear(3, 3))):
        model = nn.Sequential(first, nn.Linear(3, 4))
        assert not glue.bounded_module(model, x, norm=math.inf).l2_safe
        guarded = glue.bounded_module(model, x, norm=2.0)
        assert guarded.l2_safe
        assert torch.allclose(guarded.lowered(x), model(x), atol=1e-6)


# ----------------------------------------------------------------------------- soundness


def _nets():
    torch.manual_seed(3)
    dense = nn.Sequential(nn.Linear(4, 32), MinMax(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 6))
    conv = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), MinMax(), InvertibleDownsample(2),
        nn.Conv2d(32, 8, 3, stride=2, padding=1), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), MinMax())),
        nn.Flatten(), nn.Linear(32, 6),
    )
    relu_first = nn.Sequential(nn.ReLU(), nn.Linear(4, 16), MinMax(), nn.Linear(16, 6))
    return {"dense": (dense, (4,)), "conv": (conv, (1, 8, 8)), "relu-first": (relu_first, (4,))}


ATTACKED = ["standard", "rtk:3", "affinity:0,1;2,3,4"]


def _calibrate(model, x, norm, certifier):
    """A radius where the standard guarantee certifies some but not all points."""
    eps = 0.5 if norm == 2 else 0.2
    for _ in range(12):
        fraction = float(rp.certify(model, x, eps, norm, certifier, "standard", radius=False).certified.float().mean())
        if 0.2 <= fraction <= 0.8:
            break
        eps = eps / 2 if fraction < 0.2 else eps * 1.5
    return eps


@pytest.mark.parametrize("norm", [2.0, math.inf])
@pytest.mark.parametrize("method", METHODS + ("crown:logit", "crown-ibp:anchor"))
@pytest.mark.parametrize("net", ["dense", "conv", "relu-first"])
def test_attack_never_breaks_a_certified_set(net, method, norm):
    model, shape = _nets()[net]
    name, _, spec = method.partition(":")
    certifier = make(name, spec=spec or "pairwise")
    x = torch.randn(48, *shape)
    eps = _calibrate(model, x, norm, certifier)
    total = 0
    for guarantee in ATTACKED:
        cert = rp.certify(model, x, eps, norm, certifier, guarantee, radius=False)
        idx = cert.certified.nonzero().flatten()
        total += len(idx)
        if len(idx) == 0:
            continue
        worst, x_adv = pgd_set_attack(model, x[idx], cert.classes[idx], eps, norm=norm, steps=50, restarts=2)
        assert ((x_adv - x[idx]).flatten(1).norm(p=norm, dim=1) <= eps * (1 + 1e-5) + 1e-5).all()  # + rounding of x + delta
        assert (worst > 0).all(), f"{guarantee}: certificate broken at rows {idx[worst <= 0].tolist()}"
    assert total > 0, "nothing certified: the test checked nothing"
    # the attack is strong enough to break some top-1 predictions at 4x the radius
    pred = rp.certify(model, x, eps, norm, certifier, "standard", radius=False).pred
    broken, _ = pgd_set_attack(model, x, nn.functional.one_hot(pred, 6).bool(), 4 * eps, norm=norm, steps=50)
    assert (broken <= 0).any()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_logit_mode_never_certifies_what_pairwise_rejects(method, norm):
    model, shape = _nets()["dense"]
    x = torch.randn(64, *shape)
    pairwise, logit = make(method), make(method, spec="logit")
    eps = _calibrate(model, x, norm, pairwise)
    for guarantee in ("standard", "rtk:3", "affinity:0,1;2,3,4"):
        a = rp.certify(model, x, eps, norm, pairwise, guarantee, radius=False)
        b = rp.certify(model, x, eps, norm, logit, guarantee, radius=False)
        assert not (b.certified & ~a.certified).any()
        assert (b.k <= a.k).all()
        assert (b.margin <= a.margin + 1e-5).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_anchor_mode_is_exact_for_top1_and_never_beats_pairwise(method, norm):
    model, shape = _nets()["dense"]
    x = torch.randn(64, *shape)
    pairwise, anchor = make(method), make(method, spec="anchor")
    eps = _calibrate(model, x, norm, pairwise)
    a = rp.certify(model, x, eps, norm, pairwise, "standard", radius=False)
    b = rp.certify(model, x, eps, norm, anchor, "standard", radius=False)
    assert torch.equal(a.certified, b.certified)  # the same spec rows for k = 1
    assert torch.allclose(a.margin, b.margin, atol=1e-5)
    for guarantee in ("rtk:3", "affinity:0,1;2,3,4"):
        a = rp.certify(model, x, eps, norm, pairwise, guarantee, radius=False)
        b = rp.certify(model, x, eps, norm, anchor, guarantee, radius=False)
        assert not (b.certified & ~a.certified).any()
        assert (b.margin <= a.margin + 1e-5).all()


# ----------------------------------------------------------------------------- spec rows


def _request(guarantee, logits, eps=0.1):
    return guarantee.requests(logits, eps)[0]


def test_rtk_spec_has_only_the_needed_rows():
    n, K = 10, 3
    logits = torch.randn(5, n)
    request = _request(RTK(K), logits)
    rows = glue.spec_rows(request, n)
    assert rows.rows == K * n - K * (K + 1) // 2 < K * n
    assert rows.valid.all()
    c = glue.spec_matrix(request.order, rows, 0, rows.rows, torch.float32)
    assert c.shape == (5, rows.rows, n)
    assert (c.sum(2) == 0).all() and (c.abs().sum(2) == 2).all()
    # every row is e_{o_r} - e_{o_s} with r < K and s > r, each pair once
    for b in range(5):
        pairs = {(int(c[b, t].argmax()), int(c[b, t].argmin())) for t in range(rows.rows)}
        order = request.order[b].tolist()
        expected = {(order[r], order[s]) for r in range(K) for s in range(r + 1, n)}
        assert pairs == expected


def test_affinity_spec_rows_follow_the_acceptable_sets():
    n = 8
    guarantee = Affinity([[0, 1, 2], [5, 6]])
    logits = torch.full((3, n), -5.0)
    logits[0, [0, 1, 2]] = torch.tensor([3.0, 2.0, 1.0])  # top-3 inside a set: ranks 0, 1, 2 needed
    logits[1, [5, 7]] = torch.tensor([3.0, 2.0])  # top-2 leaves every set: only rank 0
    logits[2, [6, 5]] = torch.tensor([3.0, 2.0])  # top-2 inside {5, 6}: ranks 0, 1
    request = _request(guarantee, logits)
    rows = glue.spec_rows(request, n)
    counts = rows.valid.sum(1).tolist()
    assert counts == [(n - 1) + (n - 2) + (n - 3), n - 1, (n - 1) + (n - 2)]
    assert rows.rows == max(counts) <= request.n_candidates * n
    c = glue.spec_matrix(request.order, rows, 0, rows.rows, torch.float32)
    assert (c[1, counts[1]:] == 0).all()  # padding rows are zero
    # the certifier bounds exactly these rows
    model = nn.Sequential(nn.Linear(n, n))  # the identity: its logits are the input
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(n))
        model[0].bias.zero_()
    certifier = make("crown")
    certifier.bounds(model, logits.clone(), logits, [request], 2.0)
    assert certifier.last_rows == [rows.rows]


def test_logit_mode_bounds_k_plus_n_rows_and_pairwise_k_n_at_most():
    model, x = nn.Sequential(nn.Linear(4, 12)), torch.randn(6, 4)
    for spec, expected in (("pairwise", 4 * 12 - 10), ("logit", 4 + 12 - 1), ("anchor", 12 - 1 + 4 - 1)):
        certifier = make("crown-ibp", spec=spec)
        rp.certify(model, x, 0.1, 2, certifier, "rtk:4", radius=False)
        assert certifier.last_rows == [expected]


def test_chunked_rows_equal_one_call():
    model, shape = _nets()["conv"]
    x = torch.randn(8, *shape)
    for method in METHODS:
        for spec in ("pairwise", "logit", "anchor"):  # chunks of 4 straddle the two kinds of rows
            whole = rp.certify(model, x, 0.05, 2, make(method, spec=spec), "rtk:3", radius=False)
            chunked = rp.certify(model, x, 0.05, 2, make(method, spec=spec, chunk_rows=4), "rtk:3", radius=False)
            assert torch.allclose(whole.margin, chunked.margin, atol=1e-5), (method, spec)
            assert torch.equal(whole.certified, chunked.certified)


# ----------------------------------------------------------------------------- lowering and cache


def test_lowered_model_equals_the_original():
    model, shape = _nets()["conv"]
    lowered = glue.lower_for_lirpa(model, torch.randn(1, *shape))
    x = torch.randn(16, *shape)
    assert torch.allclose(lowered(x), model(x), atol=1e-5)
    kinds = {type(m) for m in lowered.modules()}
    assert MinMax not in kinds and InvertibleDownsample not in kinds
    assert any(isinstance(m, MinMax) for m in model.modules())  # the original is untouched


def test_bounded_module_is_cached_and_rebuilt_when_weights_change():
    model = nn.Sequential(nn.Linear(4, 8), MinMax(), nn.Linear(8, 5))
    x = torch.randn(6, 4)
    first = glue.bounded_module(model, x)
    assert glue.bounded_module(model, x[:2]) is first  # batch size does not matter
    before = rp.certify(model, x, 0.1, 2, "crown", "rtk:2", radius=False)
    with torch.no_grad():
        model[0].weight.data.mul_(1.5)  # through .data: no version-counter bump
    rebuilt = glue.bounded_module(model, x)
    assert rebuilt is not first
    after = rp.certify(model, x, 0.1, 2, "crown", "rtk:2", radius=False)
    glue.clear_cache()
    fresh = rp.certify(model, x, 0.1, 2, "crown", "rtk:2", radius=False)
    assert torch.equal(after.margin, fresh.margin)
    assert not torch.equal(after.margin, before.margin)
    assert all(p.requires_grad for p in model.parameters())  # auto_LiRPA never touches the model


def test_several_requests_reuse_one_bounded_module():
    """IGRP-style: one request per radius, one BoundedModule."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))
    x = torch.randn(6, 4)
    logits = model(x).detach()
    requests = [r for eps in (0.05, 0.2) for r in Standard().requests(logits, eps)]
    certifier = make("crown")
    entry = glue.bounded_module(model, x)
    both = certifier.bounds(model, x, logits, requests, 2.0)
    assert glue.bounded_module(model, x) is entry
    for request, lower in zip(requests, both):
        alone = certifier.bounds(model, x, logits, [request], 2.0)[0]
        assert torch.equal(lower, alone)
    finite = torch.isfinite(both[0])
    assert (both[1][finite] <= both[0][finite]).all()  # a larger ball, smaller margins


# ----------------------------------------------------------------------------- radius, options


def test_radius_bisection_matches_the_exact_radius_on_a_linear_model():
    model = _linear_model()
    x = torch.randn(12, 5, dtype=torch.float64)
    steps = 12
    for guarantee in ("standard", "rtk:3"):
        exact = rp.certify(model, x, 0.0, 2, "gloro", guarantee).radius  # GloRo is exact on a linear model
        found = rp.certify(model, x, 0.0, 2, make("crown", radius_bisection=steps), guarantee).radius
        assert (found <= exact * (1 + 1e-9)).all()  # sound
        assert (found >= exact * (1 - 2.0 ** (1 - steps))).all()
    assert torch.isnan(rp.certify(model, x, 0.0, 2, "crown", "standard").radius).all()


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_radius_bisection_on_a_nonlinear_net_is_certified(norm):
    model, shape = _nets()["dense"]
    x = torch.randn(16, *shape)
    certifier = make("crown-ibp", radius_bisection=6)
    radius = rp.certify(model, x, 0.0, norm, certifier, "rtk:2").radius
    assert radius.dtype == torch.float32 and (radius >= 0).all() and (radius > 0).any()
    for row in range(16):
        if radius[row] > 0:
            at = rp.certify(model, x[row:row + 1], float(radius[row]), norm, certifier, "rtk:2", radius=False)
            assert at.certified.all()


def test_unknown_and_bad_options_raise():
    with pytest.raises(ValueError, match="unknown option"):
        make("crown", lipschitz="sound")
    with pytest.raises(ValueError, match="spec"):
        make("ibp", spec="diagonal")
    with pytest.raises(ValueError, match="radius_bisection"):
        make("crown-ibp", radius_bisection=-1)
    with pytest.raises(ValueError, match="chunk_rows"):
        make("crown", chunk_rows=0)
    with pytest.raises(ValueError, match="conv_mode"):
        make("crown", conv_mode="sparse")


def test_registered_with_both_norms():
    for name in METHODS:
        assert name in rp.list_certifiers()
        certifier = make(name)
        assert certifier.norms == (2.0, float("inf"))
        certifier.check_norm(2)
        certifier.check_norm(float("inf"))
        with pytest.raises(ValueError, match="supports norms"):
            certifier.check_norm(1)


# ----------------------------------------------------------------------------- alpha-CROWN


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("name, kind, kwargs", GUARANTEES[1:4])
def test_alpha_crown_on_a_linear_model_equals_the_definition(name, kind, kwargs, norm):
    model = _linear_model(seed=1)
    x = torch.randn(24, 5, dtype=torch.float64)
    W, b = model[0].weight.tolist(), model[0].bias.tolist()
    for eps in (0.0, 0.2):
        cert = rp.certify(model, x, eps=eps, norm=norm, certifier=make("alpha-crown", iterations=3), guarantee=name)
        _check_against_definition(cert, W, b, x, eps, kind, kwargs, NORMS[norm])


def _unstable_relu_net():
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(6, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 5)).eval()


@pytest.mark.parametrize("norm, eps", [(math.inf, 0.15), (2.0, 0.4)])
def test_alpha_crown_tightens_crown_and_stays_sound(norm, eps):
    """Optimised slopes never loosen a bound and tighten some (with auto_LiRPA 0.3 on current torch
    this needs relaxplug._compat.shim_relu_alpha_gradient); every certified set survives attacks."""
    model = _unstable_relu_net()
    x = torch.randn(32, 6)
    crown = rp.certify(model, x, eps, norm, "crown", "rtk:2", radius=False)
    alpha = rp.certify(model, x, eps, norm, make("alpha-crown", iterations=20), "rtk:2", radius=False)
    assert (alpha.margin >= crown.margin - 1e-5).all()
    assert (alpha.margin > crown.margin + 1e-3).float().mean() > 0.5  # the slopes moved
    assert not (crown.certified & ~alpha.certified).any()
    for eps_check in (eps, eps * 2):
        cert = rp.certify(model, x, eps_check, norm, "alpha-crown", "rtk:2", radius=False)
        idx = cert.certified.nonzero().flatten()
        if len(idx):
            worst, _ = pgd_set_attack(model, x[idx], cert.classes[idx], eps_check, norm=norm, steps=50, restarts=2)
            assert (worst > 0).all(), idx[worst <= 0].tolist()


def test_alpha_crown_runs_on_minmax_conv_nets_and_bounds_both_sides():
    model, shape = _nets()["conv"]
    x = torch.randn(6, *shape)
    crown = rp.certify(model, x, 0.02, math.inf, "crown", "rtk:2", radius=False)
    alpha = rp.certify(model, x, 0.02, math.inf, make("alpha-crown", iterations=2), "rtk:2", radius=False)
    assert (alpha.margin >= crown.margin - 1e-5).all()
    logit = rp.certify(model, x, 0.02, math.inf, make("alpha-crown", iterations=2, spec="logit"), "rtk:2", radius=False)
    assert (logit.margin <= alpha.margin + 1e-5).all()  # lower and upper bounds, one side per call


def test_alpha_crown_options():
    certifier = make("alpha-crown", iterations=5, lr=0.1, spec="anchor")
    assert (certifier.iterations, certifier.lr, certifier.spec) == (5, 0.1, "anchor")
    with pytest.raises(ValueError, match="iterations"):
        make("alpha-crown", iterations=0)
    with pytest.raises(ValueError, match="lr"):
        make("alpha-crown", lr=-1.0)
    with pytest.raises(ValueError, match="known: spec, radius_bisection, chunk_rows, conv_mode, iterations, lr"):
        make("alpha-crown", steps=3)

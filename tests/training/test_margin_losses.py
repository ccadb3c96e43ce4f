"""EMMA and LA composed with every guarantee."""

import math

import pytest
import torch
import torch.nn.functional as F

from relaxplug.adapters import resolve_guarantee
from relaxplug.adapters.affinity import Affinity, Superclass
from relaxplug.adapters.igrp import IGRP
from relaxplug.adapters.rtk import RTK
from relaxplug.adapters.standard import Standard
from relaxplug.training.margin_losses import (
    annealed_cross_entropy,
    emma_loss,
    label_first_order,
    logit_annealing_loss,
    pair_radii,
    robust_logits,
)

N = 10
GROUPS = [[0, 1, 2], [3, 4], [5, 6, 7, 8, 9]]


def _problem(batch=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, N, generator=gen).requires_grad_(True)
    labels = torch.randint(0, N, (batch,), generator=gen)
    head = torch.randn(N, 6, generator=gen)
    pair_k = (torch.cdist(head, head) * 1.7).requires_grad_(True)
    return logits, labels, pair_k


def reference_emma(logits, labels, pair_k, eps):
    """EMMA as Hu et al. (2024) write it: logits shifted by the label's, per-opponent radius."""
    shifted = logits - logits.gather(1, labels[:, None])
    margin = pair_k[labels]  # K_{y i}
    fraction = (-shifted / (margin * eps).clamp_min(1e-12)).clamp(0.01, 1.0)
    return F.cross_entropy(shifted + fraction.detach() * eps * margin, labels)


def reference_la(logits, labels, pair_k, eps, temperature=0.75, offset=2.0, gamma=5.0):
    shifted = logits - logits.gather(1, labels[:, None])
    margin = pair_k[labels]
    fraction = (-shifted / (margin * eps).clamp_min(1e-12)).clamp(0.01, 1.0)
    robust = shifted + fraction.detach() * eps * margin
    z = (robust - offset * F.one_hot(labels, N)) / temperature
    ce = F.cross_entropy(z, labels, reduction="none")
    return ((1 - torch.exp(-ce)) ** gamma * ce * temperature).mean()


ALL_GUARANTEES = [
    Standard(), RTK(1), RTK(3), Affinity([[0, 1], [2, 3, 4], [4, 5]]), Superclass(GROUPS),
    IGRP(GROUPS, 0.2, 0.6), IGRP(GROUPS, 0.6, 0.6), IGRP(GROUPS, 0.0, 0.6),
]


@pytest.mark.parametrize("eps", [0.1, 0.6, 3.0])
def test_emma_and_la_reduce_to_the_papers_for_the_standard_guarantee(eps):
    logits, labels, pair_k = _problem()
    for guarantee in (Standard(), RTK(1), IGRP(GROUPS, eps, eps)):
        assert torch.allclose(emma_loss(logits, labels, pair_k, eps, guarantee), reference_emma(logits, labels, pair_k, eps), atol=1e-6)
        assert torch.allclose(logit_annealing_loss(logits, labels, pair_k, eps, guarantee), reference_la(logits, labels, pair_k, eps), atol=1e-6)


def test_reference_would_notice_a_wrong_radius():
    logits, labels, pair_k = _problem()
    assert not torch.allclose(emma_loss(logits, labels, pair_k, 0.6, Standard()), reference_emma(logits, labels, pair_k, 0.3))


@pytest.mark.parametrize("guarantee", ALL_GUARANTEES, ids=repr)
def test_every_guarantee_runs_finite_with_gradients(guarantee):
    logits, labels, pair_k = _problem()
    for loss_fn in (emma_loss, logit_annealing_loss):
        logits.grad = pair_k.grad = None
        loss = loss_fn(logits, labels, pair_k, 0.5, guarantee)
        assert torch.isfinite(loss)
        loss.backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
        assert torch.isfinite(pair_k.grad).all() and pair_k.grad.abs().sum() > 0


def test_label_first_order():
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, 1.0, 2.0, 0.0]])
    order = label_first_order(logits, torch.tensor([2, 0]))
    assert order.tolist() == [[2, 1, 3, 0], [0, 2, 1, 3]]


def test_rtk_picks_the_best_acceptable_set_and_is_never_worse_than_standard():
    logits, labels, pair_k = _problem(batch=64)
    standard = emma_loss(logits, labels, pair_k, 0.5, Standard())
    relaxed = emma_loss(logits, labels, pair_k, 0.5, RTK(3))
    assert relaxed < standard  # max over more sets, per point, never smaller a margin


def test_rtk_robust_logits_on_a_hand_example():
    # label 0 ranks second; the top-2 set {1, 0} is far from the rest, the top-1 set {0} is not
    logits = torch.tensor([[4.0, 5.0, 0.0, -1.0]])
    pair_k = torch.ones(4, 4) - torch.eye(4)
    robust = robust_logits(logits, torch.tensor([0]), pair_k, 1.0, RTK(2))
    finite = robust[0, torch.isfinite(robust[0])]
    # k = 2 set {0, 1} against {2, 3}: l = gap - min(gap, 1) at full radius 1 -> 3, 4 (from 0), 4, 5 (from 1)
    assert sorted((-finite[1:]).tolist()) == [3.0, 4.0, 4.0, 5.0]
    assert finite[0] == 0.0


def test_affinity_only_uses_acceptable_sets():
    logits = torch.tensor([[4.0, 5.0, 0.0, -1.0]])
    pair_k = torch.ones(4, 4) - torch.eye(4)
    labels = torch.tensor([0])
    inside = robust_logits(logits, labels, pair_k, 1.0, Affinity([[0, 1]]))
    outside = robust_logits(logits, labels, pair_k, 1.0, Affinity([[0, 2]]))
    assert torch.isfinite(inside).sum() == 5  # the set {0, 1}: 4 pairs
    assert torch.isfinite(outside).sum() == 4  # only {0}: 3 opponents
    standard = robust_logits(logits, labels, pair_k, 1.0, Standard())
    assert torch.equal(outside[torch.isfinite(outside)], standard[torch.isfinite(standard)])


def test_igrp_probes_radii_per_opponent():
    logits, labels, _ = _problem(batch=5)
    guarantee = IGRP(GROUPS, 0.2, 0.6)
    order = label_first_order(logits, labels)
    needed, radius = pair_radii(guarantee, order, 0.6)
    group = {c: g for g, members in enumerate(GROUPS) for c in members}
    for b in range(5):
        y = int(order[b, 0])
        assert not needed[b, 0]
        for s in range(1, N):
            c = int(order[b, s])
            assert needed[b, s]
            assert math.isclose(float(radius[b, s]), 0.6 if group[c] != group[y] else 0.2)


def test_annealing_fades_well_separated_points():
    target = torch.zeros(2, dtype=torch.long)
    close = annealed_cross_entropy(torch.tensor([[0.0, -0.1, -0.2]]), target[:1])
    far = annealed_cross_entropy(torch.tensor([[0.0, -30.0, -30.0]]), target[:1])
    assert far < 1e-6 < close
    with pytest.raises(ValueError, match="temperature"):
        annealed_cross_entropy(torch.zeros(1, 3), target[:1], temperature=0.0)


def test_resolved_guarantees_work_too():
    logits, labels, pair_k = _problem()
    for name in ("standard", "rtk:2", "superclass:0,1,2;3,4;5,6,7,8,9"):
        assert torch.isfinite(emma_loss(logits, labels, pair_k, 0.3, resolve_guarantee(name)))


@pytest.mark.parametrize("loss", ["emma", "la"])
def test_gloronet_trains_with_the_margin_losses(loss):
    import relaxplug as rp
    from relaxplug.lipschitz import estimator_for, head_distances
    from relaxplug.models import build_model

    model = build_model("liresnet_digits", (1, 8, 8), 10)
    net = rp.GloRoNet(model, 0.3, "rtk:2", input_shape=(1, 8, 8), loss=loss, annealing=(0.5, 1.0, 2.0))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    out = net.train()(x)
    value = net.criterion(out, y)
    est = estimator_for(model, (1, 8, 8))
    pair = est.power(0) * head_distances(est.head.weight)  # the K of that forward (vectors not advanced)
    if loss == "emma":
        expected = emma_loss(out[:, :-1], y, pair, 0.3, RTK(2))
    else:
        expected = logit_annealing_loss(out[:, :-1], y, pair, 0.3, RTK(2), 0.5, 1.0, 2.0)
    assert torch.allclose(value, expected.to(value.dtype), atol=1e-6)
    value.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_selects_the_margin_losses_and_checks_their_options():
    from relaxplug.training.methods import GloRoSection

    assert GloRoSection(loss="la", la_temperature=0.5).la_temperature == 0.5
    with pytest.raises(ValueError, match="gloro.loss must be one of"):
        GloRoSection(loss="hinge")
    with pytest.raises(ValueError, match="la_temperature must be > 0"):
        GloRoSection(loss="la", la_temperature=0)

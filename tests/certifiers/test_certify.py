"""``certify`` gives bit-identical certificates to the full-sort computation it replaced.

The reference patches in the previous implementation: a stable sort of all ``n`` logits, margins
by suffix scans over all ``n`` columns, class masks from full ranks, and GloRo bounds built as
``(gaps - eps K) - (rounding_allowance(logits, eps K) + forward_error)`` in one piece over the batch.
"""

import pytest
import torch
from torch import nn

import relaxplug as rp
from relaxplug.adapters import IGRP, RTK, Affinity, Standard, Superclass
from relaxplug.certifiers import gloro
from relaxplug.certifiers.base import rounding_allowance
from relaxplug.certifiers.certify import check_inputs
from relaxplug.models.layers import MinMax

from ..brute_force import full_sort_order, topk_margins_by_suffix_scan

N_CLASSES = 12
GUARANTEES = [
    Standard(),
    RTK(1),
    RTK(3),
    RTK(5),
    Affinity([[0, 1, 2], [2, 3], [4, 5, 6, 7, 8]]),
    Superclass([[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11]]),
    IGRP([[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11]], 0.05, 0.2),
]


def _class_mask_from_ranks(order, k, max_k=None):
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    return ranks < k[:, None]


def _gloro_bounds_in_one_piece(logits, order, pair, eps, n_candidates, *, forward_error=None, chunk=None):
    ranked = logits.gather(1, order)
    lower = ranked[:, :n_candidates, None] - ranked[:, None, :] - eps * gloro.rank_pairs(pair, order, n_candidates)
    if forward_error is not None:
        lower = lower - (rounding_allowance(logits, eps * gloro.rank_pairs(pair, order, n_candidates)) + forward_error)
    return lower


@pytest.fixture
def full_sort_reference(monkeypatch):
    """Certify with the previous implementation patched in."""

    def run(*args, **kwargs):
        with monkeypatch.context() as patch:
            patch.setattr("relaxplug.adapters.base.rank_order", lambda logits, k=None: full_sort_order(logits.detach()))
            patch.setattr("relaxplug.adapters.igrp.rank_order", lambda logits, k=None: full_sort_order(logits.detach()))
            for module in ("relaxplug.adapters.base", "relaxplug.adapters.igrp"):
                patch.setattr(f"{module}.topk_margins", topk_margins_by_suffix_scan)
                patch.setattr(f"{module}.topk_class_mask", _class_mask_from_ranks)
            patch.setattr(gloro, "gloro_lower_bounds", _gloro_bounds_in_one_piece)
            return rp.certify(*args, **kwargs)

    return run


def _models():
    torch.manual_seed(0)
    random = nn.Sequential(nn.Linear(10, 32), MinMax(), nn.Linear(32, N_CLASSES))
    yield "random", random, torch.randn(300, 10)
    # zero head rows with equal biases tie exactly (classes 4 and 5 on every point, at the top on some)
    tied = nn.Sequential(nn.Linear(10, 32), MinMax(), nn.Linear(32, N_CLASSES))
    with torch.no_grad():
        tied[2].weight[[4, 5, 9, 10]] = 0.0
        tied[2].bias.zero_()
        tied[2].bias[[4, 5]] = 0.3
        tied[2].bias[[9, 10]] = 0.1
    yield "tied", tied, torch.randn(300, 10)
    # classes 4 and 5 tie at the top of every point and no tie crosses rank K > 1: the top-K
    # selection (not the full-sort fallback) orders the tie
    top_tied = nn.Sequential(nn.Linear(10, 32), MinMax(), nn.Linear(32, N_CLASSES))
    with torch.no_grad():
        top_tied[2].weight[[4, 5]] = 0.0
        top_tied[2].bias.zero_()
        top_tied[2].bias[[4, 5]] = 4.0
    yield "tied at the top", top_tied, torch.randn(300, 10)


@pytest.mark.parametrize("guarantee", GUARANTEES, ids=repr)
@pytest.mark.parametrize("name, model, x", list(_models()), ids=[m[0] for m in _models()])
def test_certificates_equal_full_sort_reference(full_sort_reference, guarantee, name, model, x):
    certified = rejected = 0
    radii = (None,) if isinstance(guarantee, IGRP) else (0.0, 0.01, 0.1, 1.0)
    for eps in radii:
        new = rp.certify(model, x, eps=eps, certifier="gloro", guarantee=guarantee)
        old = full_sort_reference(model, x, eps=eps, certifier="gloro", guarantee=guarantee)
        for field in ("pred", "certified", "k", "classes", "margin", "radius"):
            torch.testing.assert_close(getattr(new, field), getattr(old, field), rtol=0, atol=0, equal_nan=True,
                                       msg=f"{field} differs")
        certified += int(new.certified.sum())
        rejected += int((~new.certified).sum())
    with torch.no_grad():
        ranked = model(x).sort(dim=1, descending=True).values
    if name == "random":
        assert certified and rejected  # both outcomes are compared
    elif name == "tied":
        assert (ranked[:, :-1] == ranked[:, 1:]).any(dim=1).all()  # every point has tied logits
    else:
        assert (ranked[:, 0] == ranked[:, 1]).all()
        k = guarantee.max_k(N_CLASSES)
        assert k == 1 or (ranked[:, k - 1] > ranked[:, k]).all()


@pytest.mark.parametrize("certifier", ["ibp", "crown-ibp", "crown"])
@pytest.mark.parametrize("guarantee", [RTK(3), Affinity([[0, 1, 2], [2, 3], [4, 5, 6, 7, 8]])], ids=repr)
def test_bound_propagation_certificates_equal_full_sort_reference(monkeypatch, certifier, guarantee):
    """Bound propagation reads the classes beyond rank K only as a set: same certificates."""
    for name, model, x in _models():
        new = rp.certify(model, x[:40], eps=0.05, norm="inf", certifier=certifier, guarantee=guarantee)
        with monkeypatch.context() as patch:
            patch.setattr("relaxplug.adapters.base.rank_order", lambda logits, k=None: full_sort_order(logits.detach()))
            old = rp.certify(model, x[:40], eps=0.05, norm="inf", certifier=certifier, guarantee=guarantee)
        for field in ("pred", "certified", "k", "classes", "margin"):
            assert torch.equal(getattr(new, field), getattr(old, field)), (name, field)


def test_check_inputs_accepts_finite_values_whose_sum_overflows():
    check_inputs(torch.full((4, 3), 3e38), 0.1)
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = torch.randn(4, 3)
        x[2, 1] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            check_inputs(x, 0.1)


@pytest.mark.parametrize("certifier", ["gloro", "ibp"])
@pytest.mark.parametrize("make, error, words", [
    (lambda m, x: (lambda z: m(z), x), TypeError, "model must be a torch.nn.Module, got function"),
    (lambda m, x: (m, x.long()), TypeError, "x must be a floating-point tensor, got torch.int64"),
    (lambda m, x: (m, x.double()), TypeError, "the model's 0.weight is torch.float32 but x is torch.float64"),
    (lambda m, x: (m, x[:, :3]), ValueError, r"the model failed on x of shape \(4, 3\) \(torch.float32\): mat1 and mat2"),
])
def test_a_model_that_cannot_run_on_x_is_refused_before_any_work(certifier, make, error, words):
    model, x = make(nn.Sequential(nn.Linear(5, 3)), torch.randn(4, 5))
    with pytest.raises(error, match=words):
        rp.certify(model, x, 0.1, certifier=certifier)


@pytest.mark.parametrize("labels, words", [
    (torch.tensor([True, False, True]), "labels must be integer class indices, got torch.bool"),
    ([0, 1, "a"], "labels must be integer class indices: "),
    (torch.tensor([0.0, 0.5, 1.0]), "labels must be integer class indices"),
    (torch.tensor([0, 3, 1]), "label 3 is out of range for 3 classes"),
])
def test_vra_refuses_labels_that_are_not_class_indices(labels, words):
    cert = rp.certify(nn.Sequential(nn.Linear(4, 3)), torch.randn(3, 4), 0.1)
    with pytest.raises(ValueError, match=words):
        cert.vra(labels)
    assert 0.0 <= cert.vra([0, 1, 2]) <= 1.0


@pytest.mark.parametrize("certifier", ["gloro", "ibp"])
@pytest.mark.parametrize("wrap, words", [
    (lambda m, x: torch.jit.script(m), "TorchScript module"),
    (lambda m, x: torch.jit.trace(m, x[:1]), "TorchScript module"),
])
def test_opaque_wrappers_are_refused_with_what_to_certify_instead(certifier, wrap, words):
    model, x = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval(), torch.randn(4, 5)
    with pytest.raises(TypeError, match=words):
        rp.certify(wrap(model, x), x, 0.1, certifier=certifier)

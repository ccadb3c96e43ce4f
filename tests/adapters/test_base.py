import itertools

import pytest
import torch

from relaxplug.adapters import RTK, Affinity, Standard, rank_order, topk_margins
from relaxplug.adapters.base import topk_class_mask


def test_rank_order_breaks_ties_by_index():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    assert rank_order(logits).tolist() == [[1, 2, 4, 0, 3]]


def test_topk_margins_matches_loops():
    torch.manual_seed(1)
    lower = torch.randn(3, 4, 6)
    got = topk_margins(lower)
    for b in range(3):
        for k in range(1, 5):
            want = min(lower[b, r, s].item() for r in range(k) for s in range(k, 6))
            assert got[b, k - 1].item() == pytest.approx(want)


def test_topk_margins_k_equals_n_is_infinite():
    lower = torch.randn(2, 3, 3)
    assert torch.isinf(topk_margins(lower)[:, 2]).all()


def test_topk_margins_is_differentiable():
    lower = torch.randn(2, 3, 5, requires_grad=True)
    topk_margins(lower).sum().backward()
    assert lower.grad is not None and lower.grad.abs().sum() > 0


def test_topk_class_mask():
    order = torch.tensor([[2, 0, 1], [0, 1, 2]])
    mask = topk_class_mask(order, torch.tensor([2, 0]))
    assert mask.tolist() == [[True, False, True], [False, False, False]]


def test_accept_masks():
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    assert Standard().accept(order).tolist() == [[True], [True]]
    assert RTK(3).accept(order).all()
    affinity = Affinity([[0, 1], [1, 2, 3]])
    assert affinity.accept(order).tolist() == [[True, True, False], [True, True, True]]


def test_affinity_singletons_always_accepted():
    order = torch.tensor([[4, 0, 1, 2, 3]])
    assert Affinity([[0, 1]]).accept(order).tolist() == [[True, False]]


@pytest.mark.parametrize(
    "sets, message",
    [([[0, 7]], "out of range"), ([[0, 1, 2, 3, 4, 5]], "more than"), ([[]], "empty"), ([[1, 1]], "repeats")],
)
def test_affinity_rejects_bad_sets(sets, message):
    with pytest.raises(ValueError, match=message):
        Affinity(sets).validate(5)


def test_rtk_rejects_k_not_below_n():
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        RTK(5).validate(5)
    with pytest.raises(ValueError):
        RTK(0)


def test_evaluate_picks_loosest_certified_k():
    order = torch.tensor([[0, 1, 2, 3]])
    # m^1 < 0, m^2 > 0, m^3 > 0 -> certified with k = 3 under RTK(3), k = 0 under Standard
    lower = torch.full((1, 3, 4), 5.0)
    lower[0, 0, 1] = -1.0  # pair (rank0, rank1) only matters for k = 1
    result = RTK(3).evaluate(order, [lower])
    assert result.certified.item() and result.k.item() == 3
    assert result.classes.tolist() == [[True, True, True, False]]
    assert not Standard().evaluate(order, [lower[:, :1]]).certified.item()


def test_evaluate_exhaustive_small():
    """Every sign pattern of pair bounds on 4 classes: evaluate agrees with the loop definition."""
    n = 4
    pairs = [(r, s) for r in range(3) for s in range(r + 1, n)]
    for signs in itertools.product([-1.0, 1.0], repeat=len(pairs)):
        lower = torch.full((1, 3, n), float("nan"))
        for (r, s), v in zip(pairs, signs):
            lower[0, r, s] = v
        lower = torch.nan_to_num(lower, nan=123.0)
        got = RTK(3).evaluate(torch.arange(n)[None], [lower])
        want_k = 0
        for k in range(1, 4):
            if all(signs[pairs.index((r, s))] > 0 for r in range(k) for s in range(k, n)):
                want_k = k
        assert got.k.item() == want_k

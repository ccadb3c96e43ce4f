"""The floating-point error model's constants."""

import math

import pytest
import torch

from relaxplug.lipschitz.rounding import ForwardError, dot_gamma, gamma, unit_roundoff


def test_unit_roundoff_per_dtype_and_matmul_precision():
    assert unit_roundoff(torch.float32, "cpu") == (2.0**-24, 0.0)  # inputs used as they are
    assert unit_roundoff(torch.float64, "cpu")[0] == 2.0**-53
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert unit_roundoff(torch.float32, "cpu")[1] == 2.0**-7  # bfloat16 inputs, truncation covered
    finally:
        torch.set_float32_matmul_precision(previous)
    with pytest.raises(ValueError, match="int64"):
        unit_roundoff(torch.int64, "cpu")


def test_gamma_is_the_worst_case_of_k_roundings():
    u = 2.0**-24
    assert gamma(10, u) == pytest.approx(10 * u / (1 - 10 * u), rel=1e-15)
    # the product of k worst-case roundings stays within gamma_k, in both directions
    for k in (1, 7, 1000):
        assert (1 + u) ** k - 1 <= gamma(k, u) and 1 - (1 - u) ** k <= gamma(k, u)
    with pytest.raises(ValueError, match="too many"):
        gamma(2**23, u)


def test_dot_gamma_is_the_deterministic_worst_case():
    u = 2.0**-24
    assert dot_gamma(10, u, 0.0) == pytest.approx(gamma(12, u), rel=1e-12)
    n = 10_000  # no probabilistic sqrt(n): linear in n for every length
    assert dot_gamma(n, u, 0.0) == pytest.approx(gamma(n + 2, u), rel=1e-12)
    # rounded (TF32) inputs: both operands rounded, accumulation with 2u
    assert dot_gamma(n, u, 2.0**-10) == pytest.approx((1 + 2.0**-10) ** 2 * (1 + gamma(n + 2, 2 * u)) - 1, rel=1e-12)


def test_a_worst_case_sum_exceeds_the_probabilistic_bound_but_not_gamma():
    """Round-to-nearest errors that all go one way: summing 1 + 2^-24 ... in float32 loses every
    small term (each addition rounds down by its full size), an error linear in n. Higham-Mary's
    ``10 sqrt(n) u`` does not cover it for n = 2^16; ``gamma_n`` does."""
    n = 2**14
    x = torch.full((n,), 2.0**-24 * 0.999, dtype=torch.float32)
    x[0] = 1.0
    total = torch.zeros((), dtype=torch.float32)
    for chunk in x.split(1):  # strictly sequential, left to right
        total = total + chunk[0]
    exact = x.double().sum()
    error = float((total.double() - exact).abs())
    scale = float(x.double().abs().sum())
    assert error > 10 * math.sqrt(n) * 2.0**-24 * scale  # the probabilistic bound fails here
    assert error <= dot_gamma(n, 2.0**-24, 0.0) * scale


def test_float32_dot_products_stay_within_the_model():
    gen = torch.Generator().manual_seed(0)
    for n in (10, 1000, 100_000):
        w = torch.randn(64, n, generator=gen)
        x = torch.randn(n, generator=gen) + 100.0  # large, cancelling terms
        exact = w.double() @ x.double()
        error = ((w @ x).double() - exact).abs()
        assert torch.all(error <= dot_gamma(n, 2.0**-24, 0.0) * (w.abs().double() @ x.abs().double()))


def test_forward_error_is_affine_in_the_input_norm():
    err = ForwardError(0.5, 2.0)
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.equal(err(x), torch.tensor([10.5, 0.5], dtype=torch.float64))

"""The floating-point error model's constants."""

import math

import pytest
import torch

from relaxplug.lipschitz.rounding import LAMBDA, ForwardError, dot_gamma, unit_roundoff


def test_unit_roundoff_per_dtype_and_matmul_precision():
    assert unit_roundoff(torch.float32, "cpu") == (2.0**-24, 2.0**-24)
    assert unit_roundoff(torch.float64, "cpu")[0] == 2.0**-53
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert unit_roundoff(torch.float32, "cpu")[1] == 2.0**-8
    finally:
        torch.set_float32_matmul_precision(previous)
    with pytest.raises(ValueError, match="int64"):
        unit_roundoff(torch.int64, "cpu")


def test_dot_gamma_is_the_smaller_of_worst_case_and_probabilistic():
    u = 2.0**-24
    assert dot_gamma(10, u, u) == pytest.approx(2 * (12 * u + 2 * u))
    n = 10_000
    assert dot_gamma(n, u, u) == pytest.approx(2 * (LAMBDA * math.sqrt(n + 2) * u + 2 * u))


def test_float32_dot_products_stay_within_the_model():
    gen = torch.Generator().manual_seed(0)
    for n in (10, 1000, 100_000):
        w = torch.randn(64, n, generator=gen)
        x = torch.randn(n, generator=gen) + 100.0  # large, cancelling terms
        exact = w.double() @ x.double()
        error = ((w @ x).double() - exact).abs()
        assert torch.all(error <= dot_gamma(n, 2.0**-24, 2.0**-24) * (w.abs().double() @ x.abs().double()))


def test_forward_error_is_affine_in_the_input_norm():
    err = ForwardError(0.5, 2.0)
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.equal(err(x), torch.tensor([10.5, 0.5], dtype=torch.float64))

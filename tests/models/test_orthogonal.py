"""Orthogonal layers: their sound bounds against the exact operator norm (float64 Jacobians)."""

import pytest
import torch

from relaxplug.models.orthogonal import (
    BROConv2d,
    BROLinear,
    CholeskyLinear,
    CholeskyPatchConv2d,
    block_reflector,
    cholesky_orthogonalize,
)


def exact_norm(layer: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """Largest singular value of the (affine) layer's linear part, from its full Jacobian."""
    dim = 1
    for s in input_shape:
        dim *= s
    basis = torch.eye(dim, dtype=torch.float64).reshape(dim, *input_shape)
    with torch.no_grad():
        columns = layer(basis) - layer(torch.zeros(1, *input_shape, dtype=torch.float64))
    return float(torch.linalg.svdvals(columns.reshape(dim, -1))[0])


def test_cholesky_rows_are_orthonormal_for_a_wide_matrix():
    w = cholesky_orthogonalize(torch.randn(6, 20, dtype=torch.float64))
    s = torch.linalg.svdvals(w)
    assert float(s.max()) <= 1.0 and float(s.min()) > 0.99


def test_cholesky_shrinks_a_tall_matrix_below_one():
    s = torch.linalg.svdvals(cholesky_orthogonalize(torch.randn(20, 6, dtype=torch.float64)))
    assert float(s.max()) <= 1.0


@pytest.mark.parametrize("complex_", [False, True])
def test_block_reflector_is_unitary(complex_):
    dtype = torch.complex128 if complex_ else torch.float64
    v = torch.randn(3, 8, 3, dtype=dtype)
    w = block_reflector(v)
    eye = torch.eye(8, dtype=dtype).expand(3, 8, 8)
    assert torch.allclose(w.transpose(-2, -1).conj() @ w, eye, atol=1e-4)
    # reflects the range of V, fixes its orthogonal complement
    assert torch.allclose(w @ v, -v, atol=1e-4)


def test_block_reflector_needs_low_rank():
    with pytest.raises(ValueError, match="rank"):
        block_reflector(torch.randn(4, 4))


LAYERS = [
    ("cholesky_linear", lambda: CholeskyLinear(12, 6), (12,)),
    ("cholesky_linear_tall", lambda: CholeskyLinear(6, 12), (6,)),
    ("cholesky_residual", lambda: CholeskyLinear(10, 10, residual=True, depth=4), (10,)),
    ("cholesky_patch", lambda: CholeskyPatchConv2d(3, 5, patch=2), (3, 4, 6)),
    ("cholesky_patch_remainder", lambda: CholeskyPatchConv2d(2, 4, patch=2), (2, 5, 5)),
    ("bro_linear", lambda: BROLinear(8, 8, rank=3), (8,)),
    ("bro_linear_sliced", lambda: BROLinear(10, 6), (10,)),
    ("bro_conv", lambda: BROConv2d(4, 4, rank=2), (4, 5, 5)),
    ("bro_conv_sliced", lambda: BROConv2d(3, 6, rank=2, kernel_size=5), (3, 4, 4)),
]


@pytest.mark.parametrize("name,make,shape", LAYERS, ids=[row[0] for row in LAYERS])
def test_sound_bound_is_above_the_exact_norm_and_tight(name, make, shape):
    layer = make().double()
    with torch.no_grad():  # move away from the identity-like initialisation
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    exact = exact_norm(layer, shape)
    bound = float(layer.lipschitz_bound(shape))
    assert bound >= exact
    assert bound <= 1.0 + 1e-4  # orthogonal by construction
    assert exact >= 0.9 * bound, (exact, bound)  # tight (cropping costs the sliced BRO conv 8%)


def test_bro_conv_bound_is_tight_when_no_crop_is_lost():
    # with a 1x1 kernel there is no padding: the operator is W(0) on every pixel, a slice of a unitary
    layer = BROConv2d(4, 4, rank=2, kernel_size=1).double()
    exact = exact_norm(layer, (4, 3, 3))
    assert abs(float(layer.lipschitz_bound((4, 3, 3))) - exact) < 1e-4


def test_bro_conv_is_a_real_linear_map_with_bias():
    layer = BROConv2d(4, 4, rank=2).double()
    with torch.no_grad():
        layer.bias.normal_()
    x, y = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 4, 6, 6, dtype=torch.float64)
    zero = layer(torch.zeros_like(x))
    assert torch.allclose(layer(x + y) - zero, (layer(x) - zero) + (layer(y) - zero), atol=1e-10)
    assert torch.allclose(zero, layer.bias[None, :, None, None].expand_as(zero))


def test_gradients_reach_the_parameters():
    for layer, x in [(BROConv2d(4, 4), torch.randn(2, 4, 5, 5)), (CholeskyLinear(6, 6, residual=True), torch.randn(2, 6)),
                     (CholeskyPatchConv2d(2, 4, 2), torch.randn(2, 2, 4, 4)), (BROLinear(6, 4), torch.randn(2, 6))]:
        layer(x).square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in layer.parameters() if p is not layer.bias)


def test_estimates_are_one_and_bad_arguments_raise():
    assert float(CholeskyLinear(4, 4).lipschitz_estimate((4,))) == 1.0
    with pytest.raises(ValueError, match="rank"):
        BROLinear(4, 4, rank=4)
    with pytest.raises(ValueError, match="odd"):
        BROConv2d(4, 4, kernel_size=2)
    with pytest.raises(ValueError, match="square"):
        CholeskyLinear(4, 6, residual=True)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        BROConv2d(4, 4)(torch.randn(1, 3, 5, 5))


def test_declared_rounding_covers_float32_against_float64():
    from relaxplug.models.liresnet import LiResConv2d

    cases = [
        (CholeskyLinear(12, 8), (12,)), (BROLinear(10, 6), (10,)), (CholeskyPatchConv2d(3, 4, 2), (3, 4, 4)),
        (BROConv2d(4, 6, rank=2), (4, 5, 5)), (LiResConv2d(6, 2), (6, 5, 5)),
    ]
    for layer, shape in cases:
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(0.5 * torch.randn_like(p))
        x = 10 * torch.randn(8, *shape)
        exact = layer.double()(x.double())
        computed = layer.float()(x).double()
        c0, c1 = layer.lipschitz_rounding(shape)
        allowed = c0 + c1 * x.double().flatten(1).norm(dim=1)
        error = (computed - exact).flatten(1).norm(dim=1)
        assert (error <= allowed).all(), (type(layer).__name__, error, allowed)
        assert (allowed < 1e-2 * exact.flatten(1).norm(dim=1)).all()  # and not vacuous


def test_eval_weight_cache_follows_every_write_to_the_parameters():
    layer = CholeskyLinear(6, 6, residual=True).eval()
    x = torch.randn(3, 6)
    first = layer(x)
    assert layer.weight() is layer.weight()  # reused while the parameters are unchanged
    layer.gamma.data.mul_(3.0)  # a write through .data does not bump _version: values are compared
    second = layer(x)
    layer.train()
    assert torch.allclose(second, layer(x), atol=1e-6) and not torch.allclose(first, second)
    assert layer(x).requires_grad and layer.weight().grad_fn is not None  # training recomputes with grad
    conv = BROConv2d(4, 4).eval()
    before = float(conv.lipschitz_bound((4, 5, 5)))
    with torch.no_grad():
        conv.raw.mul_(0.0).add_(torch.randn_like(conv.raw))
    assert torch.allclose(conv(torch.zeros(1, 4, 5, 5)), conv.bias[None, :, None, None].expand(1, 4, 5, 5))
    exact = exact_norm(conv.double(), (4, 5, 5))
    assert float(conv.lipschitz_bound((4, 5, 5))) >= exact and before > 0

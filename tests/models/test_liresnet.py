"""LiResNet and BRO networks: the residual block bounded as one operator, last-layer
normalization, the registered architectures."""

import pytest
import torch
import torch.nn.functional as F

from relaxplug.models import build_model
from relaxplug.models.liresnet import LiResConv2d, build_bronet, build_liresnet, normalize_rows
from tests.models.test_orthogonal import exact_norm


def _perturbed(width=4, depth=3):
    layer = LiResConv2d(width, depth).double()
    with torch.no_grad():
        layer.raw.normal_(0, 0.5)
        layer.gamma.uniform_(0.5, 2.0)
        layer.bias.normal_()
    return layer


def test_residual_block_is_x_plus_conv():
    layer = _perturbed()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    conv = F.conv2d(x, layer.gamma * layer.raw * layer.scale, layer.bias, padding=1)
    assert torch.allclose(layer(x), x + conv, atol=1e-12)


@pytest.mark.parametrize("hw", [(6, 6), (5, 7)])
def test_residual_bound_is_sound_and_tighter_than_one_plus_conv(hw):
    layer = _perturbed()
    shape = (4, *hw)
    exact = exact_norm(layer, shape)
    bound = float(layer.lipschitz_bound(shape))
    assert exact <= bound <= 1.1 * exact, (exact, bound)
    conv_only = LiResConv2d(4).double()
    with torch.no_grad():
        conv_only.raw.copy_(layer.gamma * layer.raw * layer.scale)
        conv_only.identity.zero_()
    separate = 1 + float(conv_only.lipschitz_bound(shape))
    assert bound < separate  # bounding x + conv(x) as one operator pays off


def test_estimate_is_differentiable_and_converges_from_below():
    layer = _perturbed()
    shape = (4, 6, 6)
    estimate = layer.lipschitz_estimate(shape)
    estimate.backward()
    assert layer.raw.grad is not None and layer.raw.grad.abs().sum() > 0
    layer.power_iterations = 50
    for _ in range(10):
        value = float(layer.lipschitz_estimate(shape).detach())
    exact = exact_norm(layer, shape)
    assert value <= exact * (1 + 1e-9) and value >= 0.999 * exact


def test_last_layer_normalization_is_what_every_reader_sees():
    head = normalize_rows(torch.nn.Linear(5, 3))
    with torch.no_grad():
        head.parametrizations.weight.original.mul_(7.0)
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(3))
    x = torch.randn(4, 5)
    assert torch.allclose(head(x), x @ head.weight.T + head.bias)
    assert isinstance(head, torch.nn.Linear)


def test_architectures_build_and_round_trip_through_state_dict():
    for name in ("liresnet_digits", "bronet_digits"):
        model = build_model(name, (1, 8, 8), 10)
        x = torch.randn(3, 1, 8, 8)
        out = model(x)
        assert out.shape == (3, 10)
        twin = build_model(name, (1, 8, 8), 10)
        twin.load_state_dict(model.state_dict())
        assert torch.allclose(twin(x), out)
        assert isinstance(model[-1], torch.nn.Linear)


def test_paper_sized_liresnet_shapes():
    model = build_liresnet((3, 32, 32), 100, depth=2, width=16, neck_features=64, mlp_depth=1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="divisible by neck_patch"):
        build_liresnet((3, 20, 20), 10, width=8)
    with pytest.raises(ValueError, match="even width"):
        build_liresnet((3, 32, 32), 10, width=7)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_bronet((64,), 10)


def _pgd_min_set_margin(model, x, sets, eps, steps=60, restarts=2):
    """Projected gradient descent on ``min_{j in T} f_j - max_{i not in T} f_i`` over the L2 ball;
    returns the perturbed inputs with the smallest margin found (checked by a forward pass)."""
    big = 1e9
    best_x, best = x.clone(), torch.full((x.shape[0],), float("inf"))
    gen = torch.Generator().manual_seed(0)
    for restart in range(restarts):
        delta = torch.randn(x.shape, generator=gen) * (eps / 4 if restart else 0.0)
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = model(x + delta)
            margin = torch.where(sets, logits, big).amin(1) - torch.where(sets, -big, logits).amax(1)
            (grad,) = torch.autograd.grad(margin.sum(), delta)
            with torch.no_grad():
                step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                delta = delta - 0.1 * eps * step
                delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)
        with torch.no_grad():
            logits = model(x + delta)  # the forward pass that confirms a counterexample
            margin = torch.where(sets, logits, big).amin(1) - torch.where(sets, -big, logits).amax(1)
            better = margin < best
            best = torch.where(better, margin, best)
            best_x[better] = (x + delta)[better]
    return best_x, best


@pytest.mark.parametrize("name", ["liresnet_digits", "bronet_digits"])
@pytest.mark.parametrize("guarantee", ["standard", "rtk:2"])
def test_pgd_breaks_no_certificate(name, guarantee):
    import relaxplug as rp

    torch.manual_seed(1)
    model = build_model(name, (1, 8, 8), 10).eval()
    with torch.no_grad():  # a less uniform network than the initialisation
        model[-1].parametrizations.weight.original.mul_(torch.rand(10, 1) * 4)
        model[-1].bias.normal_(0, 0.3)
    x = torch.rand(48, 1, 8, 8)
    radius = rp.certify(model, x, 0.0, guarantee=guarantee).radius
    eps = float(radius.median())
    assert eps > 0
    cert = rp.certify(model, x, eps, guarantee=guarantee)
    assert 5 <= int(cert.certified.sum()) < 48  # some points certified, some not
    certified = cert.certified
    _, margin = _pgd_min_set_margin(model, x[certified], cert.classes[certified], eps)
    assert (margin > 0).all(), f"{int((margin <= 0).sum())} certificates broken"
    # negative control: the same attack breaks the claim on far larger balls for uncertified points
    _, far = _pgd_min_set_margin(model, x, cert.classes.where(certified[:, None], torch.nn.functional.one_hot(
        cert.pred, 10).bool()), 200 * eps)
    assert (far <= 0).any()

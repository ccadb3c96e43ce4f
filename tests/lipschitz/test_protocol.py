"""The Lipschitz protocol: every declared bound against the exact operator norm (float64 Jacobians)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relaxplug as rp
from relaxplug.lipschitz import LipschitzEstimator, UnsupportedLayerError, register_lipschitz
from relaxplug.lipschitz.protocol import lipschitz_rule, registered_lipschitz, unregister_lipschitz
from relaxplug.lipschitz.spectral import FLOAT_ALLOWANCE
from relaxplug.models.layers import InvertibleDownsample, MinMax, Normalize, Residual


def _jacobian_norm(module: nn.Module, x: torch.Tensor) -> float:
    """Largest singular value of the Jacobian of ``module`` at one example ``x`` (float64)."""
    jac = torch.autograd.functional.jacobian(lambda t: module(t[None])[0], x)
    return float(torch.linalg.svdvals(jac.reshape(-1, x.numel()))[0])


def _max_jacobian_norm(module: nn.Module, shape: tuple[int, ...], points: int = 4) -> float:
    gen = torch.Generator().manual_seed(0)
    return max(_jacobian_norm(module, torch.randn(shape, generator=gen, dtype=torch.float64)) for _ in range(points))


def _conv(*args, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(*args, **kwargs).double()


torch.manual_seed(0)
#: (layer, per-example input shape, whether the layer is linear: then the Jacobian norm is the exact constant)
LAYERS = [
    ("linear", nn.Linear(6, 4).double(), (6,), True),
    ("conv_zeros", _conv(2, 3, 3, padding=1), (2, 5, 5), True),
    ("conv_stride2", _conv(2, 4, 3, stride=2, padding=1), (2, 6, 6), True),
    ("conv_reflect", _conv(2, 3, 3, padding=1, padding_mode="reflect"), (2, 5, 5), True),
    ("conv_circular", _conv(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 5), True),
    ("conv_replicate", _conv(2, 3, 3, padding=2, padding_mode="replicate"), (2, 5, 5), True),
    ("minmax", MinMax(), (4, 3, 3), False),
    ("downsample", InvertibleDownsample(2), (2, 4, 4), True),
    ("normalize", Normalize([0.1, -0.2], [0.3, 2.0]).double(), (2, 3, 3), True),
    ("residual_linear", Residual(nn.Linear(5, 5).double()), (5,), True),
    ("residual_conv", Residual(_conv(3, 3, 3, padding=1)), (3, 5, 5), True),
    ("residual_generic", Residual(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4)).double()), (4,), False),
]


@pytest.mark.parametrize("name, layer, shape, linear", LAYERS, ids=[row[0] for row in LAYERS])
def test_declared_bound_is_above_the_exact_operator_norm(name, layer, shape, linear):
    layer.eval()
    rule = lipschitz_rule(layer)
    assert rule is not None, f"{name} declares no Lipschitz rule"
    bound = rule.bound(layer, shape)
    assert bound.dtype == torch.float64 and bound.dim() == 0
    exact = _max_jacobian_norm(layer, shape)
    assert exact <= float(bound)
    if linear and name not in ("conv_reflect", "conv_replicate"):  # copy-padding bounds are looser by design
        # FFT bounds on small grids are loose by a few percent at most here; dense ones are exact
        assert float(bound) <= exact * 1.25


def test_liresnet_block_is_bounded_as_one_operator():
    """``x + conv(x)`` with a kernel close to ``-I``: the operator ``I + W`` is small, ``1 + ||W||`` is not."""
    conv = _conv(3, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.mul_(0.05)
        conv.weight[torch.arange(3), torch.arange(3), 1, 1] = -0.9
    block = Residual(conv).eval()
    bound = float(block.lipschitz_bound((3, 6, 6)))
    exact = _max_jacobian_norm(block, (3, 6, 6), points=1)
    assert exact <= bound < 0.5 * (1 + float(conv.weight.detach().flatten().norm()))
    assert bound <= exact * 1.25


def test_estimates_are_below_bounds_and_persist_as_buffers():
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), MinMax(), nn.Flatten(), nn.Linear(64, 3)).train()
    est = LipschitzEstimator(model, (2, 4, 4))
    for _ in range(30):
        value = est.power(1)
    assert value.requires_grad
    assert float(value.detach()) <= est.sound()  # power iteration approaches each layer's norm from below
    keys = [k for k in model.state_dict() if "lipschitz_u_" in k]
    assert sorted(keys) == ["0.lipschitz_u_2x4x4", "3.lipschitz_u_in"]
    # eval mode reads the vectors without updating them
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if k in keys}
    est.power(1)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in keys)
    # a copy (EMA, DDP replica, checkpoint) carries them
    clone = copy.deepcopy(model)
    assert all(torch.equal(clone.state_dict()[k], model.state_dict()[k]) for k in keys)
    fresh = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), MinMax(), nn.Flatten(), nn.Linear(64, 3))
    rp.lipschitz.load_lipschitz_state(fresh, model.state_dict())
    fresh.load_state_dict(model.state_dict())


class Scaled(nn.Module):
    """A user layer declaring its own bound (the documented example)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * torch.tanh(x)

    def lipschitz_bound(self, input_shape):
        return torch.tensor(abs(self.factor), dtype=torch.float64)

    def lipschitz_estimate(self, input_shape):
        return torch.tensor(abs(self.factor))


def test_user_layer_plugs_into_certification_and_training():
    model = nn.Sequential(nn.Linear(3, 5), Scaled(2.5), nn.Linear(5, 2)).double().eval()
    est = LipschitzEstimator(model, (3,))
    reference = nn.Sequential(model[0], nn.Tanh(), model[2]).eval()
    plain = LipschitzEstimator(reference, (3,))
    assert est.sound() == pytest.approx(2.5 * plain.sound(), rel=1e-12)
    assert torch.isfinite(est.power(1))
    exact = _max_jacobian_norm(nn.Sequential(model[0], model[1]), (3,))
    assert exact <= est.sound()


def test_subclass_with_its_own_forward_does_not_inherit_the_bound():
    class Louder(Scaled):
        def forward(self, x):
            return 10 * super().forward(x)

    with pytest.raises(UnsupportedLayerError, match="inherits lipschitz_bound from Scaled"):
        LipschitzEstimator(nn.Sequential(nn.Linear(3, 3), Louder(1.0), nn.Linear(3, 2)), (3,)).sound()


def test_register_lipschitz_for_a_class_the_user_cannot_edit():
    class Frozen(nn.Module):  # stands for a third-party layer
        def forward(self, x):
            return 3 * x

    with pytest.raises(UnsupportedLayerError, match="round"):
        LipschitzEstimator(nn.Sequential(nn.Linear(2, 2), _Opaque(Frozen()), nn.Linear(2, 2)), (2,)).sound()
    register_lipschitz(Frozen, bound=lambda m, shape: torch.tensor(3.0, dtype=torch.float64))
    try:
        assert Frozen in registered_lipschitz()
        with pytest.raises(ValueError, match="already registered"):
            register_lipschitz(Frozen, bound=lambda m, shape: torch.tensor(3.0, dtype=torch.float64))
        model = nn.Sequential(nn.Linear(2, 2), Frozen(), nn.Linear(2, 2)).double()
        body = float(torch.linalg.svdvals(model[0].weight.detach())[0])
        assert LipschitzEstimator(model, (2,)).sound() == pytest.approx(3 * body, rel=1e-4)
    finally:
        unregister_lipschitz(Frozen)


class _Opaque(nn.Module):
    """Calls a module through a Python function fx cannot see into (so the op is refused by name)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.round(self.inner(x))


def test_register_lipschitz_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_lipschitz(int, bound=lambda m, s: torch.tensor(1.0))
    with pytest.raises(TypeError, match="callables"):
        register_lipschitz(nn.Tanh, bound=3.0)


def test_builtin_rules_match_exact_classes_only():
    assert nn.Linear in registered_lipschitz() and nn.Conv2d in registered_lipschitz()

    class MyLinear(nn.Linear):
        pass

    assert lipschitz_rule(MyLinear(2, 2)) is None  # traced into: its forward is what is bounded
    assert lipschitz_rule(nn.Linear(2, 2)) is not None
    assert isinstance(MinMax(), rp.LipschitzLayer) and not isinstance(nn.ReLU(), rp.LipschitzLayer)

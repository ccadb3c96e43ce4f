"""Tests of relaxplug.lipschitz.graph: Lipschitz bounds of arbitrary networks via torch.fx.

Lower references are exact where the math allows (the Jacobian of a linear map is the map, its
largest singular value the Lipschitz constant) and otherwise lower bounds of the true constant:
Jacobian spectral norms at sampled points, and difference quotients ``||f(x+d) - f(x)|| / ||d||``
pushed up by gradient ascent. A sound bound must be >= every one of them; where the bound is
exact it must also be <= the reference times ``1 + FLOAT_ALLOWANCE`` (float64 rounding aside).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relaxplug as rp
from relaxplug.lipschitz import spectral
from relaxplug.attacks.pgd import pgd_set_attack
from relaxplug.certifiers.gloro import GloRoCertifier
from relaxplug.lipschitz.graph import ACTIVATION_LIPSCHITZ, GraphLipschitzEstimator
from relaxplug.models.layers import InvertibleDownsample, MinMax, Normalize, Residual
from relaxplug.lipschitz import LipschitzEstimator, UnsupportedLayerError, estimator_for
from relaxplug.lipschitz.spectral import FLOAT_ALLOWANCE

UP = 1.0 + FLOAT_ALLOWANCE
EPS64 = 1e-12
TIGHT = 1.0 + spectral.CERTIFIED_RTOL  # a proven spectral norm is within this of the exact one


# ----------------------------------------------------------------------------- helpers


def _jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(out, in)`` Jacobian of one example (float64 model)."""
    J = torch.autograd.functional.jacobian(lambda z: model(z[None])[0], x, vectorize=True)
    return J.reshape(-1, x.numel())


def _jacobian_norm(model: nn.Module, x: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(_jacobian(model, x), ord=2))


def _ascent(model: nn.Module, shape: tuple[int, ...], steps: int = 60, restarts: int = 3, seed: int = 0) -> float:
    """Largest difference quotient found by gradient ascent over pairs (a lower bound of Lip)."""
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(restarts):
        x = torch.randn((1, *shape), generator=gen, dtype=torch.float64).requires_grad_(True)
        d = (torch.randn((1, *shape), generator=gen, dtype=torch.float64) * 0.1).requires_grad_(True)
        opt = torch.optim.Adam([x, d], lr=0.02)
        for _ in range(steps):
            ratio = (model(x + d) - model(x)).norm() / d.norm()
            best = max(best, float(ratio.detach()))
            opt.zero_grad()
            (-ratio).backward()
            opt.step()
    return best




def _randomize_bn(model: nn.Module, seed: int = 0, spread: float = 1.0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                shape = m.running_var.shape
                m.running_mean.copy_(torch.randn(shape, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(shape, generator=gen) * spread + 0.3)
                m.weight.copy_(torch.randn(shape, generator=gen) * spread)
                m.bias.copy_(torch.randn(shape, generator=gen) * 0.2)
    return model


def _exact(model: nn.Module, shape: tuple[int, ...]) -> float:
    """Norm of the Jacobian of a piecewise-linear-free (linear) model: its Lipschitz constant."""
    return _jacobian_norm(model, torch.zeros(shape, dtype=torch.float64))


def _total(model: nn.Module, shape: tuple[int, ...], **kwargs) -> float:
    return GraphLipschitzEstimator(model.eval(), shape, **kwargs).total()


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# ----------------------------------------------------------------------------- zoo-style nets


class PreActBlock(nn.Module):
    """RobustBench's PreActBlock (Rice et al. 2020; Wong et al. 2020)."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """A small PreAct-ResNet with the normalization inside the model, as RobustBench's."""

    def __init__(self, widths=(8, 16), n_classes: int = 10):
        super().__init__()
        self.register_buffer("mu", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.layer1 = PreActBlock(widths[0], widths[0])
        self.layer2 = PreActBlock(widths[0], widths[1], 2)
        self.bn = nn.BatchNorm2d(widths[1])
        self.linear = nn.Linear(widths[1], n_classes)

    def forward(self, x):
        out = self.conv1((x - self.mu) / self.sigma)
        out = self.layer2(self.layer1(out))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1)
        out = out.view(out.size(0), -1)
        return self.linear(out)


class BasicBlock(nn.Module):
    """torchvision-style post-activation block with a BatchNorm'd projection shortcut."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.down = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class SmallResNet(nn.Module):
    def __init__(self, n_classes: int = 7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.block = BasicBlock(6, 8, 2)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


class WideBasicBlock(nn.Module):
    """RobustBench's WideResNet BasicBlock (in-place ReLUs, functional dropout, torch.add)."""

    def __init__(self, cin: int, cout: int, stride: int, droprate: float = 0.3):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.droprate = droprate
        self.equal = cin == cout
        self.shortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equal:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equal else x)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return torch.add(x if self.equal else self.shortcut(x), out)


class WideResNet(nn.Module):
    def __init__(self, widths=(4, 8, 12), n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = WideBasicBlock(widths[0], widths[1], 1)
        self.block2 = WideBasicBlock(widths[1], widths[2], 2)
        self.block3 = WideBasicBlock(widths[2], widths[2], 1)
        self.bn1 = nn.BatchNorm2d(widths[2])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[2], n_classes)
        self.n_channels = widths[2]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 4)
        out = out.view(-1, self.n_channels)
        return self.fc(out)


def _crown_ibp_cnn() -> nn.Sequential:
    """A CROWN-IBP style CNN (Conv, BN, ReLU, Flatten, Linear)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=1, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 8, 4, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5),
    )


def _nets() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return [
        ("preact", _randomize_bn(PreActResNet()).double().eval(), (3, 8, 8)),
        ("resnet", _randomize_bn(SmallResNet(), seed=1).double().eval(), (2, 8, 8)),
        ("crown_ibp", _randomize_bn(_crown_ibp_cnn(), seed=2).double().eval(), (1, 8, 8)),
        ("wide_resnet", _randomize_bn(WideResNet(), seed=3).double().eval(), (3, 8, 8)),
    ]


# ----------------------------------------------------------------------------- per-op constants


ACTIVATIONS = [
    (nn.ReLU(), 1.0), (nn.ReLU6(), 1.0), (nn.LeakyReLU(0.1), 1.0), (nn.LeakyReLU(1.7), 1.7),
    (nn.ELU(), 1.0), (nn.ELU(alpha=2.5), 2.5), (nn.Tanh(), None), (nn.Sigmoid(), None), (nn.SiLU(), None),
    (nn.GELU(), None), (nn.GELU(approximate="tanh"), None), (nn.Softplus(), None), (nn.Mish(), None),
    (nn.SELU(), None), (nn.Hardswish(), None), (nn.Hardsigmoid(), None), (nn.CELU(), None), (nn.Softsign(), None),
    (nn.LogSigmoid(), None), (nn.Hardtanh(), 1.0),
    (_Lambda(lambda x: x * torch.sigmoid(x)), None), (_Lambda(lambda x: F.gelu(x, approximate="tanh")), None),
    (_Lambda(lambda x: F.leaky_relu(x, 0.3)), 1.0), (_Lambda(lambda x: x.clamp(min=-1.0, max=2.0)), 1.0),
]


@pytest.mark.parametrize("act, expected", ACTIVATIONS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v))
def test_activation_constant_is_sup_of_derivative(act, expected):
    """The bound is >= max |f'| on a fine grid (sound) and within 1e-4 of it (tight)."""
    grid = torch.linspace(-12, 12, 240_001, dtype=torch.float64, requires_grad=True)
    (derivative,) = torch.autograd.grad(act(grid).sum(), grid)
    sup = float(derivative.abs().max())
    bound = _total(nn.Sequential(act), (5,))
    assert bound >= sup
    assert bound <= sup * (1 + 1e-4)
    if expected is not None:
        assert bound == pytest.approx(expected, rel=EPS64)


def test_activation_table_covers_named_values():
    # a few documented constants, independent of the grid test
    assert ACTIVATION_LIPSCHITZ["sigmoid"] == 0.25
    assert 1.0998393201 < ACTIVATION_LIPSCHITZ["silu"] < 1.0999
    assert 1.1289041451 < ACTIVATION_LIPSCHITZ["gelu"] < 1.1290


def test_single_linear_layer_is_exact():
    torch.manual_seed(1)
    model = nn.Linear(7, 5).double()
    exact = _exact(model, (7,))
    bound = _total(model, (7,))
    assert exact <= bound <= exact * UP * TIGHT


def test_single_batchnorm_is_exact():
    model = _randomize_bn(nn.BatchNorm2d(4), spread=3.0).double().eval()
    exact = _exact(model, (4, 3, 3))
    scale = (model.weight / torch.sqrt(model.running_var + model.eps)).abs().max().item()
    assert exact == pytest.approx(scale, rel=EPS64)
    bound = _total(model, (4, 3, 3))
    assert exact <= bound <= exact * UP * (1 + EPS64)


@pytest.mark.parametrize("pool, shape", [
    (nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (3, 5, 7)),
    (_Lambda(lambda x: x.mean((2, 3))), (2, 4, 6)),
    (_Lambda(lambda x: F.avg_pool2d(x, 2)), (2, 6, 6)),
    (nn.AvgPool2d(4), (1, 8, 8)),
    (nn.AdaptiveAvgPool2d(2), (2, 6, 4)),
    (_Lambda(lambda x: torch.sum(x, dim=-1)), (3, 5)),
])
def test_average_pooling_is_exact_without_overlap(pool, shape):
    exact = _exact(pool.double(), shape)
    bound = _total(pool, shape)
    assert exact <= bound <= exact * UP * (1 + EPS64)


def test_global_average_pool_is_one_over_sqrt_hw():
    bound = _total(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (3, 5, 7))
    assert bound == pytest.approx(1 / math.sqrt(35) * UP, rel=EPS64)


@pytest.mark.parametrize("pool, shape", [
    (nn.AvgPool2d(3, stride=1, padding=1), (1, 6, 6)),
    (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 7, 7)),
    (nn.AvgPool2d(3, stride=2, ceil_mode=True), (1, 8, 8)),
])
def test_overlapping_average_pooling_is_sound(pool, shape):
    exact = _exact(pool.double(), shape)
    bound = _total(pool, shape)
    assert bound >= exact


@pytest.mark.parametrize("kernel, stride, padding, dilation, expected", [
    (2, 2, 0, 1, 1.0), (3, 2, 1, 1, 2.0), (3, 1, 1, 1, 3.0), (2, 1, 0, 2, 2.0), (3, 3, 1, 1, 1.0),
])
def test_max_pool_bound_is_attained_at_a_spike(kernel, stride, padding, dilation, expected):
    """``sqrt(max windows containing one pixel)``; at an input whose largest pixel is in that many
    windows the Jacobian has exactly that norm, so the bound is exact."""
    pool = nn.MaxPool2d(kernel, stride, padding, dilation)
    shape = (1, 9, 9)
    bound = _total(pool, shape)
    assert bound == pytest.approx(expected, rel=EPS64)
    best = 0.0
    for i in range(9):
        for j in range(9):
            x = torch.rand(shape, dtype=torch.float64) * 0.1
            x[0, i, j] = 10.0
            best = max(best, _jacobian_norm(pool, x))
    assert best == pytest.approx(bound, rel=1e-12)


def test_adaptive_max_pool_is_sound():
    pool = nn.AdaptiveMaxPool2d((3, 2))
    shape = (2, 7, 5)
    bound = _total(pool, shape)
    best = 0.0
    for i in range(7):
        for j in range(5):
            x = torch.rand(shape, dtype=torch.float64) * 0.1
            x[:, i, j] = 10.0
            best = max(best, _jacobian_norm(pool, x))
    assert best <= bound
    assert best == pytest.approx(bound, rel=1e-12)  # windows overlap at most ceil/floor: the count is attained


def test_normalization_inside_the_model_is_exact():
    sigma = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    mu = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64)
    functional = _Lambda(lambda x: (x - mu.view(1, 3, 1, 1)) / sigma.view(1, 3, 1, 1))
    module = Normalize([0.4, 0.5, 0.6], [0.2, 0.5, 0.3]).double()
    for model in (module, functional):
        exact = _exact(model, (3, 2, 2))
        assert exact == pytest.approx(5.0, rel=1e-7)
        bound = _total(model, (3, 2, 2))
        assert exact <= bound <= exact * UP * (1 + 1e-7)


def test_broadcast_addition_counts_copies():
    """``x + mean_c(x)`` broadcasts the mean over C channels: Jacobian ``I + 11^T / C`` has norm 2."""
    model = _Lambda(lambda x: x + x.mean(dim=1, keepdim=True))
    exact = _exact(model, (4, 3))
    assert exact == pytest.approx(2.0, rel=1e-12)
    assert exact <= _total(model, (4, 3)) <= exact * UP * (1 + EPS64)


@pytest.mark.parametrize("fn, shape", [
    (lambda x: torch.cat([x, 2 * x], dim=1), (3, 2)),
    (lambda x: x[:, [0, 0, 1, 2, 0]], (4,)),
    (lambda x: F.pad(x, (2, 1, 1, 1), mode="reflect"), (1, 4, 5)),
    (lambda x: F.pad(x, (1, 1)), (2, 3)),
    (lambda x: x.expand(-1, 3, -1), (1, 4)),
    (lambda x: torch.stack([x, -x, x * 0.5], dim=2), (2, 2)),
    (lambda x: x.flip(1).view(x.size(0), -1).unsqueeze(1)[:, :, 1:], (2, 3)),
])
def test_copy_and_concatenation_ops_are_exact(fn, shape):
    model = _Lambda(fn)
    exact = _exact(model, shape)
    bound = _total(model, shape)
    assert exact <= bound * (1 + EPS64)
    assert bound <= exact * UP * (1 + EPS64)


class _ResidualConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def test_residual_and_chunk():
    torch.manual_seed(2)
    model = _ResidualConv().double()
    conv = model.conv
    bound = _total(model, (4, 5, 5))
    assert bound == pytest.approx(1 + spectral.conv_spectral_bound(conv.weight, (5, 5), padding=1), rel=EPS64)
    assert bound >= _exact(model, (4, 5, 5))
    halves = _Lambda(lambda x: x.chunk(2, dim=1)[0] * 3 + x.chunk(2, dim=1)[1])
    exact = _exact(halves, (6,))
    assert exact <= _total(halves, (6,)) * (1 + EPS64)


# ----------------------------------------------------------------------------- folding


def _conv_bn(groups: int = 1) -> nn.Sequential:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, stride=1, padding=1, groups=groups, bias=False), nn.BatchNorm2d(6))
    model = _randomize_bn(model, spread=1.0).double().eval()
    with torch.no_grad():  # the channel BN amplifies most has the smallest filters: folding matters
        model[1].weight.mul_(torch.tensor([100.0, 0.5, 1.0, 0.3, 2.0, 0.1], dtype=torch.float64))
        model[0].weight[0].mul_(0.01)
    return model


@pytest.mark.parametrize("groups", [1, 2])
def test_batchnorm_after_conv_is_folded(groups):
    model = _conv_bn(groups)
    conv, bn = model
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    folded = spectral.conv_spectral_bound(conv.weight * scale.view(-1, 1, 1, 1), (6, 6), padding=1, groups=groups)
    bound = _total(model, (4, 6, 6))
    assert bound == pytest.approx(folded, rel=EPS64)
    assert bound >= _exact(model, (4, 6, 6))
    unfolded = _total(model, (4, 6, 6), fold=False)
    assert bound < 0.2 * unfolded


@pytest.mark.parametrize("groups", [1, 2])
def test_scaling_before_conv_is_folded_through_relu(groups):
    """``conv(relu(bn(x)))`` with a large BN shift so the ReLU is the identity near 0: then the
    net is linear there and its Jacobian norm is the exact constant of ``conv o diag(s)``."""
    torch.manual_seed(4)
    bn = _randomize_bn(nn.BatchNorm2d(4), spread=1.0).double().eval()
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups, bias=False).double()
    with torch.no_grad():  # input channel 0 is amplified most and read by the smallest filters
        bn.weight.copy_(torch.tensor([100.0, 0.5, 1.0, -0.7], dtype=torch.float64))
        bn.bias.fill_(1e6)
        conv.weight[:, 0].mul_(0.01)
    model = nn.Sequential(bn, nn.ReLU(), conv).eval()
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs()
    w = conv.weight.reshape(groups, 6 // groups, 4 // groups, 3, 3) * scale.view(groups, 1, 4 // groups, 1, 1)
    folded = spectral.conv_spectral_bound(w.reshape(6, 4 // groups, 3, 3), (5, 5), padding=1, groups=groups)
    bound = _total(model, (4, 5, 5))
    assert bound == pytest.approx(folded, rel=EPS64)
    exact = _exact(model, (4, 5, 5))
    assert exact <= bound
    assert bound < 0.2 * _total(model, (4, 5, 5), fold=False)


def test_scaling_is_folded_into_the_head():
    """``W relu(bn(x))``: K_ji = ||(w_j - w_i) * s|| exactly when the ReLU is active."""
    torch.manual_seed(5)
    bn = _randomize_bn(nn.BatchNorm1d(6), spread=4.0).double().eval()
    with torch.no_grad():
        bn.bias.fill_(1e6)
    head = nn.Linear(6, 4).double()
    model = nn.Sequential(bn, nn.ReLU(), nn.Dropout(0.3), head).eval()
    est = GraphLipschitzEstimator(model, (6,))
    K = est.pair_lipschitz()
    J = _jacobian(model, torch.zeros(6, dtype=torch.float64))
    exact = torch.cdist(J[None], J[None])[0]
    assert torch.all(exact <= K * (1 + EPS64))
    assert torch.allclose(K, exact, rtol=1e-10, atol=0)
    # the body bound is the plain max |s|, the folded head is tighter
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().abs().max().item()
    assert est.sound() == pytest.approx(scale * UP, rel=EPS64)


def test_scaling_is_folded_through_a_steep_activation_into_a_dense_layer():
    """``W leaky_relu(bn(x), 3)`` with a large negative BN shift: the activation has slope 3 there,
    the net is ``3 W diag(s)`` near 0, and the bound (``3 ||W diag(s)||``) is exact."""
    torch.manual_seed(11)
    bn = _randomize_bn(nn.BatchNorm1d(6), spread=1.0).double().eval()
    dense = nn.Linear(6, 5).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([50.0, 1.0, -0.5, 2.0, 0.3, 1.5], dtype=torch.float64))
        bn.bias.fill_(-1e6)
        dense.weight[:, 0].mul_(0.01)
    model = nn.Sequential(bn, nn.LeakyReLU(3.0), dense).eval()
    exact = _exact(model, (6,))
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().abs()
    assert exact == pytest.approx(3 * float(torch.linalg.matrix_norm(dense.weight.detach() * scale, ord=2)), rel=1e-12)
    est = GraphLipschitzEstimator(model, (6,))
    assert exact <= est.total() <= exact * UP * TIGHT
    assert est.total() < 0.2 * _total(model, (6,), fold=False)
    J = _jacobian(model, torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(est.pair_lipschitz(), torch.cdist(J[None], J[None])[0], rtol=1e-10, atol=0)


def test_scaling_is_folded_through_global_pooling_into_the_head():
    """``W flatten(avgpool(relu(bn(x))))`` with the ReLU active: the rows of the Jacobian differ by
    ``(w_j - w_i) diag(s) P`` whose norm is ``||(w_j - w_i) * s|| / sqrt(HW)``: K is exact."""
    torch.manual_seed(9)
    bn = _randomize_bn(nn.BatchNorm2d(5), spread=3.0).double().eval()
    with torch.no_grad():
        bn.bias.fill_(1e6)
    model = nn.Sequential(bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4).double()).eval()
    K = GraphLipschitzEstimator(model, (5, 3, 4)).pair_lipschitz()
    J = _jacobian(model, torch.zeros(5, 3, 4, dtype=torch.float64))
    exact = torch.cdist(J[None], J[None])[0]
    assert torch.all(exact <= K)
    assert torch.allclose(K, exact * UP, rtol=1e-10, atol=0)


def test_scaling_is_folded_through_invertible_downsampling():
    """``conv(downsample(normalize(x)))``: the per-channel scale follows the space-to-depth
    permutation (channel c*4 + k takes channel c's scale); compare with the folded kernel."""
    torch.manual_seed(10)
    norm = Normalize([0.0, 0.0], [0.05, 2.0]).double()
    conv = nn.Conv2d(8, 3, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight[:, :4].mul_(0.01)  # the channels of the amplified input are read weakly
    model = nn.Sequential(norm, InvertibleDownsample(2), conv).eval()
    scale = torch.tensor([20.0] * 4 + [0.5] * 4, dtype=torch.float64)
    folded = spectral.conv_spectral_bound(conv.weight * scale.view(1, 8, 1, 1), (3, 3), padding=1)
    bound = _total(model, (2, 6, 6))
    assert bound == pytest.approx(folded, rel=1e-7)  # 1/std is float32-exact only to ~1e-7
    assert bound >= _exact(model, (2, 6, 6))
    assert bound < 0.2 * _total(model, (2, 6, 6), fold=False)


# ----------------------------------------------------------------------------- soundness on nets


@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=["preact", "resnet", "crown_ibp", "wide_resnet"])
def test_bound_is_above_every_observed_jacobian(index):
    name, model, shape = _nets()[index]
    est = GraphLipschitzEstimator(model, shape)
    total = est.total()
    K = est.pair_lipschitz()
    off = ~torch.eye(K.shape[0], dtype=torch.bool)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        J = _jacobian(model, torch.randn(shape, generator=gen, dtype=torch.float64))
        assert float(torch.linalg.matrix_norm(J, ord=2)) <= total
        # pairwise constants against the rows of the Jacobian: ||grad (f_j - f_i)|| <= K_ji
        D = torch.cdist(J[None], J[None])[0]
        assert torch.all(D[off] <= K[off])
    observed = _ascent(model, shape)
    assert observed <= total, f"{name}: difference quotient {observed} > bound {total}"
    # folding never loosens the bound
    assert total <= GraphLipschitzEstimator(model, shape, fold=False).total() * (1 + EPS64)


@pytest.mark.parametrize("index", [0, 1, 3], ids=["preact", "resnet", "wide_resnet"])
def test_certified_sets_survive_attacks(index):
    # float64: these random-BatchNorm nets have margins (~0.3) below the float32 rounding allowance of
    # relaxplug.lipschitz.rounding (~0.45 for the wide ResNet), which would certify nothing in float32
    _, model, shape = _nets()[index]
    x = torch.randn(64, *shape, dtype=torch.float64)
    radius = rp.certify(model, x, eps=0.0, certifier="gloro", guarantee="rtk:3").radius
    eps = float(radius.median())
    assert eps > 0
    cert = rp.certify(model, x, eps=eps, certifier="gloro", guarantee="rtk:3")
    assert 0 < int(cert.certified.sum()) < len(x)
    idx = cert.certified.nonzero().flatten()
    worst, x_adv = pgd_set_attack(model, x[idx], cert.classes[idx], eps, norm=2, steps=30, restarts=2)
    assert ((x_adv - x[idx]).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()
    assert (worst > 0).all()


def test_no_linear_head_uses_sqrt2_times_total():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = _randomize_bn(model).double().eval()
    est = GraphLipschitzEstimator(model, (2, 6, 6))
    assert not est.head_found
    K = est.pair_lipschitz()
    assert torch.all(K.diagonal() == 0)
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.allclose(K[off], torch.full((20,), math.sqrt(2) * est.total(), dtype=torch.float64), rtol=EPS64)
    J = _jacobian(model, torch.randn(2, 6, 6, dtype=torch.float64))
    assert torch.all(torch.cdist(J[None], J[None])[0] <= K * (1 + EPS64))


def test_functional_linear_head_is_split():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 6)
            self.w = nn.Parameter(torch.randn(3, 6))

        def forward(self, x):
            return F.linear(torch.tanh(self.body(x)), self.w)

    model = Net().double().eval()
    est = GraphLipschitzEstimator(model, (4,))
    assert est.head_found
    body = spectral.dense_spectral_norm(model.body.weight)
    assert est.sound() == pytest.approx(body, rel=EPS64)
    D = torch.cdist(model.w.detach()[None], model.w.detach()[None])[0]
    assert torch.allclose(est.pair_lipschitz(), D * body, rtol=EPS64)


# ----------------------------------------------------------------------------- integration


def _supported_sequential() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), MinMax(), InvertibleDownsample(2),
        nn.Conv2d(32, 8, 3, stride=2, padding=1), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), MinMax())),
        nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 6),
    )


def test_graph_path_matches_layer_stack_path():
    model = _supported_sequential().eval()
    fast = LipschitzEstimator(model, (1, 8, 8))
    graph = GraphLipschitzEstimator(model, (1, 8, 8))
    assert graph.sound() == pytest.approx(fast.sound(), rel=EPS64)
    assert torch.allclose(graph.pair_lipschitz(), fast.pair_lipschitz(), rtol=EPS64, atol=0)
    assert graph.head is model[-1]
    # the certifier keeps the fast path for supported stacks
    assert type(estimator_for(model, (1, 8, 8))) is LipschitzEstimator


def test_certify_uses_the_graph_path_for_zoo_models():
    _, model, shape = _nets()[0]
    model = model.float()
    assert isinstance(estimator_for(model, shape), GraphLipschitzEstimator)
    x = torch.randn(5, *shape)
    cert = rp.certify(model, x, eps=1e-3, certifier="gloro", guarantee="rtk:3")
    assert cert.certified.shape == (5,) and torch.isfinite(cert.radius).all()
    # power mode: an estimate, never above the sound constants
    sound = GloRoCertifier().pair_lipschitz(model, shape)
    power = GloRoCertifier(lipschitz="power").pair_lipschitz(model, shape)
    assert torch.all(power <= sound)
    # the same engine gives the training estimate (differentiable in the weights)
    estimate = estimator_for(model, shape).power(2)
    assert estimate.requires_grad and 0 < float(estimate) < float("inf")


def test_torchvision_resnet18_certifies():  # ~11 s on one core
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10).eval()
    cert = rp.certify(model, torch.rand(2, 3, 32, 32), eps=1e-9, certifier="gloro", guarantee="rtk:3")
    assert torch.isfinite(cert.radius).all() and (cert.radius >= 0).all()


def test_sequential_subclass_with_own_forward_is_not_taken_for_a_stack():
    class Scaled(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 10.0

    torch.manual_seed(7)
    model = Scaled(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4)).double().eval()
    est = estimator_for(model, (3,))
    assert isinstance(est, GraphLipschitzEstimator)
    K = est.pair_lipschitz()
    J = _jacobian(model, torch.ones(3, dtype=torch.float64) * 5)
    assert torch.all(torch.cdist(J[None], J[None])[0] <= K * (1 + EPS64))


def test_train_mode_model_is_certified_in_eval_mode_and_restored():
    _, model, shape = _nets()[1]
    model = model.float()
    x = torch.randn(6, *shape)
    expected = rp.certify(model.eval(), x, eps=1e-3, certifier="gloro", guarantee="rtk:2")
    stats = [b.clone() for b in model.buffers()]
    model.train()
    cert = rp.certify(model, x, eps=1e-3, certifier="gloro", guarantee="rtk:2")
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(cert.margin, expected.margin) and torch.equal(cert.certified, expected.certified)
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))  # no BatchNorm update
    # a train-mode model gets the bound of its eval-mode function
    assert estimator_for(model, shape).sound() == estimator_for(model.eval(), shape).sound()


def test_sound_bound_follows_batchnorm_statistics():
    _, model, shape = _nets()[2]
    est = GraphLipschitzEstimator(model, shape)
    first = est.sound()
    assert est.sound() == first
    with torch.no_grad():
        model[1].running_var.div_(16.0)
    assert est.sound() > first


# ----------------------------------------------------------------------------- errors


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


@pytest.mark.parametrize("model, shape, match", [
    (nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)), (3,), "LayerNorm"),
    (nn.Sequential(nn.Linear(3, 4), nn.Hardshrink(), nn.Linear(4, 2)), (3,), "Hardshrink"),
    (_Lambda(lambda x: x * x), (3,), "product of two input-dependent"),
    (_Lambda(lambda x: torch.matmul(x, x.transpose(0, 1))), (3,), "batch|matmul"),
    (_Lambda(lambda x: x - x.mean(0)), (3,), "batch"),
    (_Lambda(lambda x: x.transpose(0, 1).relu().transpose(0, 1)), (2,), "batch"),  # 2 features, batch of 2
    (_Lambda(lambda x: F.dropout(x, 0.5)), (3,), "random|reproduce"),
    (_Lambda(lambda x: x / x.norm(dim=1, keepdim=True)), (3,), "norm"),
    (nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False), nn.Linear(3, 2)), (3,), "mixes examples"),
    (_DataDependent(), (3,), "torch.fx could not trace"),
])
def test_unsupported_ops_are_named(model, shape, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        GraphLipschitzEstimator(model.eval(), shape).sound()


def test_hidden_inplace_mutation_is_rejected():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc(x)
            flat = h.view(-1)  # an alias of h
            flat.mul_(100.0)  # changes h, but the graph still reads h as fc(x)
            return h

    with pytest.raises(UnsupportedLayerError, match="in-place"):
        GraphLipschitzEstimator(Net().eval(), (3,))
    # in-place ops on values nobody reads later are fine (torchvision's ReLU(inplace=True))
    _, model, shape = _nets()[1]
    assert GraphLipschitzEstimator(model, shape).total() > 0


def test_certify_names_unsupported_op():
    with pytest.raises(UnsupportedLayerError, match="LayerNorm"):
        rp.certify(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)), torch.randn(2, 3), eps=0.1)


@pytest.mark.parametrize("stack", [True, False], ids=["layer_stack", "graph"])
def test_estimator_cache_does_not_keep_models_alive(stack):
    import gc
    import weakref

    middle = [nn.ReLU()] if stack else [nn.BatchNorm1d(8), nn.ReLU()]
    model = nn.Sequential(nn.Linear(3, 8), *middle, nn.Linear(8, 4)).eval()
    rp.certify(model, torch.randn(2, 3), eps=0.1)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_sound_analysis_reports_progress_per_weighted_layer(caplog):
    """The one-off sound analysis logs its set-up and one line per weighted layer (INFO when a layer
    takes a second or more, DEBUG otherwise), so a large model is never minutes of silence."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    with caplog.at_level(logging.DEBUG, logger="relaxplug.lipschitz.graph"):
        LipschitzEstimator(model, (2, 5, 5)).sound()
    messages = [r.getMessage() for r in caplog.records if r.name == "relaxplug.lipschitz.graph"]
    assert any("2 weighted layers to bound" in m for m in messages)
    assert sum("(Conv2d)" in m or "(Linear)" in m for m in messages) == 2
    assert any("s in all" in m for m in messages)

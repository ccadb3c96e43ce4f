"""Adversarial soundness suite for GloRo (issue 11, classes 1-4, 6, 7).

Every setup is tried as an adversarial user would: either the certifier refuses it with an
error naming the cause, or every certificate survives an attack written here (PGD on the
certified class's margin, plus random points in the ball), each violation confirmed by a
forward pass on a point inside the ball. Where an exact answer exists (a stale cache must give
the same bound as a fresh analysis; a bound must be above the exact Jacobian norm), it is asserted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

import relaxplug as rp
from relaxplug.certifiers import gloro as gloro_module
from relaxplug.certifiers.gloro import GloRoCertifier
from relaxplug.lipschitz import LipschitzEstimator, UnsupportedLayerError, estimator_for
from relaxplug.models.layers import MinMax, Normalize

from ..global_state import CASES as GLOBAL_CASES


# ----------------------------------------------------------------------------- the attack


def _break_certificates(model: nn.Module, x: torch.Tensor, eps: float, steps: int = 60, samples: int = 64) -> int:
    """Number of top-1 certificates at ``eps`` broken by a point inside the L2 ball (forward-checked).

    PGD maximises ``max_{i != c} f_i - f_c`` for the certified class ``c``; random points near the
    sphere catch rounding-driven flips that gradients cannot see.
    """
    cert = rp.certify(model, x, eps=eps, certifier="gloro", guarantee="standard", radius=False)
    idx = cert.certified.nonzero().flatten()
    if len(idx) == 0:
        return 0
    xs, cls = x[idx], cert.pred[idx]

    def violation(points: torch.Tensor) -> torch.Tensor:
        logits = model(points)
        other = logits.masked_fill(F.one_hot(cls, logits.shape[1]).bool(), float("-inf")).amax(1)
        return other - logits.gather(1, cls[:, None])[:, 0]

    def project(delta: torch.Tensor) -> torch.Tensor:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-30)
        factor = torch.clamp(eps * (1 - 1e-6) / norms, max=1.0)
        return delta * factor.view(-1, *[1] * (delta.dim() - 1))

    broken = torch.zeros(len(idx), dtype=torch.bool)
    delta = project(torch.randn_like(xs) * eps)
    for _ in range(steps):
        delta.requires_grad_(True)
        value = violation(xs + delta)
        (grad,) = torch.autograd.grad(value.sum(), delta)
        with torch.no_grad():
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (grad.dim() - 1))
            delta = project(delta + 0.25 * eps * step)
            broken |= violation(xs + delta) >= 0
    with torch.no_grad():
        for _ in range(samples):
            noise = torch.randn_like(xs)
            noise = noise / noise.flatten(1).norm(dim=1).view(-1, *[1] * (xs.dim() - 1)) * eps * (1 - 1e-6)
            broken |= violation(xs + noise * torch.rand(len(xs)).view(-1, *[1] * (xs.dim() - 1))) >= 0
    return int(broken.sum())


def _radius_eps(model: nn.Module, x: torch.Tensor) -> float:
    """A radius at which about half the points are certified (so the attack has work to do)."""
    radius = rp.certify(model, x, eps=0.0, certifier="gloro", guarantee="standard").radius
    return float(radius.median())


def _fresh_pair(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    return LipschitzEstimator(model, shape).pair_lipschitz()


# ----------------------------------------------------------------------------- class 1: stale state


class _AttributeScaled(nn.Module):
    """Uses a Python attribute and an unregistered tensor in forward."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.factor = 1.0
        self.gain = torch.ones(6)  # not a buffer
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)) * self.factor * self.gain)


def _write_data(model):
    model[0].weight.data *= 30.0  # old-style EMA / clipping: does not bump _version


def _replace_head(model):
    model[2] = nn.Linear(8, 3)
    with torch.no_grad():
        model[2].weight.mul_(40.0)


def _copy_into(model):
    with torch.no_grad():
        model[0].weight.copy_(model[0].weight * 25.0)


def _set_attribute(model):
    model.factor = 30.0


def _unregistered_tensor(model):
    model.gain.mul_(30.0)


def _swap_weight_object(model):
    model[0].weight = nn.Parameter(model[0].weight.detach() * 20.0)


STATE_CHANGES = [
    ("data_write", lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), _write_data),
    ("replace_layer", lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), _replace_head),
    ("inplace_copy", lambda: nn.Sequential(nn.Linear(4, 8), MinMax(), nn.Linear(8, 3)), _copy_into),
    ("python_attribute", _AttributeScaled, _set_attribute),
    ("unregistered_tensor", _AttributeScaled, _unregistered_tensor),
    ("new_parameter_object", lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), _swap_weight_object),
]


@pytest.mark.parametrize("name, build, change", STATE_CHANGES, ids=[row[0] for row in STATE_CHANGES])
def test_every_change_to_the_computation_invalidates_the_cached_bound(name, build, change):
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(64, 4)
    eps = _radius_eps(model, x)  # fills every cache (trace, bound)
    change(model)
    model.eval()
    estimator = estimator_for(model, (4,))
    assert torch.equal(estimator.pair_lipschitz(), _fresh_pair(model, (4,)))
    eps = _radius_eps(model, x)
    assert _break_certificates(model, x, eps) == 0


def test_batchnorm_statistics_written_through_data_invalidate_the_bound():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    before = estimator_for(model, (4,)).sound()
    model[1].running_var.data /= 400.0
    after = estimator_for(model, (4,)).sound()
    assert after == LipschitzEstimator(model, (4,)).sound() and after > 10 * before


# ----------------------------------------------------------------------------- class 2: what runs


class LoudLinear(nn.Linear):
    def forward(self, x):
        return 10 * F.linear(x, self.weight, self.bias)


class LoudConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 5.0


class SteepReLU(nn.ReLU):
    def forward(self, x):
        return 8 * F.relu(x)


SUBCLASSES = [
    ("linear_subclass", lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), LoudLinear(8, 3)), (4,)),
    ("conv_subclass", lambda: nn.Sequential(LoudConv(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)), (1, 4, 4)),
    ("activation_subclass", lambda: nn.Sequential(nn.Linear(4, 8), SteepReLU(), nn.Linear(8, 3)), (4,)),
]


@pytest.mark.parametrize("name, build, shape", SUBCLASSES, ids=[row[0] for row in SUBCLASSES])
def test_subclasses_are_bounded_as_they_run(name, build, shape):
    torch.manual_seed(1)
    model = build().eval()
    x = torch.randn(64, *shape)
    # the Jacobian norm of the subclass's own forward is below the bound
    jac = torch.autograd.functional.jacobian(lambda t: model(t[None])[0], x[0])
    assert float(torch.linalg.svdvals(jac.reshape(3, -1))[0]) <= estimator_for(model, shape).total()
    assert _break_certificates(model, x, _radius_eps(model, x)) == 0


def _scale_output(module, inputs, output):
    return output * 10


def _scale_input(module, inputs):
    return (inputs[0] * 10,)


@pytest.mark.parametrize("register", [
    lambda m: m[2].register_forward_hook(_scale_output),
    lambda m: m[0].register_forward_pre_hook(_scale_input),
    lambda m: m.register_forward_hook(_scale_output),
    lambda m: m[0].register_forward_hook(lambda mod, args, kwargs, out: out * 3, with_kwargs=True),
], ids=["forward_hook", "pre_hook", "root_hook", "kwargs_hook"])
def test_hooks_are_refused_even_after_caching(register):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    rp.certify(model, torch.randn(4, 4), eps=0.01, certifier="gloro")  # cached before the hook
    handle = register(model)
    with pytest.raises(UnsupportedLayerError, match="hooks"):
        rp.certify(model, torch.randn(4, 4), eps=0.01, certifier="gloro")
    handle.remove()
    rp.certify(model, torch.randn(4, 4), eps=0.01, certifier="gloro")


def test_global_hooks_and_instance_forward_are_refused():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    handle = torch_module.register_module_forward_hook(_scale_output)
    try:
        with pytest.raises(UnsupportedLayerError, match="global forward hooks"):
            rp.certify(model, torch.randn(4, 4), eps=0.01, certifier="gloro")
    finally:
        handle.remove()
    model[2].forward = lambda x: 10 * F.linear(x, model[2].weight, model[2].bias)
    with pytest.raises(UnsupportedLayerError, match="instance attribute 'forward'"):
        rp.certify(model, torch.randn(4, 4), eps=0.01, certifier="gloro")


def test_class_level_forward_patch_invalidates_the_cache(monkeypatch):
    class Local(nn.Module):
        def forward(self, x):
            return x

    model = nn.Sequential(nn.Linear(4, 8), Local(), nn.Linear(8, 3)).eval()
    before = estimator_for(model, (4,)).sound()
    monkeypatch.setattr(Local, "forward", lambda self, x: 50 * x)
    assert estimator_for(model, (4,)).sound() == pytest.approx(50 * before, rel=1e-9)


# ----------------------------------------------------------------------------- class 3: allow-list


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        return self.b(self.fn(self.a(x)))


REFUSED = [
    (lambda h: h.to(torch.uint8).float(), "cast from torch.float32 to torch.uint8"),
    (lambda h: h.to(torch.bfloat16).float(), "cast from torch.float32 to torch.bfloat16"),
    (lambda h: h.half().float(), "half"),
    (lambda h: h.round(), "round"),
    (lambda h: torch.sign(h), "sign"),
    (lambda h: F.softplus(h, threshold=0.0), "discontinuous"),
    (lambda h: F.softplus(h, beta=2.0, threshold=1.0), "discontinuous"),
    (lambda h: h.flip(0), "mixes examples|batch"),
    (lambda h: h.roll(1, 0), "mixes examples|batch"),
    (lambda h: h - h.mean(0), "batch"),
    (lambda h: h + 1e-9 * h.flip(0), "mixes examples|batch"),
    (lambda h: h * h.std(0, keepdim=True).detach(), "batch|std"),
]


@pytest.mark.parametrize("fn, match", REFUSED, ids=[m.split("|")[0] + str(i) for i, (_, m) in enumerate(REFUSED)])
def test_ops_outside_the_allow_list_are_refused_by_name(fn, match):
    model = _Fn(fn).eval()
    with pytest.raises(UnsupportedLayerError, match=match):
        rp.certify(model, torch.randn(4, 4), eps=0.01, certifier="gloro")


def test_softplus_module_with_low_threshold_is_refused_default_accepted():
    with pytest.raises(UnsupportedLayerError, match="Softplus.*discontinuous"):
        estimator_for(nn.Sequential(nn.Linear(4, 8), nn.Softplus(threshold=0.5), nn.Linear(8, 3)).eval(), (4,)).sound()
    model = nn.Sequential(nn.Linear(4, 8), nn.Softplus(), nn.Linear(8, 3)).eval()
    x = torch.randn(64, 4)
    assert _break_certificates(model, x, _radius_eps(model, x)) == 0


def test_batchnorm_in_training_mode_uses_running_statistics_or_is_refused():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, track_running_stats=False), nn.Linear(8, 3))
    with pytest.raises(UnsupportedLayerError, match="mixes examples|batch statistics"):
        rp.certify(model, torch.randn(4, 4), eps=0.01, certifier="gloro")


class _PoolMixedAxis(nn.Module):
    """A per-feature scaling (BatchNorm1d on (B, L)) followed by pooling *along* the scaled axis."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(F.avg_pool1d(self.bn(x)[:, None, :], 2)[:, 0, :])


class _PoolThenChannelMix(nn.Module):
    """A per-channel scaling, pooling, then a transpose that moves channels onto the pooled axis."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = F.avg_pool2d(self.bn(x), 2)  # (B, 4, 2, 2)
        h = h.transpose(1, 2).reshape(x.shape[0], 2, 8)
        return self.head(F.avg_pool1d(h.transpose(1, 2), 2).transpose(1, 2).reshape(x.shape[0], -1)[:, :8])


@pytest.mark.parametrize("build, shape", [(_PoolMixedAxis, (8,)), (_PoolThenChannelMix, (4, 4, 4))],
                         ids=["bn_pool_same_axis", "bn_pool_transpose"])
def test_scalings_are_not_folded_through_ops_that_mix_the_scaled_axis(build, shape):
    torch.manual_seed(2)
    model = build().double().eval()
    with torch.no_grad():
        model.bn.running_var.copy_(torch.rand_like(model.bn.running_var) ** 4 * 0.01 + 1e-4)
    K = LipschitzEstimator(model, shape).pair_lipschitz()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(lambda t: model(t[None])[0], x).reshape(3, -1)
        assert torch.all(torch.cdist(J[None], J[None])[0] <= K)


# ----------------------------------------------------------------------------- class 4: floating point


def _cancelling_net(magnitude: float) -> nn.Sequential:
    """Two hidden units of size ``magnitude`` whose difference is the signal: every logit is
    ``c_j (h_0 - h_1) + ...``, small, while its float32 rounding follows ``magnitude``."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].bias[:2] = magnitude
        model[0].weight[1] = -model[0].weight[0]
        model[2].weight[:, 0] = torch.tensor([1.0, -0.5, 0.2])
        model[2].weight[:, 1] = -model[2].weight[:, 0]
    return model.eval()


def _normalize_net(std: float) -> nn.Sequential:
    torch.manual_seed(4)
    model = nn.Sequential(Normalize([100.0] * 4, [std] * 4), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[1].weight.mul_(std)
        model[1].bias.fill_(50.0)
        model[3].weight[:, :] = model[3].weight[:1, :] + 1e-3 * model[3].weight
    return model.eval()


def _conv_bias_net() -> nn.Sequential:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[0].bias.fill_(3e3)
        model[3].weight[:, :] = model[3].weight[:1, :] + 1e-3 * model[3].weight
    return model.eval()


FLOAT_NETS = [
    ("hidden_1e4", lambda: _cancelling_net(1e4), (4,)),
    ("hidden_1e6", lambda: _cancelling_net(1e6), (4,)),
    ("normalize_small_std", lambda: _normalize_net(1e-3), (4,)),
    ("conv_bias_3e3", _conv_bias_net, (1, 4, 4)),
]


@pytest.mark.parametrize("name, build, shape", FLOAT_NETS, ids=[row[0] for row in FLOAT_NETS])
def test_rounding_model_covers_intermediate_magnitudes(name, build, shape):
    model = build()
    x = torch.randn(256, *shape) + (100.0 if name == "normalize_small_std" else 0.0)
    error = estimator_for(model, shape).forward_error()
    with torch.no_grad():
        observed = (model(x).double() - model.double()(x.double())).norm(dim=1)
    model.float()
    assert torch.all(observed <= error(x))  # the model's float32 error, measured against float64
    _, e0, _ = estimator_for(model, shape).measured_forward(x)  # magnitudes measured at x
    assert torch.all(observed <= e0)
    assert _break_certificates(model, x[:64], 1e-3, steps=20, samples=256) == 0


def _no_float_allowance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn the floating-point allowance off: no forward-error term, no logit-scaled term."""
    monkeypatch.setattr(GloRoCertifier, "forward_error",
                        lambda self, model, x, eps: torch.zeros(len(x), 1, 1, dtype=torch.float64))
    monkeypatch.setattr(gloro_module, "rounding_allowance", lambda logits, extra=0.0: torch.zeros(()))


def _computed_boundary_points(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Points just on one side of the *computed* (float32) decision boundary: bisection between
    pairs of inputs with different predictions, 60 halvings, so that the point across lies within
    ``~1e-15 ||x_a - x_b||``. There the computed margin is below the size of one rounding step."""
    with torch.no_grad():
        pred = model(x).argmax(1)
        a, b = x[: len(x) // 2], x[len(x) // 2:]
        keep = pred[: len(x) // 2] != pred[len(x) // 2:]
        lo, hi, target = a[keep], b[keep], pred[: len(x) // 2][keep]
        for _ in range(60):
            mid = (lo + hi) / 2
            same = (model(mid).argmax(1) == target).view(-1, *[1] * (x.dim() - 1))
            lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    return lo


@pytest.mark.parametrize("name, build, shape", FLOAT_NETS, ids=[row[0] for row in FLOAT_NETS])
def test_the_float_attack_breaks_certificates_without_the_allowance(name, build, shape, monkeypatch):
    """Negative control of the test above: with the allowance off, the same attack breaks
    certificates (so a model that under-covers rounding fails it); with it on, none.

    The points sit on the computed decision boundary (:func:`_computed_boundary_points`), where
    the computed margin ``g`` is below one rounding step of the large intermediates; the radius
    is ``median(g) / (4 K)``, so without the allowance most of them are certified while a point
    across the boundary, at distance ``~1e-15``, lies in the ball."""
    model = build()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2048, *shape, generator=gen) + (100.0 if name == "normalize_small_std" else 0.0)
    with torch.no_grad():  # centre the logits so that the predictions vary over x (magnitudes unchanged)
        model[-1].bias.sub_(model(x).mean(0))
    points = _computed_boundary_points(model, x)[:128]
    assert len(points) >= 32
    with torch.no_grad():
        top = model(points).topk(2, dim=1).values
    gaps = top[:, 0] - top[:, 1]
    k_max = float(estimator_for(model, shape).pair_lipschitz().max())
    eps = float(gaps.median()) / (4 * k_max)
    assert eps > 0
    with monkeypatch.context() as patch:
        _no_float_allowance(patch)
        certified_without = int(rp.certify(model, points, eps=eps, certifier="gloro", radius=False).certified.sum())
        broken_without = _break_certificates(model, points, eps, steps=5, samples=64)
    assert certified_without >= len(points) // 2
    assert broken_without >= certified_without // 4  # the attack finds rounding-driven violations
    assert _break_certificates(model, points, eps, steps=5, samples=64) == 0


# ----------------------------------------------------------------------------- class 6: state loaded later


@pytest.mark.parametrize("std", [-0.5, 0.0, float("nan"), float("inf")])
def test_normalize_std_is_checked_where_it_is_used(std):
    model = nn.Sequential(Normalize([0.0, 0.0], [0.5, 0.5]), nn.Linear(2, 3)).eval()
    rp.certify(model, torch.randn(3, 2), eps=0.1, certifier="gloro")
    state = model.state_dict()
    state["0.std"] = torch.tensor([0.5, std])
    model.load_state_dict(state)
    with pytest.raises(ValueError, match="std must be positive"):
        model(torch.randn(3, 2))
    with pytest.raises(ValueError, match="std must be positive"):
        rp.certify(model, torch.randn(3, 2), eps=0.1, certifier="gloro")


# ----------------------------------------------------------------------------- class 7: padded convolutions


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
def test_padded_convolutions_in_a_layer_stack_are_bounded(mode):
    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode=mode), MinMax(), nn.Flatten(), nn.Linear(64, 3)
    ).eval()
    x = torch.rand(64, 1, 4, 4)
    total = estimator_for(model, (1, 4, 4)).total()
    jac = torch.autograd.functional.jacobian(lambda t: model.double()(t[None])[0], x[0].double())
    model.float()
    assert float(torch.linalg.svdvals(jac.reshape(3, -1))[0]) <= total
    assert _break_certificates(model, x, _radius_eps(model, x)) == 0


TRACEABLE_GLOBAL_CASES = [row for row in GLOBAL_CASES if row[0] != "global_layer"]


def test_a_layer_that_is_not_a_submodule_is_refused_by_name():
    build = dict((name, build) for name, build, _ in GLOBAL_CASES)["global_layer"]
    with pytest.raises(UnsupportedLayerError, match="GlobalLayer.*not installed as a submodule.*registered submodule"):
        rp.certify(build(), torch.randn(4, 6), 0.1)


@pytest.mark.parametrize("name, build, change", TRACEABLE_GLOBAL_CASES, ids=[row[0] for row in TRACEABLE_GLOBAL_CASES])
def test_a_change_to_global_state_read_by_forward_invalidates_the_cached_bound(name, build, change):
    model = build()
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    _radius_eps(model, x)  # fills every cache (trace, bound)
    before = estimator_for(model, (6,)).pair_lipschitz()
    change()
    after = estimator_for(model, (6,)).pair_lipschitz()
    assert torch.equal(after, _fresh_pair(model, (6,)))
    assert after.max() > 10 * before.max()  # the change made the net steeper: a stale bound would keep it
    assert _break_certificates(model, x, _radius_eps(model, x)) == 0

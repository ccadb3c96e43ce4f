"""Adversarial soundness of bound propagation (issue 11, the auto_LiRPA classes), several instances
per defect class. Every certificate is attacked by a PGD written here (or an exact worst case) and
every violation is confirmed by a forward pass on a point inside the ball; every refusal must be
a clear error naming its cause."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import relaxplug as rp

pytest.importorskip("relaxplug.certifiers.lirpa", reason="auto_LiRPA is not installed", exc_type=ImportError)
from relaxplug import lirpa as glue  # noqa: E402
from relaxplug.certifiers.base import CERTIFIERS  # noqa: E402
from relaxplug.models.layers import Normalize  # noqa: E402

from ..global_state import CASES as GLOBAL_CASES  # noqa: E402

pytestmark = pytest.mark.lirpa

METHODS = ("ibp", "crown-ibp", "crown")


# ----------------------------------------------------------------------------- the attack


def _project(delta: Tensor, eps: float, norm: float) -> Tensor:
    if norm == math.inf:
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    scale = (eps / flat.norm(dim=1).clamp_min(1e-30)).clamp(max=1.0)
    return (flat * scale[:, None]).view_as(delta)


def _margin(model: nn.Module, x: Tensor, label: Tensor) -> Tensor:
    """``f_label - max_{i != label} f_i``, one forward pass in the model's dtype."""
    logits = model(x)
    others = logits.masked_fill(F.one_hot(label, logits.shape[1]).bool(), -math.inf)
    return logits.gather(1, label[:, None])[:, 0] - others.amax(dim=1)


def worst_margin(model: nn.Module, x: Tensor, label: Tensor, eps: float, norm: float, steps: int = 60,
                 restarts: int = 3, seed: int = 0) -> Tensor:
    """Smallest top-1 margin found in the ball by PGD (clean start plus random starts), each value
    from a forward pass on a point whose distance to ``x`` is checked to be ``<= eps``."""
    generator = torch.Generator().manual_seed(seed)
    best = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    for start in range(restarts + 1):
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
        delta = torch.zeros_like(x) if start == 0 else _project(noise * eps, eps, norm)
        for step in range(steps + 1):
            delta = delta.detach().requires_grad_(True)
            margin = _margin(model, x + delta, label)
            point = (x + delta).detach()
            distance = (point - x).flatten(1).abs().amax(1) if norm == math.inf else (point - x).flatten(1).norm(dim=1)
            inside = distance <= eps * (1 + 1e-6)
            best = torch.minimum(best, torch.where(inside, margin.detach().double(), torch.full_like(best, math.inf)))
            if step == steps:
                break
            (grad,) = torch.autograd.grad(margin.sum(), delta)
            size = 2.5 * eps / steps
            if norm == math.inf:
                move = size * grad.sign()
            else:
                move = size * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (x.ndim - 1)))
            delta = _project(delta - move, eps, norm)
    return best


def assert_never_broken(model: nn.Module, x: Tensor, eps: float, norm: float, method: str, **options) -> int:
    """Certify and attack every certified point; returns how many were certified."""
    certifier = CERTIFIERS.create(method, **options)
    cert = rp.certify(model, x, eps, norm, certifier, "standard", radius=False)
    idx = cert.certified.nonzero().flatten()
    if len(idx):
        worst = worst_margin(model.eval(), x[idx], cert.pred[idx], eps, norm)
        assert (worst > 0).all(), f"{method} certificate broken: margin {worst.min().item()} inside the ball"
    return len(idx)


# ----------------------------------------------------------------------------- class 1: stale state


class Scaled(nn.Module):
    """``scale * x + shift`` with a Python float and an unregistered tensor attribute."""

    def __init__(self, width: int):
        super().__init__()
        self.scale = 1.0
        self.shift = torch.zeros(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x + self.shift


def _stale_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), Scaled(32), nn.Linear(32, 5)).eval()


def _write_data(model):
    model[3].weight.data.mul_(30.0)  # .data does not bump _version


def _replace_head(model):
    head = nn.Linear(32, 5)
    with torch.no_grad():
        head.weight.copy_(model[3].weight * 30)
        head.bias.copy_(model[3].bias)
    model[3] = head


def _replace_activation(model):
    model[1] = nn.Identity()  # no parameter changes: the state_dict is the same


def _python_attribute(model):
    model[2].scale = 25.0


def _unregistered_tensor(model):
    model[2].shift.add_(torch.linspace(-20, 20, 32))


def _hook(model):
    model[3].register_forward_hook(lambda module, inputs, output: output * 30)


@pytest.mark.parametrize("change", [_write_data, _replace_head, _replace_activation, _python_attribute,
                                    _unregistered_tensor, _hook])
@pytest.mark.parametrize("method", ["crown", "ibp"])
def test_a_changed_model_is_never_bounded_with_its_old_conversion(change, method):
    model = _stale_net()
    x = torch.randn(24, 6)
    eps = 0.02
    rp.certify(model, x, eps, "inf", method, "standard", radius=False)  # fills the cache
    change(model)
    after = rp.certify(model, x, eps, "inf", method, "standard", radius=False)
    glue.clear_cache()
    fresh = rp.certify(copy.deepcopy(model), x, eps, "inf", method, "standard", radius=False)
    assert torch.equal(after.certified, fresh.certified)
    assert torch.allclose(after.margin, fresh.margin, rtol=0, atol=1e-5)
    assert_never_broken(model, x, eps, math.inf, method)


# a float32 layer outside the model (global_layer) cannot be in the float64 copy bounds are computed in
GLOBAL_RUNS = [(method, *row) for row in GLOBAL_CASES for method in ("crown", "ibp") if row[0] != "global_layer"]


@pytest.mark.parametrize("method", ["crown", "ibp"])
def test_a_layer_outside_the_model_is_refused_with_the_cause(method):
    build = {name: build for name, build, _ in GLOBAL_CASES}["global_layer"]
    with pytest.raises(glue.LirpaError, match="cannot convert the model"):  # 0.3: a dtype clash; 0.7.1: missing constants
        rp.certify(build(), torch.randn(4, 6), 0.01, "inf", method, radius=False)


@pytest.mark.parametrize("method, name, build, change", GLOBAL_RUNS, ids=[f"{row[0]}-{row[1]}" for row in GLOBAL_RUNS])
def test_a_change_to_global_state_read_by_forward_is_never_bounded_with_the_old_conversion(method, name, build, change):
    model = build()
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    eps = 0.01
    rp.certify(model, x, eps, "inf", method, "standard", radius=False)  # fills the cache
    change()
    after = rp.certify(model, x, eps, "inf", method, "standard", radius=False)
    glue.clear_cache()
    fresh = rp.certify(model, x, eps, "inf", method, "standard", radius=False)
    assert torch.equal(after.certified, fresh.certified)
    assert torch.allclose(after.margin, fresh.margin, rtol=0, atol=1e-5)
    assert_never_broken(model, x, eps, math.inf, method)


def test_the_fingerprint_sees_each_kind_of_change_and_nothing_else():
    for change in (_write_data, _replace_head, _replace_activation, _python_attribute, _unregistered_tensor, _hook):
        model = _stale_net()
        fingerprint = glue.Fingerprint(model)
        assert fingerprint.matches(model)
        change(model)
        assert not fingerprint.matches(model), change.__name__


# ----------------------------------------------------------------------------- class 4: floating point


def _cancelling_net(magnitude: float, seed: int) -> nn.Sequential:
    """Hidden activations of about ``magnitude`` that cancel in the head: logits of size 1."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        net[0].bias.fill_(magnitude)
        pair = torch.randn(3, 8)
        net[2].weight.copy_(torch.cat([pair, -pair], dim=1))  # h_k - h_{k+8}: the offsets cancel
        net[2].bias.zero_()
    return net.eval()


@pytest.mark.parametrize("magnitude", [1e3, 1e4, 1e5])
def test_the_error_model_covers_float32_rounding_of_large_intermediates(magnitude):
    """|f32(x') - f64(x')| <= e (the documented model's logit error bound) on points of the ball."""
    net = _cancelling_net(magnitude, seed=int(math.log10(magnitude)))
    x = torch.randn(64, 4)
    eps = 1e-3
    wide = glue.bounded_module(net, x).wide()  # the certifier's float64 form
    errors = glue.error_model(wide, x.double(), eps, forward_dtype=x.dtype)
    assert errors.factor == 1.0  # bounds in float64: only the float32 forward pass is allowed for
    wide = copy.deepcopy(net).double()
    worst = torch.zeros(())
    for trial in range(5):
        point = x + eps * (2 * torch.rand_like(x) - 1)
        with torch.no_grad():
            err = (net(point).double() - wide(point.double())).abs()
        assert (err <= errors.logit_error).all(), trial
        worst = torch.maximum(worst, err.max())
    assert worst > 0  # rounding happened, and was covered
    assert errors.logit_error.max() >= 1e-8 * magnitude  # the bound grows with the intermediates


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("magnitude", [1e4, 1e5])
def test_no_certificate_is_broken_by_rounding_of_large_intermediates(method, magnitude):
    """Points placed where the exact margin over the ball is below float32 rounding of the hidden
    layer: every certificate survives the attack and the exact L-inf worst case (a corner)."""
    net = _cancelling_net(magnitude, seed=5)
    torch.manual_seed(6)
    x = torch.randn(128, 4)
    eps = 1e-4
    cert = rp.certify(net, x, eps, "inf", method, "standard", radius=False)
    idx = cert.certified.nonzero().flatten()
    if len(idx) == 0:
        return
    # exact worst case of a linear region: the corner against each opponent's margin gradient
    xs, label = x[idx], cert.pred[idx]
    for opponent in range(3):
        keep = label != opponent
        if not keep.any():
            continue
        point = xs[keep].clone().requires_grad_(True)
        logits = net(point)
        gap = logits.gather(1, label[keep][:, None])[:, 0] - logits[:, opponent]
        (grad,) = torch.autograd.grad(gap.sum(), point)
        corner = (xs[keep] - eps * (1 - 1e-3) * grad.sign()).detach()  # (1 - 1e-3): inside after rounding
        assert ((corner - xs[keep]).abs().amax(1) <= eps).all()
        assert (_margin(net, corner, label[keep]) > 0).all()
    assert (worst_margin(net, xs, label, eps, math.inf) > 0).all()


def _boundary_pairs(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(lo, hi)``: points on both sides of the *computed* (float32) decision boundary, found by 60
    bisection halvings between inputs with different predictions (``lo`` keeps the first one's)."""
    with torch.no_grad():
        pred = model(x).argmax(1)
        half = len(x) // 2
        keep = pred[:half] != pred[half:]
        lo, hi, target = x[:half][keep], x[half:][keep], pred[:half][keep]
        for _ in range(60):
            mid = (lo + hi) / 2
            same = (model(mid).argmax(1) == target)[:, None]
            lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    return lo, hi


def _no_float_allowance(patch: pytest.MonkeyPatch) -> None:
    """Turn the floating-point allowance off: no forward-error term, no logit-scaled term."""
    from relaxplug.certifiers import lirpa as lirpa_certifiers
    from relaxplug.lirpa.tolerance import ErrorModel

    patch.setattr(ErrorModel, "margin_allowance", lambda self, order, k: torch.zeros(()))
    patch.setattr(lirpa_certifiers, "rounding_allowance", lambda logits, extra=0.0: torch.zeros(()))


@pytest.mark.parametrize("method", METHODS)
def test_the_float_attack_breaks_certificates_without_the_allowance(method, monkeypatch):
    """Negative control of the test above: with the allowance off, the attack breaks certificates
    (so an error model that under-covers rounding fails it); with it on, none. Points sit on the
    computed decision boundary (:func:`_boundary_pairs`), the radius is a quarter of the median
    computed margin over the largest L1 norm of a margin gradient, and the attack is the point
    across the boundary (at distance ``~1e-15``) plus PGD, each checked by a forward pass."""
    net = _cancelling_net(1e4, seed=5)
    x = torch.randn(1024, 4, generator=torch.Generator().manual_seed(8))
    lo, hi = _boundary_pairs(net, x)
    lo, hi = lo[:96], hi[:96]
    point = lo.clone().requires_grad_(True)
    logits = net(point)
    top = logits.topk(2, dim=1)
    (grad,) = torch.autograd.grad((top.values[:, 0] - top.values[:, 1]).sum(), point)
    eps = float((top.values[:, 0] - top.values[:, 1]).detach().median()) / (4 * float(grad.abs().sum(1).max()) + 1e-30)
    assert eps > float((hi - lo).abs().amax()) > 0  # the point across lies in every ball

    def broken(cert) -> int:
        idx = cert.certified.nonzero().flatten()
        if len(idx) == 0:
            return 0
        label = cert.pred[idx]
        with torch.no_grad():
            across = _margin(net, hi[idx], label) <= 0
        return int((across | (worst_margin(net, lo[idx], label, eps, math.inf, steps=20, restarts=1) <= 0)).sum())

    with monkeypatch.context() as patch:
        _no_float_allowance(patch)
        without = rp.certify(net, lo, eps, "inf", method, "standard", radius=False)
        broken_without = broken(without)
    assert int(without.certified.sum()) >= 8
    assert broken_without >= int(without.certified.sum()) // 4
    assert broken(rp.certify(net, lo, eps, "inf", method, "standard", radius=False)) == 0


# ----------------------------------------------------------------------------- class 5: control flow


class Branchy(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        torch.manual_seed(1)
        self.kind = kind
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "all":
            return self.a(x) if (x[:, 0] > 0).all() else self.b(x)
        if self.kind == "sum":
            return self.a(x) if x.sum() > 0 else self.b(x)
        if self.kind == "item":
            return self.a(x) * float(x.abs().max().item())
        return self.a(x)[:, : int(x.abs().sum() > 0) + 2]  # an index computed from the data


@pytest.mark.parametrize("kind", ["all", "sum", "item", "index"])
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_data_dependent_control_flow_is_refused(kind, method, norm):
    glue.clear_cache()
    model = Branchy(kind).eval()
    x = torch.randn(6, 4).abs()
    with pytest.raises(glue.LirpaError, match="Python value"):
        rp.certify(model, x, 0.1, norm, method, "standard", radius=False)


# ----------------------------------------------------------------------------- class 7: clear errors


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x), x


class BatchMixing(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.how = how

    def forward(self, x):
        if self.how == "mean":
            return self.fc(x - x.mean(0))
        if self.how == "flip":
            return self.fc(x.flip(0))
        return self.fc(x.roll(1, 0))


@pytest.mark.parametrize("how", ["mean", "flip", "roll"])
def test_batch_mixing_is_refused(how):
    with pytest.raises(glue.LirpaError, match="mixes the rows of a batch"):
        rp.certify(BatchMixing(how).eval(), torch.randn(5, 4), 0.1, "inf", "crown", "standard", radius=False)


def test_bad_inputs_and_models_get_errors_naming_the_cause():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    for method in METHODS:
        with pytest.raises(ValueError, match="empty batch"):
            rp.certify(model, torch.zeros(0, 4), 0.1, "inf", method, "standard", radius=False)
    with pytest.raises(ValueError, match="non-empty batch"):
        glue.bounded_module(model, torch.zeros(0, 4))
    with pytest.raises(TypeError, match="one logits tensor"):  # (rp.certify fails earlier, in certify.py)
        glue.bounded_module(TupleOut().eval(), torch.randn(3, 4))
    with pytest.raises(TypeError, match="float64 but the input is torch.float32|float32 but the input is torch.float64"):
        glue.bounded_module(nn.Sequential(nn.Linear(4, 3)).double(), torch.randn(3, 4))
    with pytest.raises(TypeError, match="float32 and float64"):
        glue.bounded_module(nn.Sequential(nn.Linear(4, 3)).half(), torch.randn(3, 4).half())


@pytest.mark.parametrize("layer", [nn.Softmax(dim=1), nn.LayerNorm(8), nn.Tanh()])
def test_crown_on_unsupported_ops_is_refused_or_sound(layer):
    """softmax, LayerNorm: a clear error naming the op (no IndexError from inside auto_LiRPA);
    where an op is supported, its certificates survive the attack."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 3)).eval()
    x = torch.randn(16, 4)
    try:
        assert_never_broken(model, x, 0.05, math.inf, "crown")
    except (glue.LirpaError, TypeError) as error:
        text = str(error)
        assert "Softmax" in text or "LayerNorm" in text or "error model for the op" in text or "cannot bound" in text


@pytest.mark.parametrize("method", METHODS)
def test_l2_with_average_pooling_first_is_sound(method):
    torch.manual_seed(4)
    model = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).eval()
    x = torch.randn(12, 1, 8, 8)
    assert_never_broken(model, x, 0.3, 2.0, method)


def test_a_shifted_affine_layer_before_a_padded_conv_is_not_folded_and_stays_sound():
    model = nn.Sequential(Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.rand(6, 3, 6, 6)
    assert glue.fold_leading_affine(glue.lower_for_lirpa(model, x[:1]), x[:1]) is None
    for method in METHODS:
        assert_never_broken(model, x, 0.1, 2.0, method)


@pytest.mark.parametrize("method", METHODS)
def test_dropout_models_in_eval_mode_are_bounded(method):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).eval()
    x = torch.randn(16, 4)
    assert_never_broken(model, x, 0.05, math.inf, method)


# ----------------------------------------------------------------------------- class 8: L2 tightness


def _affine_first(kind: str) -> nn.Sequential:
    torch.manual_seed(8)
    if kind == "normalize-conv":
        return nn.Sequential(Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)), nn.Conv2d(3, 4, 3), nn.ReLU(),
                             nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()
    if kind == "batchnorm-conv":
        bn = nn.BatchNorm2d(3)  # a pure scale (shift 0): foldable across the padding
        with torch.no_grad():
            bn.running_mean.zero_()
            bn.running_var.copy_(torch.tensor([0.5, 2.0, 0.25]))
            bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
            bn.bias.zero_()
        return nn.Sequential(bn, nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 3 * 3, 5)).eval()
    return nn.Sequential(Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)), nn.Flatten(), nn.Linear(3 * 6 * 6, 16),
                         nn.ReLU(), nn.Linear(16, 5)).eval()


@pytest.mark.parametrize("kind", ["normalize-conv", "batchnorm-conv", "normalize-dense"])
def test_a_leading_affine_layer_is_folded_for_l2(kind):
    """The folded model reads the L2 ball through a linear layer; relaxplug's L2 IBP margins equal
    auto_LiRPA's on that folded model (up to relaxplug's float allowance), are tighter than the
    identity-prefix box, and survive the attack."""
    from relaxplug.lirpa import api

    model = _affine_first(kind)
    x = torch.rand(6, 3, 6, 6)
    eps = 0.5
    folded = glue.fold_leading_affine(glue.lower_for_lirpa(model, x[:1]), x[:1])
    assert folded is not None
    bounded = api.convert(folded, x[:1])
    assert glue.l2_input_is_safe(bounded)
    cert = rp.certify(model, x, eps, 2, "ibp", "standard", radius=False)
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    c = F.one_hot(pred, 5).float()[:, None, :] - torch.eye(5)[None]  # (B, 5, 5), row i: e_pred - e_i
    keep = torch.ones(6, 5, dtype=torch.bool)
    keep[torch.arange(6), pred] = False
    c = c[keep].view(6, 4, 5)
    lower, _ = bounded.compute_bounds(x=(api.bounded_tensor(x, eps, 2.0),), C=c, method="IBP", bound_upper=False)
    reference = lower.min(dim=1).values
    assert (cert.margin <= reference + 1e-5).all()
    assert (cert.margin >= reference - 1e-2 * (1 + reference.abs())).all()
    boxed = glue.IdentityPrefix(x.shape[1:], glue.lower_for_lirpa(model, x[:1]), x).eval()
    box_lower, _ = api.convert(boxed, x[:1]).compute_bounds(x=(api.bounded_tensor(x, eps, 2.0),), C=c, method="IBP",
                                                            bound_upper=False)
    assert (reference > box_lower.min(dim=1).values + 1e-3).all()  # strictly tighter than the box
    for method in METHODS:
        assert_never_broken(model, x, eps / 4, 2.0, method)


# ----------------------------------------------------------------------------- class 2: computed weights


class _Rescale(nn.Module):
    """A user parametrization: ``w * s``."""

    def __init__(self):
        super().__init__()
        self.s = 1.0

    def forward(self, w: Tensor) -> Tensor:
        return w * self.s


def _parametrized(kind: str) -> nn.Sequential:
    from torch.nn.utils import parametrizations, parametrize

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    if kind == "user":
        parametrize.register_parametrization(model[0], "weight", _Rescale())
    elif kind == "weight_norm":
        parametrizations.weight_norm(model[0])
    elif kind == "spectral_norm":
        parametrizations.spectral_norm(model[2])
    else:
        parametrizations.orthogonal(model[0])
    return model.eval()


@pytest.mark.parametrize("kind", ["user", "weight_norm", "spectral_norm", "orthogonal"])
@pytest.mark.parametrize("method", ["ibp", "crown"])
@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_parametrized_weights_are_bounded_as_the_tensors_they_compute(kind, method, norm):
    model = _parametrized(kind)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    assert assert_never_broken(model, x, 0.05, norm, method) > 0
    fresh = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    fresh.load_state_dict({k: v for k, v in zip(fresh.state_dict(), [model[0].weight, model[0].bias, model[2].weight,
                                                                    model[2].bias])})
    ours = rp.certify(model, x, 0.05, norm, method, radius=False)
    plain = rp.certify(fresh, x, 0.05, norm, method, radius=False)
    assert torch.equal(ours.certified, plain.certified)  # bounded exactly like the plain layers
    assert type(model[0]).__name__.startswith("Parametrized") or kind == "spectral_norm"  # the model is untouched
    model(x)


class _ComputedWeight(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        torch.manual_seed(0)
        self.op = op
        self.w = nn.Parameter(torch.randn(16, 4) * 0.5)
        self.s = nn.Parameter(torch.ones(16, 1))
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.w * self.s if self.op == "mul" else self.w + self.s if self.op == "add" else self.w.exp()
        return self.head(torch.relu(F.linear(x, weight)))


@pytest.mark.parametrize("op", ["mul", "add", "exp"])
@pytest.mark.parametrize("method", METHODS)
def test_a_weight_computed_inside_forward_is_refused_by_name(op, method):
    x = torch.randn(8, 4)
    with pytest.raises(glue.LirpaError, match="computes a layer's weight inside forward"):
        rp.certify(_ComputedWeight(op).eval(), x, 0.05, "inf", method, radius=False)


def test_bounds_above_the_centre_margin_are_refused(monkeypatch):
    """The last line of defence: a bound that exceeds the margin at x itself is a wrong bound."""
    from relaxplug.certifiers import lirpa as lirpa_certifier

    model = _stale_net()
    x = torch.randn(8, 6)
    real = lirpa_certifier.LirpaCertifier._pairwise

    def inflated(self, *args, **kwargs):
        return real(self, *args, **kwargs) + 100.0

    monkeypatch.setattr(lirpa_certifier.IBPCertifier, "_pairwise", inflated)
    with pytest.raises(glue.LirpaError, match="returned a margin bound above the margin at the ball's centre"):
        rp.certify(model, x, 0.02, "inf", "ibp", radius=False)

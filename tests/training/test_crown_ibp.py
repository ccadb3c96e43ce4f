"""CROWN-IBP training: bounds on a form sharing the model's parameters, exact on a linear layer,
sound on nonlinear nets; the losses, schedules, configs and end-to-end runs (standard and IGRP)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relaxplug as rp
from relaxplug.adapters import IGRP, Standard
from relaxplug.attacks.pgd import pgd_set_attack
from relaxplug.models.checkpoint import load_checkpoint
from relaxplug.training.config import TrainConfig, load_config
from relaxplug.models.layers import MinMax
from relaxplug.models.architectures import build_model
from relaxplug.evaluation.sources import load_evaluation
from relaxplug.training.losses import guarantee_margin

pytest.importorskip("relaxplug.certifiers.lirpa", reason="auto_LiRPA is not installed", exc_type=ImportError)

from relaxplug.training.crown_ibp import (  # noqa: E402
    CrownIBPLoss,
    CrownIBPSchedule,
    LirpaBounds,
    igrp_robust_losses,
    margin_spec,
    robust_cross_entropy,
)
from relaxplug.lirpa import shared_lirpa_form  # noqa: E402
from relaxplug.training.trainer import train  # noqa: E402
from relaxplug.training.wrapper import GloRoNet  # noqa: E402

pytestmark = pytest.mark.lirpa

GROUPS = ((0, 6), (1, 7), (2, 3, 5, 8, 9), (4,))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU they oversubscribe it
    (measured here: 0.2 s with one thread, 30 s with two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_shared_form_shares_parameters_and_is_exact():
    torch.manual_seed(0)
    model = build_model("digits_cnn", (1, 8, 8), 10)
    x = torch.rand(8, 1, 8, 8)
    form = shared_lirpa_form(model, x[:1])
    assert {id(p) for p in form.parameters()} == {id(p) for p in model.parameters()}
    assert not any(isinstance(m, MinMax) for m in form.modules())
    assert torch.allclose(form(x), model(x), atol=1e-5)
    with torch.no_grad():
        model[-1].bias.add_(1.0)  # a weight update shows in the form at once
    assert torch.allclose(form(x), model(x), atol=1e-5)


@pytest.mark.parametrize("norm, dual", [(math.inf, 1), (2.0, 2)])
def test_bounds_are_exact_on_a_linear_layer_and_differentiable(norm, dual):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 4)).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 2])
    c, others = margin_spec(y, 4, x.dtype)
    bounds = LirpaBounds(model, x, norm)
    W, b = model[1].weight, model[1].bias
    want = torch.stack([torch.stack([(W[y[r]] - W[i]) @ x[r] + b[y[r]] - b[i] - 0.3 * (W[y[r]] - W[i]).norm(p=dual)
                                     for i in others[r]]) for r in range(6)])
    for beta in (0.0, 0.4, 1.0):
        lower = bounds.lower(x, c, 0.3, beta)
        assert torch.allclose(lower, want, atol=1e-10)
    lower.sum().backward()
    assert W.grad is not None and W.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", [math.inf, 2.0])
def test_bounds_are_sound_on_a_nonlinear_net(norm):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 24), MinMax(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 5))
    x = torch.randn(32, 6)
    y = model(x).argmax(1).detach()
    c, others = margin_spec(y, 5)
    bounds = LirpaBounds(model, x, norm)
    eps = 0.1
    lowers = [bounds.lower(x, c, eps, beta).detach() for beta in (0.0, 0.5, 1.0)]
    assert (lowers[1] >= torch.minimum(lowers[0], lowers[2]) - 1e-6).all()  # a mix lies between its parts
    for t in range(2):  # PGD on f_y - f_i for two opponents i per point
        target = others[:, t]
        keep = F.one_hot(y, 5).bool() | F.one_hot(target, 5).bool()
        _, x_adv = pgd_set_attack(_Only(model, keep), x, F.one_hot(y, 5).bool(), eps, norm, steps=25, restarts=1)
        with torch.no_grad():
            out = model(x_adv)
        margin = out.gather(1, y[:, None])[:, 0] - out.gather(1, target[:, None])[:, 0]
        for lower in lowers:
            assert (lower[:, t] <= margin + 1e-5).all()


class _Only(nn.Module):
    def __init__(self, model, keep):
        super().__init__()
        self.model, self.keep = model, keep

    def forward(self, x):
        out = self.model(x)
        return torch.where(self.keep, out, torch.full_like(out, -1e9))


def test_margin_spec_rows():
    y = torch.tensor([2, 0])
    c, others = margin_spec(y, 4)
    assert others.tolist() == [[0, 1, 3], [1, 2, 3]]
    assert c[0].tolist() == [[-1, 0, 1, 0], [0, -1, 1, 0], [0, 0, 1, -1]]
    logits = torch.randn(2, 4)
    assert torch.allclose(torch.einsum("brn,bn->br", c, logits),
                          logits.gather(1, y[:, None]) - logits.gather(1, others))


def test_robust_loss_at_zero_radius_is_cross_entropy_and_masks_rows():
    torch.manual_seed(3)
    logits = torch.randn(16, 5)
    y = torch.randint(0, 5, (16,))
    c, others = margin_spec(y, 5)
    exact = torch.einsum("brn,bn->br", c, logits)  # exact margins at eps = 0
    assert robust_cross_entropy(exact).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    mask = torch.zeros_like(exact, dtype=torch.bool)
    assert robust_cross_entropy(exact, mask).item() == 0.0
    mask[:, 0] = True
    assert robust_cross_entropy(exact, mask).item() == pytest.approx(F.softplus(-exact[:, 0]).mean().item(), rel=1e-5)


def test_igrp_losses_split_rows_by_group():
    torch.manual_seed(4)
    g = IGRP(GROUPS, 0.05, 0.2)
    group_of = g.group_of(10)
    y = torch.randint(0, 10, (32,))
    _, others = margin_spec(y, 10)
    lower_in, lower_out = torch.randn(32, 9), torch.randn(32, 9)
    inner, outer = igrp_robust_losses(lower_in, lower_out, y, others, group_of)
    same = group_of[others] == group_of[y][:, None]
    # rows of the other side do not matter
    inner2, outer2 = igrp_robust_losses(torch.where(same, lower_in, lower_in - 50), torch.where(same, lower_out + 50, lower_out),
                                        y, others, group_of)
    assert inner.item() == pytest.approx(inner2.item()) and outer.item() == pytest.approx(outer2.item())
    assert inner.item() == pytest.approx(robust_cross_entropy(lower_in, same).item())
    # a singleton group has no inner rows
    four = (y == 4)
    if four.any():
        assert not same[four].any()


def test_schedule_warmup_ramp_and_mixing():
    s = CrownIBPSchedule.parse(2, 4, "1 -> 0.5", "1 -> 0")
    per_epoch = 10
    assert s.at(0, per_epoch) == (0.0, 1.0, 1.0) and s.at(19, per_epoch) == (0.0, 1.0, 1.0)
    factor, kappa, beta = s.at(20, per_epoch)
    assert factor == pytest.approx(1 / 40) and kappa == pytest.approx(1 - 0.5 / 40) and beta == pytest.approx(1 - 1 / 40)
    factor, kappa, beta = s.at(39, per_epoch)
    assert factor == pytest.approx(0.5) and kappa == pytest.approx(0.75) and beta == pytest.approx(0.5)
    assert s.at(59, per_epoch) == (1.0, 0.5, 0.0) and s.at(500, per_epoch) == (1.0, 0.5, 0.0)
    assert CrownIBPSchedule.parse(0, 0, None, "0").at(0, 5) == (1.0, 0.0, 0.0)
    values = [s.at(t, per_epoch)[0] for t in range(80)]
    assert values == sorted(values)  # eps never shrinks


def test_loss_is_natural_during_warmup_and_mixes_after():
    torch.manual_seed(5)
    model = build_model("mlp", (1, 8, 8), 10)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    schedule = CrownIBPSchedule.parse(1, 1, "1 -> 0", "1 -> 0")
    loss = CrownIBPLoss(model, Standard(), 0.1, math.inf, schedule, x, 10)
    warm = loss(x, y, 0, 4)
    assert warm.eps == 0.0 and warm.loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)
    end = loss(x, y, 7, 4)
    assert end.eps == pytest.approx(0.1) and end.kappa == 0.0 and end.beta == 0.0
    c, _ = margin_spec(y, 10)
    assert end.loss.item() == pytest.approx(robust_cross_entropy(loss.bounds.lower(x, c, 0.1, 0.0)).item(), rel=1e-5)
    assert end.loss.item() > warm.loss.item()  # a robust loss exceeds the natural one
    igrp = CrownIBPLoss(model, IGRP(GROUPS, 0.02, 0.1), 123.0, math.inf, schedule, x, 10)
    out = igrp(x, y, 7, 4)
    assert out.eps == pytest.approx(0.1)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="standard and IGRP"):
        CrownIBPLoss(model, rp.adapters.RTK(2), 0.1, math.inf, schedule, x, 10)


SECTION_KEYS = ("warmup_epochs", "kappa", "beta")


def _config(tmp_path, **kw):
    """A CROWN-IBP run; ``warmup_epochs``/``kappa``/``beta`` go to the method's section."""
    common = dict(name="c", dataset="digits", architecture="mlp", method="crown-ibp", guarantee="standard", eps=0.05,
                  norm=math.inf, epochs=4, batch_size=64, lr="3e-3", eps_ramp_epochs=2,
                  device="cpu", limit_train=320, out_dir=str(tmp_path / "run"))
    section = {"warmup_epochs": 1} if kw.get("method", "crown-ibp") == "crown-ibp" else {}
    for key in SECTION_KEYS:
        if key in kw:
            section[key] = kw.pop(key)
    common.update(kw)
    return TrainConfig(**common, method_options=section)


def test_crown_ibp_training_raises_verified_accuracy(tmp_path):
    natural = train(_config(tmp_path, method="natural", norm=2.0, eps_ramp_epochs=0, limit_train=640,
                            out_dir=str(tmp_path / "nat")), progress=False)
    robust = train(_config(tmp_path, epochs=6, limit_train=640), progress=False)
    assert [h["eps"] for h in robust.history][0] == 0.0 and robust.history[-1]["eps"] == pytest.approx(0.05)
    assert robust.history[-1]["kappa"] == 0.0 and robust.history[-1]["beta"] == 0.0
    loaded, guarantee, spec, eps, dataset, _ = load_evaluation(robust.checkpoint, device="cpu")
    assert spec == "standard" and eps == 0.05 and loaded.metadata["method"] == "crown-ibp"
    x = torch.stack([dataset[i][0] for i in range(200)])
    y = torch.tensor([dataset[i][1] for i in range(200)])
    vra = {name: rp.certify(m.eval(), x, 0.05, "inf", "crown-ibp", "standard").vra(y)
           for name, m in (("natural", natural.model), ("crown-ibp", loaded.model))}
    assert vra["crown-ibp"] > vra["natural"] + 0.15, vra


def test_igrp_training_writes_a_checkpoint_that_evaluates_as_igrp(tmp_path):
    groups = tmp_path / "groups.yaml"
    groups.write_text("sets: [[0, 6], [1, 7], [2, 3, 5, 8, 9], [4]]\n")
    config = _config(tmp_path, guarantee="igrp", eps=0.1, eps_in=0.025, sets_file=str(groups))
    result = train(config, progress=False)
    meta = load_checkpoint(result.checkpoint).metadata
    assert meta["guarantee"] == "igrp:0.025,0.1" and meta["sets"] == [list(g) for g in GROUPS]
    assert meta["eps"] == 0.1 and meta["eps_in"] == 0.025 and meta["norm"] == math.inf
    loaded, guarantee, spec, eps, dataset, _ = load_evaluation(result.checkpoint, device="cpu")
    assert isinstance(guarantee, IGRP) and guarantee.groups == GROUPS and guarantee.radii() == (0.025, 0.1)
    x = torch.stack([dataset[i][0] for i in range(50)])
    cert = rp.certify(loaded.model, x, eps, "inf", "crown-ibp", guarantee)  # the checkpoint's eps is the outer radius
    assert cert.eps_in == 0.025 and cert.eps_out == 0.1
    last = result.history[-1]
    assert last["eps"] == pytest.approx(0.1) and last["kappa"] == 0.0 and math.isfinite(last["loss"])


def test_gloro_igrp_variant_trains_on_both_radii(tmp_path):
    """GloRo training for IGRP uses the two-radius margin; the ramp scales both radii."""
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    from relaxplug.lipschitz import LipschitzEstimator, head_distances

    est = LipschitzEstimator(model, (1, 8, 8))
    g = IGRP(GROUPS, 0.1, 0.4)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    net = GloRoNet(model, 0.2, g, input_shape=(1, 8, 8), power_iterations=1)
    instrumented = net(x)
    logits = instrumented[:, :-1]
    pair = est.power(0).detach() * head_distances(est.head.weight.detach())
    half = guarantee_margin(logits.detach(), pair, 0.2, g)
    assert torch.allclose(half, guarantee_margin(logits.detach(), pair, 0.2, IGRP(GROUPS, 0.05, 0.2)))
    assert torch.allclose(instrumented[:, -1], logits.max(1).values - half, atol=1e-5)
    result = train(TrainConfig(name="g", dataset="digits", architecture="mlp", guarantee="igrp", sets=GROUPS, eps=0.4,
                               eps_in=0.1, epochs=2, batch_size=64, lr="1e-3", device="cpu", limit_train=128,
                               eps_ramp_epochs=2, out_dir=str(tmp_path / "g"), method_options={"loss": "ce"}),
                   progress=False)
    assert load_checkpoint(result.checkpoint).metadata["guarantee"] == "igrp:0.1,0.4"
    assert [h["eps"] for h in result.history] == [pytest.approx(0.2), pytest.approx(0.4)]


@pytest.mark.parametrize("overrides, message", [
    ({"guarantee": "rtk:2"}, "crown-ibp trains the guarantees"),
    ({"guarantee": "igrp", "sets": [[0], [1]]}, "eps_in"),
    ({"guarantee": "igrp", "eps_in": 0.05}, "needs groups"),
    ({"guarantee": "igrp", "eps_in": 0.5, "sets": [[0], [1]]}, r"eps_in must be a number in \[0, eps"),
    ({"guarantee": "igrp:g.yaml", "eps_in": 0.01}, "in a config IGRP is"),
    ({"eps_in": 0.01}, "IGRP's inner radius"),
    ({"sets": [[0, 1]], "sets_file": "x.yaml"}, "at most one of"),
    ({"warmup_epochs": 3, "eps_ramp_epochs": 2}, "exceeds epochs"),
    ({"kappa": "1 -> 0 half"}, "follows the eps ramp"),
    ({"beta": "2 -> 0"}, r"weight in \[0, 1\]"),
    ({"norm": 1.0}, "norm must be 2 or inf"),
    ({"method": "gloro", "norm": 2.0, "kappa": "1 -> 0"}, r"section 'gloro': unknown key\(s\) \['kappa'\]"),
    ({"method": "gloro", "norm": 2.0, "warmup_epochs": 1}, r"section 'gloro': unknown key\(s\) \['warmup_epochs'\]"),
    ({"method": "gloro", "norm": math.inf}, "method gloro trains for norm 2"),
    ({"method": "natural", "norm": 2.0, "guarantee": "igrp", "eps_in": 0.01, "sets": [[0]]}, "gloro or crown-ibp"),
])
def test_config_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **overrides)


def test_shipped_crown_ibp_configs_load():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    for name in ("digits_crown_ibp.yaml", "digits_igrp.yaml", "digits_igrp_gloro.yaml"):
        config = load_config(configs / name)
        assert config.method in ("crown-ibp", "gloro")
    assert load_config(configs / "digits_igrp.yaml", ["norm=inf"]).norm == math.inf

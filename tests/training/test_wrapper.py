"""GloRoNet: instrumented training output, persistent power vectors as buffers, sound certify."""

import copy
import dataclasses
import io

import pytest
import torch
from torch import Tensor, nn

import relaxplug as rp
from relaxplug.adapters import IGRP, RTK, Guarantee
from relaxplug.attacks import check_certificates
from relaxplug.lipschitz import UnsupportedLayerError, estimator_for, head_distances
from relaxplug.models.architectures import build_model
from relaxplug.models.layers import MinMax
from relaxplug.training.losses import gloro_instrumented, gloro_trades


class TopTwoOnly(Guarantee):
    """A user-defined guarantee (not registered in relaxplug): only top-2 sets are acceptable."""

    name = "top-two-only"

    def max_k(self, n_classes: int) -> int:
        return 2

    def accept(self, order: Tensor) -> Tensor:
        accept = torch.zeros(order.shape[0], 2, dtype=torch.bool, device=order.device)
        accept[:, 1] = True
        return accept


def _net(guarantee="rtk:2", **kw) -> rp.GloRoNet:
    torch.manual_seed(0)
    return rp.GloRoNet(build_model("digits_cnn", (1, 8, 8), 10), 0.3, guarantee, input_shape=(1, 8, 8), **kw)


def _vectors(net: rp.GloRoNet) -> dict[str, Tensor]:
    """The power-iteration buffers in the wrapped model's layers."""
    return {k: v.clone() for k, v in net.model.state_dict().items() if "lipschitz_u" in k}


def test_train_mode_returns_instrumented_logits_and_eval_mode_the_plain_logits():
    net = _net()
    x = torch.rand(6, 1, 8, 8)
    before = _vectors(net)
    g = net.train()(x)
    assert g.shape == (6, 11)
    assert torch.equal(g[:, :-1], net.model(x))
    after = _vectors(net)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the vectors advanced
    # the same output from the public pieces, with the estimate from the vectors as they were
    net.model.load_state_dict(before, strict=False)
    est = estimator_for(net.model, (1, 8, 8))
    pair = est.power(2) * head_distances(est.head.weight)
    assert torch.allclose(g, gloro_instrumented(net.model(x), pair, 0.3, RTK(2)), atol=1e-6)
    net.eval()
    assert torch.equal(net(x), net.model(x))
    assert all(torch.equal(after[k], v) for k, v in _vectors(net).items())  # eval leaves them alone


def test_loss_is_the_configured_one_and_needs_train_mode():
    net = _net(loss="trades", trades_lambda=0.7)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    vectors = _vectors(net)
    loss = net.loss(x, y)
    net.model.load_state_dict(vectors, strict=False)
    assert torch.allclose(loss, gloro_trades(net(x), y, 0.7))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(RuntimeError, match="train mode"):
        net.eval().loss(x, y)
    with pytest.raises(ValueError, match="unknown GloRo loss 'hinge'"):
        _net(loss="hinge")


def test_power_vectors_travel_with_state_dict_save_dtype_and_copies():
    net = _net()
    x = torch.rand(4, 1, 8, 8)
    net(x)
    state = net.state_dict()
    weighted = sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in net.model.modules())
    assert len([k for k in state if "lipschitz_u" in k]) == weighted == 4  # one vector per weighted layer
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(x), net(x))  # same weights, same vectors: the same next step
    fresh = _net()
    fresh.load_state_dict(loaded.state_dict())
    assert torch.equal(fresh(x), loaded(x))
    double = copy.deepcopy(net).double()
    assert all(v.dtype == torch.float64 for v in _vectors(double).values())
    assert double(x.double()).dtype == torch.float64
    # an EMA-style copy owns its vectors and bounds its own weights
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p in twin.model.parameters():
            p.mul_(2.0)
    g_twin, g_net = twin(x), net(x)
    assert not torch.allclose(g_twin[:, -1], g_net[:, -1])
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(twin.model.buffers(), net.model.buffers()))


@pytest.mark.parametrize("guarantee", ["standard", "rtk:3", IGRP([[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]], 0.1, 0.3),
                                       TopTwoOnly()])
def test_certify_is_rp_certify_with_the_sound_bound(guarantee):
    net = _net(guarantee)
    x = torch.rand(20, 1, 8, 8)
    for _ in range(3):
        net.loss(x, torch.randint(0, 10, (20,))).backward()
    ours = net.certify(x)
    theirs = rp.certify(net.model, x, 0.3, 2, "gloro", net.guarantee)
    assert torch.equal(ours.certified, theirs.certified) and torch.equal(ours.margin, theirs.margin)
    # the training estimate is below the sound bound (power iteration converges from below)
    est = estimator_for(net.model, (1, 8, 8))
    assert float(net.pair_lipschitz().detach().max()) <= est.sound() * float(head_distances(est.head.weight.detach()).max()) * (1 + 1e-5)


def test_graph_models_train_and_unbounded_ops_are_refused_by_name():
    class Pooled(nn.Module):
        """Not a layer stack: a forward of its own with pooling (the fx engine bounds it)."""

        def __init__(self, square: bool = False):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.head = nn.Linear(4, 10)
            self.square = square

        def forward(self, x):
            h = self.conv(x).relu()
            h = h * h if self.square else h
            return self.head(h.mean(dim=(2, 3)))

    net = rp.GloRoNet(Pooled(), 0.1, input_shape=(1, 8, 8))
    x = torch.rand(4, 1, 8, 8)
    net.loss(x, torch.randint(0, 10, (4,))).backward()
    assert net.model.conv.weight.grad is not None and torch.isfinite(net.model.conv.weight.grad).all()
    assert torch.equal(net.certify(x).margin, rp.certify(net.model, x, 0.1).margin)
    with pytest.raises(UnsupportedLayerError, match="product of two input-dependent tensors"):
        rp.GloRoNet(Pooled(square=True), 0.1, input_shape=(1, 8, 8))


def test_wrapper_trained_models_survive_the_attack_on_their_certificates():
    """Train with the wrapper, certify, attack every certified point (PGD on its certified set):
    nothing broken; the control (the same claims checked at 20x the radius) is broken."""
    torch.manual_seed(0)
    centres = torch.randn(4, 10) * 3
    y = torch.arange(200) % 4
    x = centres[y] + 0.3 * torch.randn(200, 10)
    model = nn.Sequential(nn.Linear(10, 32), MinMax(), nn.Linear(32, 32), MinMax(), nn.Linear(32, 4))
    for guarantee in ("standard", "rtk:2"):
        net = rp.GloRoNet(model, 0.5, guarantee, input_shape=(10,), loss="trades")
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(60):
            optimizer.zero_grad()
            net.loss(x, y).backward()
            optimizer.step()
        cert = net.certify(x)
        assert cert.certified.float().mean() > 0.5, guarantee
        assert check_certificates(model, x, cert).points == [], guarantee
        assert check_certificates(model, x, dataclasses.replace(cert, eps=10.0)).points != [], guarantee


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_under_bf16_autocast_only_the_model_forward_is_low_precision(device):
    """Autocast (what ``bf16: true`` turns on for CUDA training; CPU autocast runs the same code):
    the logits come from the bf16 forward, but the Lipschitz estimate, the margins and the
    instrumented output are float32, equal to the float32 computation on the upcast logits."""
    net = _net().train().to(device)
    x = torch.rand(6, 1, 8, 8, device=device)
    before = _vectors(net)
    with torch.autocast(device, dtype=torch.bfloat16):
        g = net(x)
        low = net.model(x)
    assert low.dtype == torch.bfloat16 and g.dtype == torch.float32
    assert torch.equal(g[:, :-1], low.float())
    net.model.load_state_dict(before, strict=False)
    est = estimator_for(net.model, (1, 8, 8))
    pair = est.power(2) * head_distances(est.head.weight)  # float32, outside autocast
    assert pair.dtype == torch.float32
    assert torch.equal(g, gloro_instrumented(low.float(), pair, 0.3, RTK(2)))

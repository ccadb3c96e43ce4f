"""Recipe options: optimizers by name, Lookahead, warm-up, gradient clipping, EMA, eps_min."""

import pytest
import torch
from torch import nn

import relaxplug as rp
from relaxplug.data import load_dataset
from relaxplug.models.architectures import build_model
from relaxplug.models.checkpoint import load_checkpoint
from relaxplug.runtime import seed_everything
from relaxplug.training.config import TrainConfig
from relaxplug.training.optim import Lookahead, WeightEMA, build_optimizer, warmup_factor
from relaxplug.training.trainer import train


def test_lookahead_moves_slow_weights_every_k_steps():
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    inner = torch.optim.SGD([w], lr=0.1)
    opt = Lookahead(inner, k=3, alpha=0.5)
    slow = w.detach().clone()
    fast = w.detach().clone()
    for step in range(1, 7):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
        fast = fast - 0.1 * 2 * fast
        if step % 3 == 0:
            slow = slow + 0.5 * (fast - slow)
            fast = slow.clone()
        assert torch.allclose(w.detach(), fast, atol=1e-7), step
    state = opt.state_dict()
    other = Lookahead(torch.optim.SGD([nn.Parameter(w.detach().clone())], lr=0.1), k=3, alpha=0.5)
    other.load_state_dict(state)
    assert other.steps == 6 and torch.equal(other.slow[0][0], opt.slow[0][0])
    with pytest.raises(ValueError, match="alpha"):
        Lookahead(inner, k=3, alpha=0.0)


def test_optimizers_by_name_and_warmup_factor():
    p = [nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer("nadam", p, 1e-3), torch.optim.NAdam)
    assert isinstance(build_optimizer("sgd", p, 1e-3), torch.optim.SGD)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        build_optimizer("lbfgs", p, 1e-3)
    assert [warmup_factor(s, 4, 2) for s in (0, 3, 7, 8)] == [1 / 8, 4 / 8, 1.0, 1.0]
    assert warmup_factor(0, 4, 0) == 1.0


def test_weight_ema_follows_the_formula():
    source = nn.Linear(2, 1)
    ema = WeightEMA(source, decay=0.9)
    expected = [p.detach().clone() for p in source.parameters()]
    for t in range(5):
        with torch.no_grad():
            for p in source.parameters():
                p.add_(1.0)
        ema.update(source)
        d = min(0.9, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, source.parameters())]
    for e, p in zip(expected, ema.model.parameters()):
        assert torch.allclose(e, p, atol=1e-6)
    assert not any(p.requires_grad for p in ema.model.parameters())


def _config(tmp_path, **kw):
    common = dict(name="r", dataset="digits", architecture="mlp", guarantee="rtk:2", eps=0.3, epochs=2, batch_size=64,
                  lr="1e-2", device="cpu", limit_train=128, out_dir=str(tmp_path / "run"),
                  method_options={"loss": "ce"})
    return TrainConfig(**{**common, **kw})


def test_gradient_clipping_bounds_an_sgd_step(tmp_path):
    """One batch, SGD without momentum: the step is ``lr * clipped gradient``, so the weights move
    by at most ``lr * max_norm`` in L2; without clipping they move much further."""
    def moved(clip):
        config = _config(tmp_path, epochs=1, limit_train=64, lr="1.0", out_dir=str(tmp_path / f"c{clip}"),
                         optimizer={"name": "sgd", "momentum": 0.0, "clip_grad_norm": clip})
        seed_everything(0)
        start = build_model("mlp", (1, 8, 8), 10)
        end = train(config, resume=False, progress=False).model
        return torch.cat([(a - b).flatten() for a, b in zip(end.parameters(), start.parameters())]).norm().item()

    assert moved(1e-3) <= 1e-3 * (1 + 1e-4)
    assert moved(None) > 1e-2


def test_ema_checkpoint_holds_the_average_certified_with_its_own_bound(tmp_path):
    config = _config(tmp_path, optimizer={"name": "nadam", "lookahead_k": 2, "warmup_epochs": 1,
                                          "clip_grad_norm": 5.0}, ema={"decay": 0.9}, epochs=3)
    result = train(config, progress=False)
    loaded = load_checkpoint(result.checkpoint)
    state = loaded.state
    assert loaded.metadata["ema_decay"] == 0.9
    for name, tensor in result.model.state_dict().items():  # the checkpoint's model is the EMA
        assert torch.equal(tensor, loaded.model.state_dict()[name])
    raw = state["training_model"]
    assert any(not torch.equal(raw[k], v) for k, v in loaded.model.state_dict().items())
    data = load_dataset("digits")
    x = torch.stack([data.test[i][0] for i in range(64)])
    ema_cert = rp.certify(loaded.model, x, 0.3, 2, "gloro", "rtk:2")
    raw_model = load_checkpoint(result.checkpoint).model
    raw_model.load_state_dict(raw)
    raw_cert = rp.certify(raw_model, x, 0.3, 2, "gloro", "rtk:2")
    assert not torch.equal(ema_cert.margin, raw_cert.margin)  # each with its own Lipschitz bound
    # resuming a finished EMA run restores, not retrains
    again = train(config, progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2, 3]


def test_interrupted_recipe_run_resumes_identically(tmp_path, monkeypatch):
    recipe = dict(optimizer={"name": "nadam", "lookahead_k": 3, "warmup_epochs": 1}, ema={"decay": 0.8}, epochs=3)
    full = train(_config(tmp_path, out_dir=str(tmp_path / "full"), **recipe), progress=False)
    import relaxplug.training.trainer as trainer

    real_save = trainer.save_checkpoint
    calls = {"n": 0}

    def interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    part = _config(tmp_path, out_dir=str(tmp_path / "part"), **recipe)
    monkeypatch.setattr(trainer, "save_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(part, progress=False)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = train(part, progress=False)
    for name, tensor in full.model.state_dict().items():
        assert torch.allclose(tensor, resumed.model.state_dict()[name], atol=1e-6), name


def test_eps_ramps_from_eps_min(tmp_path):
    result = train(_config(tmp_path, eps_min=0.1, eps_ramp_epochs=2, epochs=3), progress=False)
    assert [h["eps"] for h in result.history] == [pytest.approx(0.2), pytest.approx(0.3), pytest.approx(0.3)]

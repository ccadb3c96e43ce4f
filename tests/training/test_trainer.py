"""Training runs end to end (short), resumes, and its loss shares the certification path."""

import dataclasses

import pytest
import torch

import relaxplug as rp
from relaxplug.adapters import RTK, Affinity, Standard
from relaxplug.models.checkpoint import load_checkpoint
from relaxplug.training.config import TrainConfig
from relaxplug.lipschitz import LipschitzEstimator, head_distances
from relaxplug.models.architectures import build_model
from relaxplug.training.losses import guarantee_margin, instrumented_logits
from relaxplug.training.trainer import train
from relaxplug.training.wrapper import GloRoNet


def _config(tmp_path, **kw):
    common = dict(
        name="t", dataset="synthetic2d", architecture="mlp", guarantee="rtk:2", eps=0.1, epochs=3,
        batch_size=64, lr="1e-2 -> 1e-3 after half", device="cpu", out_dir=str(tmp_path / "run"),
        method_options={"loss": "trades"} if kw.get("method", "gloro") == "gloro" else None,
    )
    return TrainConfig(**{**common, **kw})


@pytest.mark.parametrize("guarantee", [Standard(), RTK(3), Affinity([[0, 1], [1, 2, 3]])])
def test_training_margin_equals_certified_margin_with_the_same_bound(guarantee):
    """The training head and the certifier are one function: with the sound body bound
    plugged in, the training margin equals the certificate's margin (up to the rounding
    allowance the certifier subtracts)."""
    torch.manual_seed(0)
    model = build_model("mlp", (2,), 5).double().eval()
    x = torch.randn(50, 2, dtype=torch.float64)
    est = LipschitzEstimator(model, (2,))
    pair = est.sound() * head_distances(est.head.weight.detach())
    with torch.no_grad():
        margin = guarantee_margin(model(x), pair, 0.05, guarantee)
    cert = rp.certify(model, x, eps=0.05, guarantee=guarantee)
    assert torch.allclose(margin, cert.margin, atol=1e-9)
    assert torch.equal(margin > 1e-9, cert.certified) or torch.equal(margin > 0, cert.certified)


def test_instrumented_bottom_wins_exactly_when_margin_negative():
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    g = instrumented_logits(logits, torch.tensor([0.5, -0.5]))
    assert g.argmax(1).tolist() == [0, 3]


def test_gloro_step_has_finite_gradients():
    torch.manual_seed(0)
    model = build_model("digits_cnn", (1, 8, 8), 10)
    net = GloRoNet(model, 0.3, RTK(2), input_shape=(1, 8, 8), loss="trades")
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    g = net(x)
    net.criterion(g, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert g.shape == (16, 11)


def test_train_writes_checkpoint_with_metadata_and_resumes(tmp_path):
    config = _config(tmp_path)
    result = train(config, progress=False)
    assert len(result.history) == 3
    loaded = load_checkpoint(result.checkpoint)
    meta = loaded.metadata
    assert meta["architecture"] == "mlp" and meta["guarantee"] == "rtk:2" and meta["eps"] == 0.1
    assert meta["epoch"] == 3 and meta["norm"] == 2.0 and "normalization" in meta
    # a longer run with the same directory resumes from epoch 3 instead of starting over
    longer = dataclasses.replace(config, epochs=4)
    with pytest.raises(ValueError, match="different config"):
        train(longer, progress=False)
    again = train(config, progress=False)
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert torch.equal(again.model.state_dict()["1.weight"], loaded.model.state_dict()["1.weight"])


def test_interrupted_run_resumes_identically(tmp_path, monkeypatch):
    full = train(_config(tmp_path, out_dir=str(tmp_path / "full"), epochs=4), progress=False)
    part = _config(tmp_path, out_dir=str(tmp_path / "part"), epochs=4)
    import relaxplug.training.trainer as trainer

    real_save = trainer.save_checkpoint
    calls = {"n": 0}

    def interrupt_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_save(*args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(part, progress=False)
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt").metadata["epoch"] == 2
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = train(part, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for name, tensor in full.model.state_dict().items():
        assert torch.allclose(tensor, resumed.model.state_dict()[name], atol=1e-6), name


def test_certified_training_beats_natural_on_vra(tmp_path):
    """GloRo training for RT2 must certify more points than natural training does."""
    gloro = train(_config(tmp_path, epochs=20, out_dir=str(tmp_path / "g")), progress=False)
    natural = train(_config(tmp_path, epochs=20, method="natural", out_dir=str(tmp_path / "n")), progress=False)
    from relaxplug.data import load_dataset

    data = load_dataset("synthetic2d")
    x = torch.stack([data.test[i][0] for i in range(len(data.test))])
    y = torch.tensor([int(data.test[i][1]) for i in range(len(data.test))])
    vra_g = rp.certify(gloro.model, x, eps=0.1, guarantee="rtk:2").vra(y)
    vra_n = rp.certify(natural.model, x, eps=0.1, guarantee="rtk:2").vra(y)
    assert vra_g > vra_n


def test_unknown_grouping_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no grouping"):
        train(_config(tmp_path, guarantee="affinity", grouping="coarse"), progress=False)

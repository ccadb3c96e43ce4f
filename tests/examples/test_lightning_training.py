"""examples/lightning_training.py in fast mode: a user-defined model in a LightningModule through
rp.GloRoNet, trained by lightning.Trainer, certified, and its Lightning checkpoint reloaded."""

import contextlib
import io
import json

import pytest
import torch

import relaxplug as rp

from ._runner import has_docstring, load_example, one_thread

pytest.importorskip("lightning", reason="the lightning extra is not installed (pip install '.[lightning]')")


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """One ``--fast`` run shared by the tests: (example module, summary, printed lines, output dir)."""
    example = load_example("lightning_training")
    out = tmp_path_factory.mktemp("lightning")
    printed = io.StringIO()
    with one_thread(), contextlib.redirect_stdout(printed):
        summary = example.main(["--fast", "--out", str(out)])
    return example, summary, printed.getvalue(), out


def test_fast_run(fast_run):
    example, summary, printed, tmp_path = fast_run
    assert has_docstring(example)
    rt2, standard = summary["records"]
    assert (rt2["guarantee"], standard["guarantee"], rt2["eps"]) == ("rtk:2", "standard", 0.3)
    assert rt2["clean_accuracy"] > 0.5  # three epochs on 256 images already learn the digits
    assert rt2["vra"] >= standard["vra"] and rt2["rejection_rate"] <= standard["rejection_rate"]
    assert summary["checkpoint_same_certificate"] and summary["checkpoint_same_estimate"]
    assert json.loads((tmp_path / "results.json").read_text())["records"][0]["points"] == 64
    assert "4 power vectors, 4 advanced by the loop" in printed  # Lightning's loop ran the power iteration


def test_checkpoint_carries_the_power_vectors(fast_run):
    """The buffers in Lightning's checkpoint are the trained ones, and a module reloaded from it
    trains on from them: its next train-mode forward equals the original module's."""
    example, _, _, tmp_path = fast_run
    state = torch.load(tmp_path / "model.ckpt", weights_only=False)["state_dict"]
    vectors = {k: v for k, v in state.items() if "lipschitz_u" in k}
    assert len(vectors) == 4 and all(k.startswith("net.model.") for k in vectors)

    torch.manual_seed(1)
    module = example.GloRoDigits(example.make_model(10))
    initial = {k: v.clone() for k, v in module.state_dict().items() if "lipschitz_u" in k}
    module.load_state_dict(state)
    assert all(not torch.equal(initial[k], v) for k, v in vectors.items())  # training moved them
    reloaded = example.GloRoDigits.load_from_checkpoint(tmp_path / "model.ckpt", model=example.make_model(10))
    x = torch.rand(8, 1, 8, 8)
    module.net.train(), reloaded.net.train()
    assert torch.equal(module.net(x), reloaded.net(x))  # one power step each, from the same vectors
    for key, value in module.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    cert = reloaded.net.eval().certify(x)
    assert torch.equal(cert.margin, rp.certify(module.net.model, x, 0.3, 2, "gloro", "rtk:2").margin)

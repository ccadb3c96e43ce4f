import pytest
import torch

from relaxplug.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from relaxplug.models.architectures import build_model


def _meta(arch="digits_cnn", shape=(1, 8, 8), n=10):
    return {"architecture": arch, "input_shape": list(shape), "n_classes": n, "eps": 0.3}


def test_roundtrip_weights_only(tmp_path):
    model = build_model("digits_cnn", (1, 8, 8), 10)
    path = save_checkpoint(tmp_path / "ck.pt", model, _meta(), {"epoch": 3})
    loaded = load_checkpoint(path)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded.model(x), model.eval()(x))
    assert loaded.metadata["eps"] == 0.3 and loaded.state == {"epoch": 3}
    assert not list(tmp_path.glob(".*tmp"))


def test_other_architecture_is_named(tmp_path):
    model = build_model("mlp", (1, 8, 8), 10)
    path = save_checkpoint(tmp_path / "ck.pt", model, _meta("digits_cnn"))
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a relaxplug checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_interrupted_write_keeps_previous(tmp_path, monkeypatch):
    model = build_model("mlp", (2,), 3)
    path = save_checkpoint(tmp_path / "ck.pt", model, _meta("mlp", (2,), 3))
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, _meta("mlp", (2,), 3))
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))

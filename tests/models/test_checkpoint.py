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


def _corrupt_kinds(tmp_path):
    """A file of each kind that is not a usable checkpoint -> the words its error must contain."""
    good = save_checkpoint(tmp_path / "good.pt", build_model("mlp", (2,), 3), _meta("mlp", (2,), 3))
    data = good.read_bytes()
    kinds = {
        "empty": (b"", "is empty (0 bytes)"),
        "truncated": (data[: len(data) // 2], "truncated or corrupt"),
        "garbage": (bytes(range(256)) * 4, "not a readable checkpoint"),
        "text": (b"not a checkpoint at all\n" * 20, "not a readable checkpoint"),
    }
    files = {}
    for name, (content, words) in kinds.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        files[name] = (path, words)

    class Payload:  # pickled by reference: a weights-only load must refuse it, never run it
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "relaxplug-checkpoint-v1", "x": Payload()}, evil)
    files["objects"] = (evil, "holds Python objects other than tensors and plain data (print)")
    no_meta = tmp_path / "no_meta.pt"
    torch.save({"format": "relaxplug-checkpoint-v1", "metadata": {"architecture": "mlp", "input_shape": [2]},
                "model": {}, "state": None}, no_meta)
    files["missing key"] = (no_meta, "lacks metadata key(s) n_classes")
    bad_meta = tmp_path / "bad_meta.pt"
    torch.save({"format": "relaxplug-checkpoint-v1", "metadata": {"architecture": "mlp", "input_shape": "abc", "n_classes": 3},
                "model": {}, "state": None}, bad_meta)
    files["wrong type"] = (bad_meta, "'input_shape' must be a list of positive ints")
    unknown_arch = tmp_path / "unknown_arch.pt"
    torch.save({"format": "relaxplug-checkpoint-v1", "metadata": _meta("resnet9000", (2,), 3), "model": {}, "state": None}, unknown_arch)
    files["unknown architecture"] = (unknown_arch, "resnet9000")
    return files


def test_every_kind_of_broken_checkpoint_is_one_clear_error(tmp_path, capsys):
    for kind, (path, words) in _corrupt_kinds(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert words in message and str(path) in message, (kind, message)
        assert "weights_only" not in message and "\n" not in message, (kind, message)
    assert "pwned" not in capsys.readouterr().out


def test_a_failed_write_keeps_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    model = build_model("mlp", (2,), 3)
    path = save_checkpoint(tmp_path / "ck.pt", model, _meta("mlp", (2,), 3))
    before = path.read_bytes()

    def disk_full(obj, handle):  # what torch raises when its writer cannot write
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*ck.pt': the write failed \(disk full"):
        save_checkpoint(path, model, _meta("mlp", (2,), 3))
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))


def test_a_temporary_left_by_a_killed_writer_is_removed_on_the_next_save(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / f".ck.pt.{dead.stdout.strip()}.abc123.tmp"  # a kill between write and rename
    orphan.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path / "ck.pt", build_model("mlp", (2,), 3), _meta("mlp", (2,), 3))
    assert not orphan.exists()
    assert load_checkpoint(tmp_path / "ck.pt").metadata["n_classes"] == 3


def test_a_run_directory_given_as_the_checkpoint_points_at_its_file(tmp_path):
    save_checkpoint(tmp_path / "run" / "checkpoint.pt", build_model("mlp", (1, 8, 8), 10), {"architecture": "mlp",
                    "input_shape": [1, 8, 8], "n_classes": 10})
    with pytest.raises(IsADirectoryError, match=r"is a directory: did you mean .*run/checkpoint.pt\?"):
        load_checkpoint(tmp_path / "run")
    with pytest.raises(IsADirectoryError, match="is a directory: give the checkpoint file"):
        load_checkpoint(tmp_path)

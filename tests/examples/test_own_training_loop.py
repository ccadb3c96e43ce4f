"""examples/own_training_loop.py in fast mode: a user-defined residual model, a plain loop, rp.certify."""

import json

import torch

from ._runner import has_docstring, load_example, one_thread


def test_fast_run(tmp_path, capsys):
    example = load_example("own_training_loop")
    assert has_docstring(example)
    with one_thread():
        summary = example.main(["--fast", "--out", str(tmp_path)])
    rt2, standard = summary["records"]
    assert (rt2["guarantee"], standard["guarantee"], rt2["eps"]) == ("rtk:2", "standard", 0.3)
    assert rt2["clean_accuracy"] > 0.5  # three epochs on 256 images already learn the digits
    assert rt2["vra"] >= standard["vra"] and rt2["rejection_rate"] <= standard["rejection_rate"]
    assert json.loads((tmp_path / "results.json").read_text())["records"][0]["points"] == 64
    saved = torch.load(tmp_path / "model.pt")
    vectors = [k for k in saved if "lipschitz_u" in k]
    assert len(vectors) == 5, vectors  # stem, two block convs, two dense layers
    assert "epoch 3/3" in capsys.readouterr().out

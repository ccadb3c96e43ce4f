"""examples/certify_robustbench.py in fast mode: a RobustBench ResNet-18 (random weights, written
where load_model reads it) certified under standard and affinity:cifar10 on a local .npz."""

import importlib.util
import json

import pytest

from ._runner import has_docstring, load_example, one_thread

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("robustbench") is None or importlib.util.find_spec("auto_LiRPA") is None,
    reason="needs robustbench and auto_LiRPA",
)


def test_fast_run(tmp_path, capsys):
    example = load_example("certify_robustbench")
    assert has_docstring(example)
    with one_thread():
        result = example.main(["--fast", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert (tmp_path / "models" / "cifar10" / "L2" / "Sehwag2021Proxy_R18.pt").is_file()
    assert result["model"]["source"] == "robustbench" and result["model"]["eps"] == 0.5
    standard, relaxed = result["records"]
    assert (standard["guarantee"], relaxed["guarantee"]) == ("standard", "affinity:cifar10")
    assert standard["points"] == relaxed["points"] == 4 and standard["certifier"] == "ibp"
    assert relaxed["vra"] >= standard["vra"]  # a relaxation never certifies less
    assert "affinity:cifar10" in printed
    assert json.loads((tmp_path / "results.json").read_text())["records"][1]["guarantee"] == "affinity:cifar10"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    example = load_example("certify_robustbench")
    with pytest.raises(FileNotFoundError, match="Rice2020Overfitting.pt"):
        example.main(["--model-dir", str(tmp_path), "--out", str(tmp_path / "out")])

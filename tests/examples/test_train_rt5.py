"""examples/train_rt5.py in fast mode: the seeds' CIFAR-100 RT5 config, on the embedded digits."""

import json

from ._runner import has_docstring, load_example, one_thread


def test_fast_run(tmp_path, capsys):
    example = load_example("train_rt5")
    assert has_docstring(example)
    with one_thread():
        summary = example.main(["--fast", "--out", str(tmp_path)])
    assert summary["config"].endswith("configs/cifar100_rt5.yaml")
    assert len(summary["history"]) == 2  # two epochs
    rt5, standard = summary["records"]
    assert (rt5["guarantee"], standard["guarantee"]) == ("rtk:5", "standard")
    assert rt5["eps"] == standard["eps"] == 0.141  # the config's radius
    assert rt5["vra"] >= standard["vra"] and rt5["rejection_rate"] <= standard["rejection_rate"]
    assert json.loads((tmp_path / "results.json").read_text())["records"][0]["points"] == 64
    assert "training cifar100_rt5" in capsys.readouterr().out

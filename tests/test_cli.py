"""The ``relaxplug`` command: train -> eval (plain and IGRP tables), option checks, list."""

import json

import pytest

from relaxplug.certifiers import list_certifiers
from relaxplug.cli import EVAL_COLUMNS, IGRP_EVAL_COLUMNS, main
from relaxplug.training.config import TrainConfig
from relaxplug.training.trainer import train

try:
    from relaxplug.certifiers import lirpa  # noqa: F401  (registers the bound-propagation certifiers)
except ImportError:
    lirpa = None

needs_lirpa = pytest.mark.skipif(lirpa is None, reason="auto_LiRPA is not installed")


@pytest.fixture(scope="module")
def rt2_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("rt2")
    config = TrainConfig(name="rt2", dataset="digits", architecture="mlp", guarantee="rtk:2", eps=0.2, epochs=2,
                         batch_size=64, lr="3e-3", device="cpu", limit_train=256, out_dir=str(out))
    return train(config, progress=False).checkpoint


def _header(text: str) -> list[str]:
    return text.strip().splitlines()[0].split()


def test_eval_prints_the_table_and_writes_json(rt2_checkpoint, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(rt2_checkpoint), "--limit", "40", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert _header(out) == list(EVAL_COLUMNS)
    record = json.loads((tmp_path / "eval_rtk-2_gloro_eps0.2_L2.json").read_text())  # named by what it holds
    assert record["guarantee"] == "rtk:2" and record["certifier"] == "gloro" and record["points"] == 40
    assert record["eps"] == pytest.approx(0.2) and record["norm"] == 2.0  # the checkpoint's radius and norm


@needs_lirpa
def test_eval_of_an_igrp_guarantee_shows_both_claims(rt2_checkpoint, tmp_path, capsys):
    guarantee = "igrp:0,5,9;1,4,7;2,3,6,8@0.02,0.06"
    code = main(["eval", "--checkpoint", str(rt2_checkpoint), "--certifier", "crown", "--guarantee", guarantee,
                 "--limit", "40", "--quiet", "--out", str(tmp_path)])  # no --eps: the guarantee's radii
    assert code == 0
    assert _header(capsys.readouterr().out) == list(IGRP_EVAL_COLUMNS)
    (path,) = tmp_path.glob("eval_igrp-*_crown_eps0.02-0.06_L2.json")
    record = json.loads(path.read_text())
    assert (record["eps_in"], record["eps_out"]) == (0.02, 0.06)
    assert record["group_verified_accuracy_out"] >= record["vra"]
    assert main(["eval", "--checkpoint", str(rt2_checkpoint), "--certifier", "crown", "--guarantee", guarantee,
                 "--eps", "0.1", "--limit", "8", "--quiet", "--out", str(tmp_path)]) == 2
    assert "carries its own radii" in capsys.readouterr().err


@needs_lirpa
def test_alpha_iterations_only_for_alpha_crown(rt2_checkpoint, tmp_path, capsys):
    args = ["eval", "--checkpoint", str(rt2_checkpoint), "--limit", "8", "--quiet", "--out", str(tmp_path),
            "--alpha-iterations", "2"]
    assert main([*args, "--certifier", "alpha-crown"]) == 0
    assert json.loads((tmp_path / "eval_rtk-2_alpha-crown_eps0.2_L2.json").read_text())["certifier"] == "alpha-crown"
    assert main([*args, "--certifier", "crown"]) == 2
    assert "--alpha-iterations applies to --certifier alpha-crown only" in capsys.readouterr().err


def test_unknown_certifier_and_guarantee_are_clear_errors(rt2_checkpoint, tmp_path, capsys):
    base = ["eval", "--checkpoint", str(rt2_checkpoint), "--limit", "8", "--quiet", "--out", str(tmp_path)]
    assert main([*base, "--certifier", "glorious"]) == 2
    assert "glorious" in capsys.readouterr().err
    assert main([*base, "--guarantee", "rtk:x"]) == 2
    assert "rtk" in capsys.readouterr().err


def test_list_names_every_registered_certifier(capsys):
    assert main(["list"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("certifiers:"))
    assert set(line.split(":", 1)[1].replace(",", " ").split()) == set(list_certifiers())

"""The ``relaxplug`` command: train -> eval (plain and IGRP tables), option checks, list."""

import json

import pytest
import torch

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
    assert record["eps"] == pytest.approx(0.2) and record["norm"] == "2"  # the checkpoint's radius and norm


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


# ---------------------------------------------------------------------------------------------
# Errors: one line on stderr naming the cause, exit code 2 (usage) or 1 (failure), no traceback
# ---------------------------------------------------------------------------------------------

import os  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from relaxplug import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, args):
    """``(exit code, stdout, stderr)`` of ``relaxplug ARGS`` run in this process."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_version_and_help(capsys):
    code, out, _ = _run(capsys, ["--version"])
    assert code == 0 and out.startswith("relaxplug ") and out.split()[1][0].isdigit()
    code, out, _ = _run(capsys, ["--help"])
    assert code == 0 and "train" in out and "--version" in out


@pytest.mark.parametrize("args, words", [
    (["eval", "--checkpoint", "x.pt", "--norm", "abc"], "norm must be 2 or inf, got 'abc'"),
    (["eval", "--checkpoint", "x.pt", "--norm", "1"], "norm must be 2 or inf, got '1'"),
    (["eval", "--checkpoint", "x.pt", "--device", "tpu"], "unknown device 'tpu'"),
    (["eval", "--checkpoint", "x.pt", "--limit", "0"], "--limit: must be a positive integer"),
    (["eval", "--checkpoint", "x.pt", "--eps", "-1"], "must be a finite radius >= 0"),
    (["eval", "--checkpoint", "x.pt", "--eps", "nan"], "must be a finite radius >= 0"),
    (["eval", "--checkpoint", "x.pt", "--certifier", "crwon"], "unknown certifier 'crwon'; known: "),
    (["compare", "--checkpoint", "x.pt", "--certifiers", "gloro,crwon"], "unknown certifier 'crwon'"),
    (["compare", "--checkpoint", "x.pt", "--certifiers", ","], "no certifier named"),
    (["attack", "--checkpoint", "x.pt", "--certifier", "glorp"], "unknown certifier 'glorp'"),
    (["groups", "--checkpoint", "x.pt", "--n-groups", "0"], "--n-groups: must be a positive integer"),
    (["train", "c.yaml", "--device", "tpu"], "unknown device 'tpu'"),
    (["eval"], "one of the arguments --checkpoint --robustbench --lirpa-model is required"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_usage_errors_are_one_line_with_exit_code_2(capsys, args, words):
    code, out, err = _run(capsys, args)
    assert code == 2 and out == ""
    line = _one_line(err)
    assert words in line and "--help" in line


def test_verbose_is_accepted_after_the_subcommand_and_shows_the_traceback(tmp_path, capsys):
    missing = tmp_path / "missing.pt"
    code, _, err = _run(capsys, ["eval", "--checkpoint", missing, "--quiet"])
    assert code == 2 and _one_line(err) == f"error: checkpoint not found: {missing}"
    code, _, err = _run(capsys, ["groups", "--checkpoint", tmp_path / "typo" / "checkpoint.pt", "--n-groups", "2"])
    assert code == 2 and "checkpoint not found" in _one_line(err)
    assert not (tmp_path / "typo").exists()  # a failed command creates no output directory
    code, _, err = _run(capsys, ["eval", "--checkpoint", missing, "-v"])
    assert code == 2 and "Traceback" in err and err.strip().endswith(f"error: checkpoint not found: {missing}")


def test_an_unexpected_error_is_one_line_marked_internal(monkeypatch, capsys):
    def broken(args):
        raise TypeError("unsupported operand type(s)\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "list", broken)
    code, _, err = _run(capsys, ["list"])
    assert code == 1
    assert _one_line(err) == "internal error (TypeError; rerun with -v for the traceback): unsupported operand type(s)"


# --- late output errors: every command checks its output before it computes anything ---------

@pytest.mark.parametrize("command", ["eval", "compare", "attack", "groups", "demo", "train"])
def test_an_output_that_is_a_file_is_refused_before_any_work(rt2_checkpoint, tmp_path, capsys, command):
    taken = tmp_path / "taken"
    taken.write_text("precious")
    args = {
        "eval": ["eval", "--checkpoint", rt2_checkpoint, "--out", taken],
        "compare": ["compare", "--checkpoint", rt2_checkpoint, "--out", taken],
        "attack": ["attack", "--checkpoint", rt2_checkpoint, "--out", taken],
        "groups": ["groups", "--checkpoint", rt2_checkpoint, "--n-groups", "2", "--out", taken],
        "demo": ["demo", "--out", taken],
        "train": ["train", REPO / "configs" / "digits_rtk2.yaml", "--set", f"out_dir={taken}"],
    }[command]
    code, out, err = _run(capsys, [*args, "--quiet"] if command != "groups" else args)
    assert code == 2 and out == ""  # nothing computed, nothing printed
    assert f"'{taken}' is an existing file, not a directory" in _one_line(err)
    assert taken.read_text() == "precious"


def test_an_unwritable_output_is_refused_before_any_work(rt2_checkpoint, capsys):
    code, out, err = _run(capsys, ["eval", "--checkpoint", rt2_checkpoint, "--out", "/proc/relaxplug-out", "--quiet"])
    assert code == 2 and out == ""
    assert "output directory '/proc/relaxplug-out' cannot be created or written" in _one_line(err)


def _file_size_limit(limit: int):
    def apply():  # a full disk, for this process only: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_one_line_exit_1_and_leaves_no_temporary(rt2_checkpoint, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "relaxplug", "eval", "--checkpoint", str(rt2_checkpoint),
                           "--limit", "8", "--quiet", "--out", str(out)],
                          preexec_fn=_file_size_limit(200), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert line.startswith("error: cannot write JSON results") and line.endswith("File too large")
    assert list(out.iterdir()) == []  # no result, no .tmp
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "relaxplug", *map(str, _train_args(run))],
                          preexec_fn=_file_size_limit(2000), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert line.startswith(f"error: cannot write checkpoint '{run / 'checkpoint.pt'}': "), line
    assert line.endswith("File too large") or "the write failed (disk full" in line, line  # never torch's internals
    assert sorted(p.name for p in run.iterdir()) == [".relaxplug.lock"]  # no checkpoint, no .tmp


# --- corrupt inputs ------------------------------------------------------------------------------

def test_a_corrupt_checkpoint_is_one_line_and_never_advises_unsafe_loading(rt2_checkpoint, tmp_path, capsys):
    data = Path(rt2_checkpoint).read_bytes()
    for name, content, words in [("empty", b"", "is empty (0 bytes)"),
                                 ("truncated", data[: len(data) // 3], "truncated or corrupt"),
                                 ("garbage", bytes(range(256)) * 8, "not a readable checkpoint")]:
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        for command in (["eval"], ["attack"], ["compare"], ["groups", "--n-groups", "2"]):
            code, out, err = _run(capsys, [*command, "--checkpoint", path, "--out", tmp_path / "o"])
            line = _one_line(err)
            assert code == 2 and words in line and str(path) in line, (command, line)
            assert "weights_only" not in err


def test_resuming_over_a_corrupt_checkpoint_points_at_no_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"\x00garbage" * 10)
    args = ["train", REPO / "configs" / "digits_rtk2.yaml", "--set", "epochs=1", "--set", "eps_ramp_epochs=1",
            "--set", "limit_train=32", "--set", f"out_dir={run}", "--quiet"]
    code, _, err = _run(capsys, args)
    assert code == 2 and "cannot resume from it: pass --no-resume to start over" in _one_line(err)
    code, out, _ = _run(capsys, [*args, "--no-resume"])
    assert code == 0 and "checkpoint:" in out


def _npz(path, labels):
    x = np.random.default_rng(0).random((len(labels), 1, 8, 8), dtype=np.float32)
    np.savez(path, x_train=x, y_train=np.array(labels), x_test=x, y_test=np.array(labels))
    return path


def test_eval_on_an_npz_takes_the_class_count_from_the_checkpoint(rt2_checkpoint, tmp_path, capsys):
    subset = _npz(tmp_path / "subset.npz", [0, 3, 8, 8, 1])  # 9 classes seen, the model has 10
    code, out, err = _run(capsys, ["eval", "--checkpoint", rt2_checkpoint, "--data", subset, "--quiet", "--out", tmp_path])
    assert code == 0, err
    assert json.loads(next(tmp_path.glob("eval_*.json")).read_text())["points"] == 5
    code, out, err = _run(capsys, ["attack", "--checkpoint", rt2_checkpoint, "--data", subset, "--steps", "2", "--restarts", "1",
                                   "--no-autoattack", "--quiet", "--out", tmp_path])
    assert code == 0, err
    beyond = _npz(tmp_path / "beyond.npz", [0, 15])
    code, _, err = _run(capsys, ["eval", "--checkpoint", rt2_checkpoint, "--data", beyond, "--quiet", "--out", tmp_path])
    assert code == 2 and "labels up to 15, but the checkpoint has 10 classes" in _one_line(err)
    raw = tmp_path / "raw.npz"
    np.savez(raw, x_train=np.full((2, 1, 8, 8), 200.0), y_train=np.array([0, 1]), x_test=np.full((2, 1, 8, 8), 200.0),
             y_test=np.array([0, 1]))
    code, _, err = _run(capsys, ["eval", "--checkpoint", rt2_checkpoint, "--data", raw, "--quiet", "--out", tmp_path])
    assert code == 2 and "must lie in [0, 1]" in _one_line(err)


# --- vacuous results -----------------------------------------------------------------------------

def test_compare_where_nothing_could_be_measured_fails(rt2_checkpoint, tmp_path, capsys):
    code, out, err = _run(capsys, ["compare", "--checkpoint", rt2_checkpoint, "--certifiers", "gloro", "--norm", "inf",
                                   "--limit", "4", "--quiet", "--out", tmp_path])
    assert code == 1
    assert err.strip().splitlines()[-1] == "error: no certifier could run (gloro skipped): nothing was measured"
    assert "warning: gloro skipped: certifier 'gloro' supports norms ['2'], got inf" in err
    assert not (tmp_path / "compare.json").exists()


def test_eval_results_are_named_by_what_they_hold(rt2_checkpoint, tmp_path, capsys):
    for eps in ("0.1", "0.2"):
        assert _run(capsys, ["eval", "--checkpoint", rt2_checkpoint, "--eps", eps, "--limit", "4", "--quiet", "--out", tmp_path])[0] == 0
    names = sorted(p.name for p in tmp_path.glob("eval_*.json"))
    assert names == ["eval_rtk-2_gloro_eps0.1_L2.json", "eval_rtk-2_gloro_eps0.2_L2.json"]  # nothing overwritten


# --- training: one run per output directory, divergence, config types, logs --------------------

def _train_args(out_dir, *extra):
    return ["train", REPO / "configs" / "digits_rtk2.yaml", "--set", "epochs=2", "--set", "eps_ramp_epochs=1",
            "--set", "limit_train=64", "--set", f"out_dir={out_dir}", "--quiet", *extra]


def test_a_second_run_on_a_directory_in_use_is_refused_and_the_first_is_kept(tmp_path, capsys):
    out = tmp_path / "shared"
    first = subprocess.Popen([sys.executable, "-m", "relaxplug", "train", str(REPO / "configs" / "digits_standard.yaml"),
                              "--set", "epochs=15", "--set", "eps_ramp_epochs=1", "--set", "limit_train=32",
                              "--set", f"out_dir={out}", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # until the first run holds the directory and has finished an epoch
            if (out / "metrics.jsonl").exists() or first.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        assert first.poll() is None, first.communicate()
        code, out_text, err = _run(capsys, _train_args(out))  # digits_rtk2 into the same directory
        assert code == 1 and out_text == ""
        assert _one_line(err) == (f"error: output directory '{out}' is in use by another relaxplug run (pid {first.pid}); "
                                  "wait for it or choose another out_dir")
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    from relaxplug.models.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint.pt").metadata["config"]["name"] == "digits_standard"


def test_non_finite_training_stops_with_an_error_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    # two batches per epoch; the learning rate jumps to 1e30 after half the run: epoch 3's loss is infinite
    code, _, err = _run(capsys, ["train", REPO / "configs" / "digits_rtk2.yaml", "--set", "epochs=4", "--set", "eps_ramp_epochs=1",
                                 "--set", "limit_train=128", "--set", "lr=1e-3 -> 1e30 after half", "--set", f"out_dir={out}",
                                 "--quiet"])
    assert code == 1
    line = _one_line(err)
    assert line.startswith("error: training diverged at epoch 3, batch ")
    assert f"the last good checkpoint (epoch 2) is kept: {out / 'checkpoint.pt'}" in line
    from relaxplug.models.checkpoint import load_checkpoint

    kept = load_checkpoint(out / "checkpoint.pt")
    assert kept.metadata["epoch"] == 2
    assert all(bool(torch.isfinite(p).all()) for p in kept.model.parameters())
    assert [json.loads(row)["epoch"] for row in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("override, words", [
    ('seed="abc"', "seed must be an integer, got 'abc'"),
    ("name=null", "name must be a string, got None"),
    ("dataset_options=5", "dataset_options must be a mapping of keys to values, got 5"),
    ("limit_train=0", "limit_train must be an integer >= 1, got 0"),
    ('sets="abc"', "sets must be a list of class-index lists or null, got 'abc'"),
    ("eps=.inf", "eps must be a finite number >= 0, got inf"),
    ("lr=-1", "lr must be a finite number > 0 (or a schedule between two), got -1"),
    ('lr="1e-3 -> 0"', "lr must be a finite number > 0 (or a schedule between two), got '1e-3 -> 0'"),
    ("lr=abc", "lr: cannot parse schedule 'abc'"),
    ("optimizer.momentum=1.5", "optimizer.momentum must be in [0, 1), got 1.5"),
    ("norm=abc", "norm must be 2 or inf, got 'abc'"),
    ("device=tpu", "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
    ("sets=[1,", "--set sets=[1,: the value is not valid YAML"),
    ("guarantee=superclass:imagenet", "'superclass:imagenet': no built-in grouping of that name (built-in: cifar10, cifar100)"),
    ("guarantee=superclass:cifar100", "class index 30, out of range for 10 classes"),
])
def test_config_errors_name_the_key_and_the_value(tmp_path, capsys, override, words):
    code, out, err = _run(capsys, [*_train_args(tmp_path / "run"), "--set", override])
    assert code == 2 and out == ""
    assert words in _one_line(err)


@pytest.mark.parametrize("content, words", [
    (b"", "is empty: give at least the keys to change"),
    (b"# only a comment\n", "is empty: give at least the keys to change"),
    (b"name: [a\nb: 1\n", "is not valid YAML: expected ',' or ']', but got ':' at line 2, column 2"),
    (b"\x80\x02\x8a\nPK\x03\x04 binary", "is not a text file (a config is UTF-8 YAML)"),
    (b"- a list\n", "a config is a mapping of keys to values, got list"),
])
def test_a_broken_config_file_is_named(tmp_path, capsys, content, words):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    code, out, err = _run(capsys, ["train", path, "--quiet"])
    assert code == 2 and out == ""
    line = _one_line(err)
    assert str(path) in line and words in line


def test_a_shortened_run_clips_the_eps_ramp_and_leaves_its_history(tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, err = _run(capsys, ["train", REPO / "configs" / "digits_rtk2.yaml", "--set", "epochs=2", "--set", "limit_train=64",
                                       "--set", f"out_dir={out}", "--quiet", "--device", "cpu"])  # the config ramps eps over 30 epochs
    assert code == 0
    assert _one_line(err) == "warning: eps_ramp_epochs=30 is longer than the run (2 epochs): clipped to 2"
    table = printed.splitlines()[1:5]  # a table, not a Python dict
    assert table[0].split()[:2] == ["epoch", "lr"] and set(table[1]) == {"-", " "}
    assert [row.split()[0] for row in table[2:]] == ["1", "2"] and "{" not in printed
    records = [json.loads(row) for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and [r["eps"] for r in records] == [pytest.approx(0.15), pytest.approx(0.3)]
    assert (out / "train.log").read_text().splitlines()[2:] == table[2:]
    from relaxplug.models.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoint.pt").metadata["config"]["device"] == "cpu"  # train --device


def test_an_attack_at_eps_zero_is_refused_as_vacuous(rt2_checkpoint, tmp_path, capsys):
    code, out, err = _run(capsys, ["attack", "--checkpoint", rt2_checkpoint, "--eps", "0", "--limit", "5", "--steps", "2",
                                   "--no-autoattack", "--quiet", "--out", tmp_path])
    assert code == 2 and out == ""
    assert "attack at eps 0: a ball of radius 0 is one point" in _one_line(err)
    assert not list(tmp_path.glob("attack*.json"))

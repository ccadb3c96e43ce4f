"""The command line's contract with its documentation: every subcommand's ``--help`` works, and
every ``relaxplug`` command shown in the README and ``docs/`` runs as written (shortened with
tiny limits so the suite stays fast) in a fresh directory, after the commands the docs show
before it.

A command added to, changed in or removed from the docs without this table following fails
``test_every_documented_command_is_covered``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from relaxplug.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: documented command -> the arguments appended to shorten it (epochs, points, steps)
SHORTENED: dict[str, list[str]] = {
    "relaxplug list": [],
    "relaxplug train configs/digits_rtk2.yaml --set epochs=40 --set out_dir=runs/rt2":
        ["--set", "epochs=2", "--set", "limit_train=64", "--quiet"],
    "relaxplug train configs/digits_natural.yaml --set architecture=mlp --set out_dir=runs/digits_natural_mlp":
        ["--set", "epochs=2", "--set", "limit_train=64", "--quiet"],
    "relaxplug eval --checkpoint runs/rt2/checkpoint.pt --certifier gloro --guarantee rtk:2 --eps 0.3":
        ["--limit", "20", "--quiet"],
    "relaxplug eval --checkpoint runs/rt2/checkpoint.pt --certifier crown --norm inf --eps 0.01 --radius 8":
        ["--limit", "2", "--quiet"],
    "relaxplug compare --checkpoint runs/rt2/checkpoint.pt --certifiers gloro,ibp,crown-ibp,crown":
        ["--limit", "8", "--quiet"],
    "relaxplug attack --checkpoint runs/rt2/checkpoint.pt --certifier gloro":
        ["--limit", "4", "--steps", "5", "--autoattack-fast", "--quiet"],
    "relaxplug groups --checkpoint runs/digits_natural_mlp/checkpoint.pt --n-groups 3": [],
    "relaxplug groups --checkpoint runs/digits_natural_mlp/checkpoint.pt --n-groups 3 --out runs/digits_natural_mlp": [],
    "relaxplug demo --out out/demo": ["--epochs", "1", "--synthetic-epochs", "1", "--quiet"],
    "relaxplug compare --checkpoint out/demo/digits_rtk2/checkpoint.pt": ["--limit", "8", "--quiet"],
    "relaxplug compare --checkpoint out/igrp_digits/igrp/checkpoint.pt --certifiers ibp,crown-ibp,crown,alpha-crown":
        ["--limit", "4", "--quiet"],
    "relaxplug attack --checkpoint out/igrp_digits/igrp/checkpoint.pt --certifier crown-ibp":
        ["--limit", "4", "--steps", "5", "--quiet"],
    "relaxplug eval --lirpa-model crown-ibp/cnn_2layer --lirpa-checkpoint ex/model.pth --data digits "
    "--certifier crown-ibp --norm inf --eps 0.05 --guarantee rtk:2 --quiet --out out_lirpa": ["--limit", "16"],
    "relaxplug eval --robustbench Standard --threat-model L2 --model-dir models": [],
}

#: documented commands whose documented outcome is an error: command -> (exit code, stderr line start)
FAILS_AS_DOCUMENTED: dict[str, tuple[int, str]] = {
    "relaxplug eval --robustbench Standard --threat-model L2 --model-dir models":
        (2, "error: RobustBench checkpoint for 'Standard' (cifar10, L2) not found: expected 'models/cifar10/L2/Standard.pt'"),
}

#: documented commands run elsewhere, with where (they need files only those tests write)
RUN_ELSEWHERE: dict[str, str] = {
    "relaxplug eval --robustbench Sehwag2021Proxy_R18 --dataset cifar10 --threat-model L2 --model-dir models "
    "--certifier crown-ibp --guarantee affinity:vehicles.yaml --data cifar_small.npz --eps 0 --quiet --out out":
        "tests/zoo/test_robustbench_models.py writes a random-weight Sehwag2021Proxy_R18 and runs this command",
}

#: example scripts the docs run before commands that read their outputs (their --fast mode)
EXAMPLES = {
    "out/igrp_digits": ["examples/igrp_digits.py", "--fast", "--out", "out/igrp_digits", "--quiet"],
    "ex": ["examples/certify_lirpa_model.py", "--fast", "--out", "ex"],
}


def documented_commands() -> list[str]:
    """``relaxplug ...`` lines of the fenced code blocks in the README and docs/, in order."""
    found: list[str] = []
    for page in DOCS:
        fenced = False
        pending = ""
        for raw in page.read_text().splitlines():
            if raw.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if not fenced:
                continue
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1].strip() + " "
                continue
            line = re.sub(r"^\$\s+", "", line)
            if line.startswith("relaxplug "):
                command = " ".join(line.split("#", 1)[0].split())
                if command not in found:
                    found.append(command)
    return found


def test_every_documented_command_is_covered():
    documented = set(documented_commands())
    covered = set(SHORTENED) | set(RUN_ELSEWHERE)
    assert documented - covered == set(), "documented commands this test does not run"
    assert covered - documented == set(), "commands this test runs that the docs no longer show"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        from relaxplug.cli import build_parser

        build_parser().parse_args([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: relaxplug {command}") and "-v, --verbose" in out
    assert main([command, "--help"]) == 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A fresh directory with the repository's configs; the docs' commands run in it."""
    root = tmp_path_factory.mktemp("contract")
    (root / "configs").symlink_to(REPO / "configs")
    cwd = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(cwd)


def _prerequisites(command: str, ran: dict[str, int], capsys) -> None:
    """Run what the docs run before ``command``: the documented commands or examples writing its inputs."""
    for path in re.findall(r"--(?:checkpoint|lirpa-checkpoint) (\S+)", command):
        example = next((script for prefix, script in EXAMPLES.items() if path.startswith(prefix + "/")), None)
        if example is not None:
            if not Path(path).exists():
                done = subprocess.run([sys.executable, str(REPO / example[0]), *example[1:]], capture_output=True,
                                      text=True, timeout=600)
                assert done.returncode == 0, f"{' '.join(example)} failed: {done.stderr[-2000:]}"
            continue
        if Path(path).exists():
            continue
        parent = str(Path(path).parent)
        producers = [c for c in SHORTENED if re.search(rf"out_dir={re.escape(parent)}(\s|$)", c)
                     or (c.startswith("relaxplug demo --out ") and path.startswith(c.split()[-1] + "/"))]
        assert producers, f"no documented command writes {path}"
        for producer in producers:
            _run_documented(producer, ran, capsys)


def _run_documented(command: str, ran: dict[str, int], capsys) -> tuple[int, str, str]:
    if command in ran:
        return ran[command]
    _prerequisites(command, ran, capsys)
    code = main([*shlex.split(command)[1:], *SHORTENED[command]])
    captured = capsys.readouterr()
    ran[command] = (code, captured.out, captured.err)
    return ran[command]


@pytest.fixture(scope="module")
def ran():
    return {}


@pytest.mark.parametrize("command", list(SHORTENED), ids=lambda c: c[10:60])
def test_documented_command_works_as_written(workspace, ran, capsys, command):
    code, out, err = _run_documented(command, ran, capsys)
    if command in FAILS_AS_DOCUMENTED:
        expected_code, start = FAILS_AS_DOCUMENTED[command]
        assert code == expected_code and err.strip().startswith(start), err
        assert len(err.strip().splitlines()) == 1
        return
    assert code == 0, err
    assert "Traceback" not in err
    if "--out" in command or "out_dir=" in command:
        target = re.search(r"(?:--out |out_dir=)(\S+)", command).group(1)
        assert Path(target).is_dir() and any(Path(target).iterdir()), f"{command} wrote nothing to {target}"

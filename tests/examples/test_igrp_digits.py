"""The IGRP example runs end to end (``--fast``): groups, three trainings, certificates that
survive attacks, and the files it promises."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("relaxplug.certifiers.lirpa", reason="auto_LiRPA is not installed", exc_type=ImportError)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "igrp_digits.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("igrp_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fast_run(tmp_path, capsys):
    example = _load_example()
    threads = torch.get_num_threads()
    try:  # the example sets one torch thread (its default)
        records = example.main(["--fast", "--quiet", "--out", str(tmp_path), "--no-inner-baseline", "--n-groups", "3"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    groups = results["groups"]
    assert len(groups) == 3 and sorted(c for g in groups for c in g) == list(range(10))
    assert printed.count("group ") >= 3 and "group_verified_accuracy_out" in printed
    assert [r["model"] for r in records] == ["natural", "igrp", "crown-ibp@eps_out"]
    for record in results["records"]:
        assert record["broken_in"] == 0 and record["broken_out"] == 0  # sound under attack
        for key in ("clean_accuracy", "verified_accuracy_in", "group_verified_accuracy_out", "igrp_verified_accuracy"):
            assert 0.0 <= record[key] <= 1.0
        assert record["igrp_verified_accuracy"] <= min(record["verified_accuracy_in"], record["group_verified_accuracy_out"]) + 1e-9
        assert record["verified_accuracy_in"] <= record["clean_accuracy"] + 1e-9
        assert sum(g["points"] for g in record["per_group"]) == results["points"]
    assert results["records"][0]["clean_accuracy"] > 0.3  # the natural net learned something
    assert (tmp_path / "similarity.png").read_bytes()[:4] == b"\x89PNG"
    assert "sets" in (tmp_path / "groups.yaml").read_text()

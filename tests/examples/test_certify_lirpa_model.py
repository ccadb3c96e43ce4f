"""examples/certify_lirpa_model.py in fast mode: trains a CROWN-IBP CNN with IBP on digits, saves it
in CROWN-IBP's format, loads it back and certifies it with IBP, CROWN-IBP and CROWN."""

import importlib.util

import pytest
import torch

from ._runner import has_docstring, load_example, one_thread

pytestmark = pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is None, reason="needs auto_LiRPA")


def test_fast_run(tmp_path):
    example = load_example("certify_lirpa_model")
    assert has_docstring(example)
    with one_thread():
        result = example.main(["--fast", "--out", str(tmp_path)])
    saved = torch.load(tmp_path / "model.pth", weights_only=True)
    assert isinstance(saved["state_dict"], list) and saved["epoch"] == 2  # CROWN-IBP's layout
    assert result["model"]["source"] == "crown-ibp" and result["model"]["architecture"] == "crown-ibp/cnn_2layer"
    records = result["records"]
    assert [(r["certifier"], r["guarantee"].split(":")[0]) for r in records] == [
        (c, g) for c in ("ibp", "crown-ibp", "crown") for g in ("standard", "rtk", "affinity")]
    for record in records:
        assert record["points"] == 16 and record["broken"] == 0
    by = {(r["certifier"], r["guarantee"].split(":")[0]): r for r in records}
    for certifier in ("ibp", "crown-ibp", "crown"):  # relaxations certify at least as much
        assert by[(certifier, "rtk")]["rejection_rate"] <= by[(certifier, "standard")]["rejection_rate"]
        assert by[(certifier, "affinity")]["rejection_rate"] <= by[(certifier, "standard")]["rejection_rate"]

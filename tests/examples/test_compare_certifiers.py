"""examples/compare_certifiers.py in fast mode: GloRo vs IBP vs CROWN-IBP on one digits model."""

import importlib.util
import json

import pytest

from ._runner import has_docstring, load_example, one_thread

pytestmark = pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is None, reason="needs auto_LiRPA")


def test_fast_run(tmp_path, capsys):
    example = load_example("compare_certifiers")
    assert has_docstring(example)
    with one_thread():
        result = example.main(["--fast", "--out", str(tmp_path)])
    assert [r.certifier for r in result.records] == ["gloro", "ibp", "crown-ibp"]
    assert all(r.points == 8 and 0.0 <= r.vra <= r.clean_accuracy for r in result.records)
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert set(saved["certified_not"]) == {"gloro", "ibp", "crown-ibp"}
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "certified by row, not by column" in capsys.readouterr().out

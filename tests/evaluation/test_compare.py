"""compare_certifiers: records per certifier, disagreement counts, table, JSON and PNG output."""

import json
import math

import pytest
import torch
from torch import nn

from relaxplug.evaluation.compare import ComparisonResult, compare_certifiers, format_table, save
from relaxplug.models.layers import MinMax

pytest.importorskip("relaxplug.certifiers.lirpa", reason="auto_LiRPA is not installed", exc_type=ImportError)
from relaxplug.certifiers.base import CERTIFIERS  # noqa: E402


def _setup(n_points=40):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), MinMax(), nn.Linear(16, 5))
    x = torch.randn(n_points, 4)
    y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 5  # some wrong labels
    return model, x, y


def test_records_and_disagreements_are_consistent():
    model, x, y = _setup()
    result = compare_certifiers(model, x, y, "rtk:2", 0.1, 2, batch_size=16, progress=False)
    assert isinstance(result, ComparisonResult)
    names = [r.certifier for r in result.records]
    assert names == ["gloro", "ibp", "crown-ibp", "crown"]
    accuracy = float((model(x).argmax(1) == y).float().mean())
    for record in result.records:
        assert record.points == 40 and record.eps == 0.1 and record.norm == "2" and record.guarantee == "RTK(2)"
        assert 0 <= record.vra <= 1  # (RTK: may exceed clean accuracy, the label only needs to be in the set)
        assert record.clean_accuracy == pytest.approx(accuracy)
        assert record.rejection_rate == pytest.approx(1 - record.certified / 40)
        assert record.seconds > 0
        assert math.isfinite(record.peak_memory_mb_per_instance) and record.peak_memory_mb_per_instance >= 0
    masks = result.certified_masks
    for a in names:
        assert result.certified_not[a][a] == 0
        for b in names:
            assert result.certified_not[a][b] == int((masks[a] & ~masks[b]).sum())
    assert result.record("crown").certified > 0
    assert "cpu" in result.memory_method


def test_batches_do_not_change_the_outcome():
    model, x, y = _setup()
    whole = compare_certifiers(model, x, y, "standard", 0.1, 2, certifiers=("gloro", "crown"), batch_size=64, progress=False)
    split = compare_certifiers(model, x, y, "standard", 0.1, 2, certifiers=("gloro", "crown"), batch_size=7, progress=False)
    for a, b in zip(whole.records, split.records):
        assert (a.certifier, a.certified, a.vra) == (b.certifier, b.certified, b.vra)
    assert whole.batch_size == 40 and split.batch_size == 7


def test_unsupported_norm_and_unknown_certifiers_are_skipped_with_a_note():
    model, x, y = _setup(12)
    result = compare_certifiers(model, x, y, "standard", 0.05, "inf", certifiers=("gloro", "ibp", "nope"), progress=False)
    assert [r.certifier for r in result.records] == ["ibp"]
    assert "supports norms" in result.skipped["gloro"]
    assert "unknown certifier" in result.skipped["nope"]
    text = format_table(result)
    assert "skipped gloro" in text and "skipped nope" in text


def test_instances_are_labelled_by_spec_mode():
    model, x, y = _setup(12)
    result = compare_certifiers(model, x, y, "rtk:2", 0.05, 2,
                                certifiers=(CERTIFIERS.create("crown"), CERTIFIERS.create("crown", spec="logit")),
                                progress=False)
    assert [r.certifier for r in result.records] == ["crown", "crown[logit]"]
    assert result.certified_not["crown[logit]"]["crown"] == 0  # pairwise is at least as tight


def test_table_json_and_png(tmp_path):
    model, x, y = _setup(16)
    result = compare_certifiers(model, x, y, "affinity:0,1;2,3,4", 0.1, 2, certifiers=("gloro", "crown-ibp"), progress=False)
    text = format_table(result)
    for word in ("certifier", "VRA", "ms / instance", "peak MB / instance", "gloro", "crown-ibp", "certified by row"):
        assert word in text
    out = save(result, tmp_path / "cmp")
    data = json.loads((out / "compare.json").read_text())
    assert [r["certifier"] for r in data["records"]] == ["gloro", "crown-ibp"]
    assert data["certified_not"]["gloro"]["crown-ibp"] == result.certified_not["gloro"]["crown-ibp"]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_raise():
    model, x, y = _setup(8)
    with pytest.raises(ValueError, match="labels"):
        compare_certifiers(model, x, y[:4], "standard", 0.1, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        compare_certifiers(model, x, y, "standard", 0.1, batch_size=0, progress=False)

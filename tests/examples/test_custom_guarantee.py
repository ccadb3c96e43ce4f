"""examples/custom_guarantee.py in fast mode: a user-written adapter, registered by name,
certified with GloRo and checked against brute force inside the script."""

import torch

import relaxplug as rp

from ._runner import has_docstring, load_example, one_thread


def test_fast_run(tmp_path):
    example = load_example("custom_guarantee")
    assert has_docstring(example)
    with one_thread():
        summary = example.main(["--fast", "--out", str(tmp_path)])
    results = summary["results"]
    assert results["standard"]["certified"] <= results["safe-topk:3"]["certified"] <= results["rtk:3"]["certified"]
    assert results["safe-topk:3"]["certified"] > 0  # the fast run certifies something at eps 0.05
    assert summary["broken"] == []  # every claim of its certificates attacked, none broken


def test_adapter_rejects_sets_with_a_forbidden_pair():
    example = load_example("custom_guarantee")
    assert "safe-topk" in rp.list_guarantees()
    spec = rp.resolve_guarantee("safe-topk:3", sets=[[0, 1]])
    order = torch.tensor([[0, 1, 2, 3], [0, 2, 1, 3], [2, 3, 0, 1]])
    # row 0: {0, 1} mixes the pair from k = 2; row 1: from k = 3; row 2: never within K = 3
    assert spec.accept(order).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert type(spec).__name__ == example.SafeTopK.__name__

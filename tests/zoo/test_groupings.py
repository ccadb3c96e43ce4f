"""Built-in class groupings usable as ``affinity:`` / ``superclass:`` sets."""

import pytest
import torch

import relaxplug as rp
from relaxplug.data import CIFAR10_CLASS_NAMES, CIFAR100_COARSE, GROUPINGS


def test_cifar10_vehicles_and_animals():
    vehicles, animals = GROUPINGS["cifar10"]
    assert [CIFAR10_CLASS_NAMES[i] for i in vehicles] == ["airplane", "automobile", "ship", "truck"]
    assert sorted(vehicles + animals) == list(range(10))
    spec = rp.resolve_guarantee("affinity:cifar10")
    assert spec.sets == GROUPINGS["cifar10"] or [tuple(s) for s in spec.sets] == list(GROUPINGS["cifar10"])


def test_cifar100_superclasses_are_a_partition():
    assert GROUPINGS["cifar100"] is CIFAR100_COARSE
    assert sorted(i for group in CIFAR100_COARSE for i in group) == list(range(100))
    for spec in ("affinity:cifar100", "superclass:cifar100", "superclass:CIFAR100"):
        assert len(rp.resolve_guarantee(spec).sets) == 20


@pytest.mark.parametrize("name", ["affinity:cifar10", "superclass:cifar10"])
def test_builtin_grouping_certifies_within_a_group(name):
    """Logits whose top two classes are both vehicles: a vehicles-vs-animals certificate accepts
    the pair {automobile, truck} even where top-1 alone is not certified."""
    logits = torch.full((1, 10), -5.0)
    logits[0, 1], logits[0, 9] = 3.0, 2.99  # automobile ~ truck, animals far below
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(10))
    x = logits.clone()
    standard = rp.certify(model, x, 0.1, 2, "gloro", "standard")
    relaxed = rp.certify(model, x, 0.1, 2, "gloro", name)
    assert not standard.certified.item()
    assert relaxed.certified.item() and relaxed.k.item() == 2
    assert relaxed.classes[0].nonzero().flatten().tolist() == [1, 9]

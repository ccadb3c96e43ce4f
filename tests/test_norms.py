"""One Norm type: parsed once, printed once, one JSON representation."""

import json
import math

import pytest

from relaxplug.norms import Norm


@pytest.mark.parametrize("given, value", [("2", 2.0), ("l2", 2.0), ("L2", 2.0), (2, 2.0), (2.0, 2.0),
                                          ("inf", math.inf), ("Linf", math.inf), ("l_inf", math.inf),
                                          (math.inf, math.inf)])
def test_parse(given, value):
    norm = Norm(given)
    assert norm == value and isinstance(norm, float) and Norm(norm) is norm


@pytest.mark.parametrize("given", ["1", 1, 3.0, "abc", "", None, True, [2]])
def test_unsupported_norms_are_refused_naming_the_supported_ones(given):
    with pytest.raises(ValueError, match="norm must be 2 or inf"):
        Norm(given)


def test_one_spelling():
    assert str(Norm(2)) == Norm(2.0).name == Norm("l2").to_json() == "2"
    assert str(Norm("inf")) == Norm(math.inf).to_json() == "inf"
    assert json.loads(json.dumps({"norm": Norm("inf").to_json()})) == {"norm": "inf"}
    assert repr(Norm(2)) == "Norm('2')"

import math

import pytest

from relaxplug.training.schedules import Schedule, parse_schedule


def test_after_half_exponential_decay():
    s = parse_schedule("1e-3 -> 1e-6 after half")
    assert s == Schedule(1e-3, 1e-6, "exp", "after_half")
    assert s(0, 101) == pytest.approx(1e-3)
    assert s(50, 101) == pytest.approx(1e-3)
    assert s(75, 101) == pytest.approx(math.sqrt(1e-3 * 1e-6))
    assert s(100, 101) == pytest.approx(1e-6)


def test_log_half_reaches_end_at_half_and_is_concave():
    s = parse_schedule("0.01 -> 1.2 log half")
    assert s(0, 21) == pytest.approx(0.01)
    assert s(10, 21) == pytest.approx(1.2)
    assert s(20, 21) == pytest.approx(1.2)
    first, second = s(2, 21) - s(0, 21), s(10, 21) - s(8, 21)
    assert first > second > 0  # increases at a decreasing rate


def test_linear_full_and_half():
    assert parse_schedule("1.0 -> 1.2")(5, 11) == pytest.approx(1.1)
    assert parse_schedule("1.0 -> 10.0 half")(5, 11) == pytest.approx(10.0)
    assert parse_schedule("1.0 -> 10.0 half")(0, 11) == pytest.approx(1.0)


def test_constants_and_errors():
    assert parse_schedule(0.5)(3, 10) == 0.5
    assert parse_schedule("2e-4")(0, 1) == 2e-4
    with pytest.raises(ValueError, match="cannot parse"):
        parse_schedule("fast then slow")

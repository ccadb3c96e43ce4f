"""Registry: scoped registration for tests."""

import pytest

from relaxplug.registry import Registry


def test_registered_is_scoped_and_refuses_taken_names():
    registry: Registry[int] = Registry("thing")
    registry.add("one", lambda: 1)
    with registry.registered("two", lambda: 2):
        assert registry.create("two") == 2 and registry.names() == ["one", "two"]
    assert "two" not in registry and registry.names() == ["one"]
    with pytest.raises(ValueError, match="already registered"):
        with registry.registered("one", lambda: 3):
            pass
    assert registry.create("one") == 1  # a refused scope leaves the existing entry alone


def test_registered_removes_the_entry_when_the_block_raises():
    registry: Registry[int] = Registry("thing")
    with pytest.raises(RuntimeError):
        with registry.registered("boom", lambda: 0):
            raise RuntimeError("inside")
    assert "boom" not in registry

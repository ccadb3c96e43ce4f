"""A user module whose attribute a model reads (tests/global_state.py)."""

GAIN = 1.0

"""Certified training (GloRo-instrumented) and checkpoints."""

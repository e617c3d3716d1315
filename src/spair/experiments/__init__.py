"""Experiments: one module per experiment of the paper, plus the demo."""

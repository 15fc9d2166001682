"""Shared test helpers: tiny seeded checkpoints and the transformers oracle (checkpoints.py)."""

"""Benchmarks: run ``python -m benchmarks.runtime`` (see README)."""

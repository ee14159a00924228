"""Benchmarks: ``python -m benchmarks`` (side by side with the peers), ``benchmarks.schedulers``
and ``benchmarks.backends`` (see README)."""

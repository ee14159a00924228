"""``python -m benchmarks``: the side-by-side run (see benchmarks/side_by_side.py)."""

from .side_by_side import main

main()

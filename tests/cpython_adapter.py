"""ClusterExecutor, constructed the way CPython's futures suite constructs a
ProcessPoolExecutor (``mp_context`` positional or keyword)."""

from __future__ import annotations

from typing import Any

from clustermgr.executor import ClusterExecutor


class ClusterProcessPool(ClusterExecutor):
    """``ProcessPoolExecutor(max_workers, mp_context, initializer, initargs, *,
    max_tasks_per_child)`` on clustermgr's local workers."""

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Any = None, initargs: tuple = (), *,
                 max_tasks_per_child: int | None = None) -> None:
        super().__init__(max_workers, mp_context=mp_context, initializer=initializer,
                         initargs=initargs, max_tasks_per_child=max_tasks_per_child)

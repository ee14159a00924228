"""Watching processes that are not children of the test process (remote workers, the
children of workers, workers of a master subprocess)."""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Iterator


class Watch:
    def __init__(self, fds: list[int]) -> None:
        self.fds = fds

    def all_gone(self, timeout: float) -> bool:
        """True once every watched process has exited (each within *timeout* s)."""
        return all(select.select([fd], [], [], timeout)[0] for fd in self.fds)


@contextlib.contextmanager
def watch(pids: list[int]) -> Iterator[Watch]:
    """Open a pidfd per process *before* acting, so a recycled pid cannot fool the wait."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass  # already gone
    try:
        yield Watch(fds)
    finally:
        for fd in fds:
            os.close(fd)

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


def until(check, timeout: float = 60.0, every: float = 0.1) -> None:
    """Wait until *check()* is true: for a state only polling can see (a scheduler's
    queue, an adapt's counts); fails the test after *timeout* seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {check}"
        time.sleep(every)

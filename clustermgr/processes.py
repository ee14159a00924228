"""Ending processes we own: SIGTERM, a grace period, then SIGKILL for what is left.

Who calls it: a leaving worker for its descendants (``worker/loop.end_descendants``), the
local manager for a dead worker's marked leftovers (``managers/local.end_leftovers``), and
a session daemon for the command of ``clustermgr run --exec`` when the session ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import psutil


def stop_processes(procs: Iterable[psutil.Process], grace: float) -> None:
    """SIGTERM each of *procs*, wait up to *grace* seconds, SIGKILL those still there."""
    procs = list(procs)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def with_descendants(pid: int) -> list[psutil.Process]:
    """The process *pid* and everything it started ([] once it is gone)."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []

"""Shared fixtures.  Every test is checked for leaked processes: after it, the test
process may have no children except the live workers of the current cluster."""

from __future__ import annotations

import os
import time

import psutil
import pytest

import clustermgr as cm
from clustermgr.master import MasterNode
from clustermgr.transport import current_node


def live_worker_pids() -> set[int]:
    node = current_node()
    if not isinstance(node, MasterNode):
        return set()
    pids = set()
    for w in node.workers.values():
        handle = w.launch.handle if w.launch else None
        proc = getattr(handle, "proc", None)
        if w.state != "dead":
            pids.add(proc.pid if proc is not None else w.pid)  # w.pid: hand-started workers
            pids.add(getattr(handle, "helper_pid", 0))  # a fork server lives while its workers do
    return pids


def leaked_children(allowed: set[int], wait: float = 10.0) -> list[psutil.Process]:
    """Children other than *allowed* still running after *wait* seconds."""
    deadline = time.monotonic() + wait
    while True:
        extra = []
        for child in psutil.Process().children(recursive=True):
            try:
                if child.pid not in allowed and child.status() != psutil.STATUS_ZOMBIE:
                    extra.append(child)
            except psutil.NoSuchProcess:
                pass
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)  # polling a process table: there is no event to await


@pytest.fixture(autouse=True)
def no_leaked_processes():
    yield
    leaked = leaked_children(live_worker_pids())
    for proc in leaked:
        proc.kill()
    assert not leaked, f"the test leaked processes: {[p.cmdline() for p in leaked]}"


@pytest.fixture
def cluster():
    """Two live workers, [2, 3]: reused from the previous test when it left them healthy."""
    if cm.workers() != [2, 3]:
        cm.shutdown()
        assert cm.addprocs(2) == [2, 3]
    yield [2, 3]


@pytest.fixture(scope="session", autouse=True)
def _shutdown_at_end():
    yield
    cm.shutdown()


@pytest.fixture
def fresh():
    """A clean master for tests that configure it or kill its workers."""
    cm.shutdown()
    yield
    cm.shutdown()
    cm.configure(heartbeat_interval=1.0, heartbeat_timeout=30.0, master_grace=60.0,
                 output="print", cookie=None, bind="127.0.0.1", encrypt=None)


def pid_of(wid: int) -> int:
    return cm.remotecall_fetch(os.getpid, wid)

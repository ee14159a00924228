"""Shared fixtures.  Every test is checked for leaked processes: after it, the test
process may have no children except the live workers of the current cluster; and for
leaked shared memory: no segment of a process that has ended may be left in /dev/shm."""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time

import psutil
import pytest

import clustermgr as cm
from clustermgr import shm
from clustermgr.master import MasterNode
from clustermgr.transport import current_node

#: Batch managers' default log folders go here during the tests, not under the home folder.
JOB_LOGS = os.environ.setdefault("CLUSTERMGR_LOG_DIR", tempfile.mkdtemp(prefix="clustermgr-test-jobs-"))

#: Long-lived helpers a test module started on purpose (a multiprocessing Manager):
#: not leaks while they run.
HELPER_PIDS: set[int] = set()
#: Set by a test module whose tasks start long-lived processes on purpose (joblib's suite
#: runs loky inside our workers): those descend from a live worker, which ends them when it
#: leaves (tests/test_cluster.py checks that), so they are not counted here.
ALLOW_WORKER_DESCENDANTS = False


def multiprocessing_helpers() -> set[int]:
    """multiprocessing's own helpers (its resource tracker, its fork server) live until
    the interpreter exits: not leaks of ours."""
    import multiprocessing.forkserver as fs
    import multiprocessing.resource_tracker as rt

    pids = {getattr(rt._resource_tracker, "_pid", None) or 0,
            getattr(fs._forkserver, "_forkserver_pid", None) or 0}
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    if loky is not None:  # loky keeps its executor and resource tracker for reuse
        from joblib.externals.loky.backend import resource_tracker as lrt

        pids.add(getattr(lrt._resource_tracker, "_pid", None) or 0)
        executor = getattr(loky, "_executor", None)
        pids.update(getattr(executor, "_processes", None) or {})
    return pids


def live_worker_pids() -> set[int]:
    node = current_node()
    if not isinstance(node, MasterNode):
        return HELPER_PIDS | multiprocessing_helpers()
    pids = HELPER_PIDS | multiprocessing_helpers()
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
            return [p for p in extra if _running(p)]  # one that ended meanwhile is no leak
        time.sleep(0.05)  # polling a process table: there is no event to await


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def no_leaked_processes():
    yield
    gc.collect()  # objects whose finalizers end processes (a Manager's server) go first
    allowed = live_worker_pids()
    if ALLOW_WORKER_DESCENDANTS:
        allowed |= descendants(allowed)
    leaked = leaked_children(allowed)
    for proc in leaked:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    assert not leaked, f"the test leaked processes: {[_cmdline(p) for p in leaked]}"


def descendants(pids: set[int]) -> set[int]:
    out: set[int] = set()
    for pid in pids:
        try:
            out.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return out


def _cmdline(proc: psutil.Process) -> list[str] | str:
    try:
        return proc.cmdline()
    except (psutil.Error, OSError):
        return f"pid {proc.pid} (gone)"


@pytest.fixture(autouse=True)
def no_leaked_segments():
    yield
    left = shm.leftovers()
    shm.sweep()
    # (a probe file of a worker killed while it joined is swept, not counted)
    segments = [n for n in left if not n.endswith("-probe")]
    assert not segments, f"shared memory left behind by ended processes: {segments}"


@pytest.fixture
def cluster():
    """Two live workers, [2, 3]: reused from the previous test when it left them healthy."""
    if cm.workers() != [2, 3]:
        cm.shutdown()
        assert cm.addprocs(2) == [2, 3]
    yield [2, 3]


@pytest.fixture(scope="session", autouse=True)
def _shutdown_at_end():
    shm.sweep()  # what a crashed earlier run left
    yield
    cm.shutdown()
    if JOB_LOGS.startswith(tempfile.gettempdir()):
        shutil.rmtree(JOB_LOGS, ignore_errors=True)


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


def pytest_collection_modifyitems(config, items):
    """Of the outside suites run here, keep the tests that exercise clustermgr (joblib's
    suite is parametrized over every backend; only the "clustermgr" cases are ours)."""
    keep, drop = [], []
    for item in items:
        ours = item.fspath.basename != "test_joblib_suite.py" or "clustermgr" in item.name
        (keep if ours else drop).append(item)
        module = getattr(item, "module", None)
        if item.name in getattr(module, "KNOWN_FAILURES", {}):
            item.add_marker(pytest.mark.xfail(reason=f"open: {module.KNOWN_FAILURES[item.name]}",
                                              strict=False))
        if item.name in getattr(module, "KNOWN_HANGS", {}):
            item.add_marker(pytest.mark.skip(reason=f"open: {module.KNOWN_HANGS[item.name]}"))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_terminal_summary(terminalreporter):
    """One line per real back end this machine could not host (see tests/backends.py)."""
    from backends import unavailable
    if unavailable:
        terminalreporter.section("back ends not available here")
        for reason in unavailable.values():
            terminalreporter.write_line(reason)

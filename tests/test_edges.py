"""The interpreter's edges: arguments map and threading refuse, refused the same way; a
crash in C explained; a poison item that would take every fresh worker with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import warnings

import psutil
import pytest

import clustermgr as cm
from clustermgr.mapping import MAX_ITEM_DEATHS


def test_pmap_and_imap_refuse_what_map_refuses(cluster):
    with pytest.raises(TypeError, match="at least one iterable"):
        cm.pmap(abs)
    with pytest.raises(TypeError, match="at least one iterable"):
        cm.imap(abs)
    with pytest.raises(TypeError, match="not callable"):
        cm.pmap(42, [1])
    with pytest.raises(TypeError, match="on_error must be a callable"):
        cm.pmap(abs, [1], on_error="ignore")
    with pytest.raises(TypeError, match="retry_check must be a callable"):
        cm.pmap(abs, [1], retry_check=True)
    assert cm.pmap(abs, [-1, -2]) == [1, 2]  # the checks cost nothing when all is right


def test_negative_timeouts_are_refused_as_threading_refuses_them(cluster):
    fut = cm.remotecall(abs, cluster[0], -3)
    for wait in (fut.fetch, fut.wait, fut.result, lambda t: cm.fetch(fut, t)):
        with pytest.raises(ValueError, match="non-negative"):
            wait(-1)
    with pytest.raises(TypeError, match="number of seconds"):
        fut.fetch("10")
    assert fut.fetch(0 if fut.wait(30) else 30) == 3  # 0 is a valid timeout: "now"
    chan = cm.RemoteChannel(owner=cluster[0])
    with pytest.raises(ValueError, match="non-negative"):
        chan.take(-0.5)
    with pytest.raises(ValueError, match="non-negative"):
        cm.pmap(abs, [1], timeout=-1)


def _shutdown_here():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cm.shutdown()
    return [str(w.message) for w in seen], cm.myid()


def test_shutdown_on_a_worker_says_it_does_nothing(cluster):
    messages, wid = cm.remotecall_fetch(_shutdown_here, cluster[0])
    assert wid == cluster[0]
    assert len(messages) == 1 and f"on worker {wid} does nothing" in messages[0]
    assert cm.remotecall_fetch(cm.myid, cluster[0]) == cluster[0]  # still serving


def _segfault():
    import ctypes

    return ctypes.string_at(0)


def test_a_segfault_leaves_the_python_stack_in_the_error(fresh):
    (w,) = cm.addprocs(1)
    with pytest.raises(cm.ProcessExitedError) as info:
        cm.remotecall(_segfault, w).fetch(60)
    assert "SIGSEGV" in info.value.cause
    tail = info.value.log_tail
    assert "Fatal Python error: Segmentation fault" in tail
    assert "in _segfault" in tail and "in string_at" in tail


def _poison(x):
    if x == 7:
        os._exit(9)
    return x


def test_a_poison_item_is_not_retried_into_every_fresh_worker(fresh):
    ids = cm.addprocs(MAX_ITEM_DEATHS + 1)
    verdict = f"item 0 \\(arguments 7\\) killed {MAX_ITEM_DEATHS} workers"
    with pytest.raises(cm.ProcessExitedError, match=verdict):
        cm.pmap(_poison, [7], retry_delays=[0.0] * 50, timeout=120)
    assert len(ids) - len(cm.workers()) == MAX_ITEM_DEATHS  # exactly: it ran alone each time
    cm.addprocs(MAX_ITEM_DEATHS + 2)
    before = len(cm.workers())
    failures = []

    def keep(exc):
        failures.append(exc)
        return "poison"

    # among other items: the items in flight with it when its worker dies are each run again
    # alone, so the deaths after that are charged exactly; the others complete
    out = cm.pmap(_poison, range(10), retry_delays=[0.0] * 50, on_error=keep, timeout=120)
    assert out == [0, 1, 2, 3, 4, 5, 6, "poison", 8, 9]
    # one death while it ran with others (uncharged) at most, then exactly MAX_ITEM_DEATHS
    assert before - len(cm.workers()) in (MAX_ITEM_DEATHS, MAX_ITEM_DEATHS + 1)
    (exc,) = failures
    assert isinstance(exc, cm.ProcessExitedError) and "item 7 (arguments 7) killed" in str(exc)

EXIT_SCRIPT = """
import atexit, os, signal, time
import clustermgr as cm
ids = cm.addprocs(2)
pids = [cm.remotecall_fetch(os.getpid, w) for w in ids]
print(*pids, flush=True)
os.kill(pids[0], signal.SIGSTOP)  # it cannot leave when asked: shutdown at exit waits for it
atexit.register(print, "exiting", flush=True)  # runs just before clustermgr's cleanup
print("ready", flush=True)
time.sleep(600)
"""


def test_a_second_ctrl_c_during_cleanup_at_exit_still_removes_the_workers():
    p = subprocess.Popen([sys.executable, "-c", EXIT_SCRIPT], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    pids = [int(x) for x in p.stdout.readline().split()]
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGINT)  # the first: the script ends; the cleanup at exit begins
        assert p.stdout.readline().strip() == "exiting"
        p.send_signal(signal.SIGINT)  # the second, as the cleanup begins or while it waits
        _, err = p.communicate(timeout=60)
        assert "ending the workers without waiting" in err, err
        _, alive = psutil.wait_procs([psutil.Process(q) for q in pids if psutil.pid_exists(q)], timeout=10)
        assert not [q for q in alive if q.status() != psutil.STATUS_ZOMBIE]
    finally:
        for q in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(q, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
            p.wait()

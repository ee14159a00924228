"""What CPython's own futures suite found, as tests of ours (#12): no stale references,
work submitted before exit completes, each executor releases what it made, exceptions keep
their type, Manager proxies travel."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool

import psutil
import pytest

import clustermgr as cm
from clustermgr import ClusterExecutor


class Marker:
    pass


def big_result(nbytes):
    return bytearray(nbytes)


class ExitAtUnpickle:
    def __reduce__(self):
        return sys.exit, (1,)


class ExitAtPickle:
    def __reduce__(self):
        sys.exit(1)


class ErrorAtUnpickle:
    def __reduce__(self):
        return pickle.loads, (b"not a pickle",)


def make(cls):
    return cls()


def run_script(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERMGR_")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_a_finished_tasks_inputs_and_result_are_not_kept(fresh):
    with ClusterExecutor(1) as ex:
        obj = Marker()
        ref = weakref.ref(obj)
        fut = ex.submit(id, obj)
        fut.result(30)
        del obj, fut
        deadline = time.monotonic() + 10
        while ref() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)  # the dispatcher drops the item on its own thread
        assert ref() is None, "the last task's argument is still referenced"
        rss = psutil.Process().memory_info().rss
        fut = ex.submit(big_result, 200 << 20)
        size = len(fut.result(60))
        del fut
        assert size == 200 << 20
        deadline = time.monotonic() + 10
        while psutil.Process().memory_info().rss - rss > 100 << 20 and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)  # the dispatcher lets go of the call on its own thread
        assert psutil.Process().memory_info().rss - rss < 100 << 20  # the dropped result is freed


def test_work_submitted_before_exit_completes_without_a_warning():
    done = run_script("""
        import time
        from clustermgr import ClusterExecutor
        def slow_print(msg):
            time.sleep(0.5)
            print(msg)
        ex = ClusterExecutor(2)
        ex.submit(slow_print, "apple")
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "apple"  # a worker's output, as the stdlib pool prints it
    assert done.stderr == ""


def test_submit_from_an_atexit_hook_raises_as_the_stdlib_does():
    done = run_script("""
        import atexit
        @atexit.register
        def last():
            try:
                ex.submit(id, None)
            except RuntimeError as exc:
                print(exc)
        from clustermgr import ClusterExecutor
        ex = ClusterExecutor(1)
        ex.submit(id, 42).result()
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cannot schedule new futures after interpreter shutdown"


def _resources() -> tuple[int, int, int]:
    proc = psutil.Process()
    logs = [p for p in os.listdir("/tmp") if p.startswith("clustermgr-logs-")]
    return threading.active_count(), proc.num_fds(), len(logs)


def test_each_executor_releases_what_it_made(fresh):
    with ClusterExecutor(2) as ex:
        ex.submit(abs, -1).result(30)
    before = _resources()
    for _ in range(5):
        with ClusterExecutor(2) as ex:
            assert list(ex.map(abs, [-1, -2])) == [1, 2]
    threads, fds, logs = _resources()
    assert threads <= before[0] and logs <= before[2], (before, _resources())
    assert fds <= before[1] + 2, (before, _resources())
    assert cm.workers() == [1]


def test_an_executor_dropped_without_shutdown_ends_its_workers(fresh):
    ex = ClusterExecutor(2)
    pids = set(ex.map(lambda _: (time.sleep(0.05), os.getpid())[1], range(8)))
    thread = ex._executor_manager_thread
    del ex
    gc.collect()
    thread.join(30)
    assert not thread.is_alive()
    deadline = time.monotonic() + 30
    while cm.workers() != [1] and time.monotonic() < deadline:
        time.sleep(0.05)  # removal runs in the background, as the stdlib's does
    assert cm.workers() == [1]
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


@pytest.mark.parametrize("func, args, expected", [
    (id, (ExitAtUnpickle(),), BrokenProcessPool),      # the task cannot be unpickled there
    (id, (ErrorAtUnpickle(),), BrokenProcessPool),
    (make, (ExitAtPickle,), SystemExit),                 # the result cannot be pickled there
    (make, (ExitAtUnpickle,), BrokenProcessPool),        # the result cannot be unpickled here
    (make, (ErrorAtUnpickle,), BrokenProcessPool),
])
def test_exceptions_keep_the_stdlib_types(fresh, func, args, expected):
    with ClusterExecutor(1) as ex:
        with pytest.raises(expected) as info:
            ex.submit(func, *args).result(60)
        if expected is BrokenProcessPool:
            assert "importable" not in str(info.value)  # not a missing module: no such hint
        assert ex.submit(abs, -3).result(30) == 3  # and the executor keeps working


def _set(d, key, value):
    d[key] = value
    return os.getpid()


def test_multiprocessing_manager_proxies_work_as_arguments(fresh):
    with mp.get_context("spawn").Manager() as manager, ClusterExecutor(2) as ex:
        shared = manager.dict()
        pids = [ex.submit(_set, shared, i, i * i).result(60) for i in range(4)]
        assert dict(shared) == {0: 0, 1: 1, 2: 4, 3: 9}
        assert os.getpid() not in pids

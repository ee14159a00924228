"""remotecall and friends, Futures, fetch, everywhere: normal and bad input."""

import os
import sys
import threading

import numpy as np
import pytest

import clustermgr as cm

if sys.version_info < (3, 11):  # the backport, as clustermgr uses it there
    from exceptiongroup import ExceptionGroup
from clustermgr import ClusterError, Future, RemoteError


def test_ids(cluster):
    assert cm.myid() == 1
    assert cm.workers() == cluster == [2, 3]
    assert cm.procs() == [1, 2, 3]
    assert (cm.nprocs(), cm.nworkers()) == (3, 2)
    assert [cm.remotecall_fetch(cm.myid, w) for w in cluster] == cluster
    assert cm.remotecall_fetch(cm.workers, 2) == cluster


def test_remotecall_returns_future_at_once(cluster):
    fut = cm.remotecall(lambda x, y=0: x + y, 2, 40, y=2)
    assert isinstance(fut, Future) and fut.where == 2
    assert fut.fetch(10) == 42
    assert fut.isready() and fut.wait(0) is True
    assert fut.fetch() == 42  # fetch again: same value


def test_remotecall_wait_and_remote_do(cluster):
    fut = cm.remotecall_wait(lambda: 5, 3)
    assert fut.isready() and fut.fetch() == 5
    chan = cm.RemoteChannel()
    assert cm.remote_do(lambda c: c.put(cm.myid()), 3, chan) is None
    assert chan.take(timeout=10) == 3


def test_wait_and_fetch_time_out(cluster):
    gate = cm.RemoteChannel()
    fut = cm.remotecall(lambda c: c.take(), 2, gate)
    assert fut.wait(0.1) is False
    with pytest.raises(TimeoutError):
        fut.fetch(timeout=0.1)
    gate.put("go")
    assert fut.fetch(10) == "go"


def test_spawnat(cluster):
    assert cm.spawnat(3, cm.myid).fetch() == 3
    seen = {cm.spawnat("any", cm.myid).fetch() for _ in range(8)}
    assert seen <= set(cluster)
    with pytest.raises(ValueError, match='"any"'):
        cm.spawnat("some", cm.myid)


def test_spawnat_any_balances_load(cluster):
    gate = cm.RemoteChannel()
    futs = [cm.spawnat("any", lambda c: (c.fetch(), cm.myid())[1], gate) for _ in range(6)]
    assert sorted(f.where for f in futs) == [2, 2, 2, 3, 3, 3]
    gate.put(1)
    assert sorted(f.fetch(10) for f in futs) == [2, 2, 2, 3, 3, 3]


def test_call_to_self_runs_here(cluster):
    assert cm.remotecall_fetch(os.getpid, 1) == os.getpid()
    assert cm.remotecall_fetch(lambda: cm.remotecall_fetch(cm.myid, 2), 2) == 2


def test_bad_targets(cluster):
    with pytest.raises(ClusterError, match="there is no worker 99"):
        cm.remotecall(abs, 99, 1)
    with pytest.raises(TypeError, match="process id is an int"):
        cm.remotecall(abs, "2", 1)


def test_unpicklable_call_fails_in_caller(cluster):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="lock"):
        cm.remotecall(lambda: lock, 2)
    assert cm.remotecall_fetch(abs, 2, -1) == 1  # nothing broke


def test_fetch_helper():
    assert cm.fetch(5) == 5


def test_future_passed_to_another_worker(cluster):
    fut = cm.remotecall(lambda: 21, 2)
    assert cm.remotecall_fetch(lambda f: cm.fetch(f) * 2, 3, fut) == 42
    # a Future owned by a worker, fetched by the master and by another worker
    ref = cm.remotecall_fetch(lambda: cm.remotecall(lambda: "deep", 3), 2)
    assert ref.owner == 2 and ref.where == 3
    assert ref.fetch(10) == "deep"
    assert ref.isready()


def test_worker_to_worker_calls(cluster):
    assert cm.remotecall_fetch(lambda: cm.remotecall_fetch(cm.myid, 3), 2) == 3


def test_mutual_calls_do_not_deadlock(cluster):
    def ping(depth):
        if depth == 0:
            return cm.myid()
        other = 5 - cm.myid()  # 2 <-> 3
        return cm.remotecall_fetch(ping, other, depth - 1)

    assert cm.remotecall_fetch(ping, 2, 5) == 3


def test_closure_capturing_numpy_array(cluster):
    arr = np.arange(100_000, dtype=np.int64)
    assert cm.remotecall_fetch(lambda: int(arr.sum()), 2) == int(arr.sum())


def test_200mb_array_round_trip(cluster):
    arr = np.random.default_rng(0).random(25_000_000)  # 200 MB
    back = cm.remotecall_fetch(lambda a: a, 2, arr)
    assert back.nbytes == 200_000_000
    assert np.array_equal(back, arr)
    back[0] = -1.0  # received arrays are writable
    assert cm.remotecall_fetch(lambda a: float(a.sum()), 3, back) == pytest.approx(arr.sum() - arr[0] - 1)


def test_everywhere(cluster):
    assert cm.everywhere(cm.myid) == cluster
    assert cm.everywhere(lambda k: cm.myid() * k, 10, procs=[3]) == [30]
    cm.everywhere("import math\ndef cm_test_sq(x):\n    return math.pi * x * x")
    # defined in __main__ of every process, the master included
    in_main = lambda: __import__("__main__").cm_test_sq(1.0)  # noqa: E731
    assert cm.everywhere(in_main) == pytest.approx([3.14159] * 2, rel=1e-4)
    sq = __import__("__main__").cm_test_sq
    assert cm.pmap(sq, [1.0, 2.0]) == pytest.approx([3.14159, 12.56637], rel=1e-4)
    with pytest.raises(TypeError, match="callable or a string"):
        cm.everywhere(5)
    with pytest.raises(ExceptionGroup) as info:  # every process's error, each named
        cm.everywhere("undefined_name_xyz", procs=[2])
    (err,) = info.value.exceptions
    assert isinstance(err, RemoteError) and "on worker 2: NameError" in str(err)


def test_remote_do_error_is_printed_by_the_worker(cluster):
    lines = []
    cm.configure(output=lambda wid, line, stream: lines.append((wid, line, stream)))
    try:
        cm.remote_do(lambda: 1 / 0, 2)
        assert cm.remotecall_fetch(lambda: 1, 2) == 1  # calls run in order: the error came first
        assert any(w == 2 and "ZeroDivisionError" in line and s == "stderr" for w, line, s in lines)
    finally:
        cm.configure(output="print")

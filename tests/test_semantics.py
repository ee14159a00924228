"""Distributed's semantics where ours once differed: pools, retries, channels, errors, and
the API Julia's Distributed has (each test is named after what it checks)."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

import clustermgr as cm

if sys.version_info < (3, 11):  # the backport, as clustermgr uses it there
    from exceptiongroup import ExceptionGroup
from clustermgr import ClusterError, RemoteError, WorkerPool


def _record_and_fail_first(path: str, x: int) -> int:
    log = os.path.join(path, str(x))
    with open(log, "a") as fh:
        fh.write(f"{cm.myid()}\n")
    with open(log) as fh:
        if len(fh.read().split()) == 1:
            raise RuntimeError(f"first attempt of {x}")
    return x


def test_a_pool_of_the_master_alone_runs_on_the_master(cluster):
    pool = WorkerPool([1])
    assert pool.workers() == [1]
    assert pool.remotecall_fetch(cm.myid) == 1
    assert cm.pmap(lambda _: cm.myid(), range(4), pool=pool) == [1, 1, 1, 1]
    assert cm.remote(cm.myid, pool)() == 1


def test_a_pool_whose_workers_died_errs_instead_of_using_others(cluster):
    extra = cm.addprocs(1)
    pool = WorkerPool(extra)
    cm.rmprocs(extra)
    with pytest.raises(ClusterError, match="gone"):
        cm.pmap(cm.myid, [1, 2], pool=pool)
    with pytest.raises(ClusterError, match="gone"):
        cm.remote(cm.myid, pool)()


def test_a_retry_goes_to_another_worker(cluster, tmp_path):
    out = cm.pmap(lambda x: _record_and_fail_first(str(tmp_path), x), range(20), retry_delays=[0])
    assert out == list(range(20))
    for x in range(20):
        first, second = (tmp_path / str(x)).read_text().split()
        assert first != second, f"item {x} was retried on worker {first}, where it failed"


def test_a_retry_stays_on_the_only_worker_there_is(fresh, tmp_path):
    cm.addprocs(1)
    out = cm.pmap(lambda x: _record_and_fail_first(str(tmp_path), x), range(3), retry_delays=[0])
    assert out == [0, 1, 2]


def _puts_from_owner(chan):
    a = np.zeros(3)
    for i in range(10):
        a[:] = i
        chan.put(a)
    return [int(chan.take()[0]) for _ in range(10)]


def test_a_put_stores_the_value_as_it_was_at_the_put(cluster):
    chan = cm.RemoteChannel()  # owned by the master, the putting process
    assert _puts_from_owner(chan) == list(range(10))
    worker_chan = cm.RemoteChannel(cluster[0])
    assert cm.remotecall_fetch(_puts_from_owner, cluster[0], worker_chan) == list(range(10))


@pytest.mark.parametrize("distributed", [True, False])
def test_on_error_gets_a_remote_error_wherever_f_ran(cluster, distributed):
    seen = []
    out = cm.pmap(lambda x: 1 / x, [0, 1], distributed=distributed,
                  on_error=lambda e: seen.append(e) or "failed")
    assert out == ["failed", 1.0]
    (err,) = seen
    assert isinstance(err, RemoteError) and isinstance(err.__cause__, ZeroDivisionError)
    with pytest.raises(RemoteError) as info:
        cm.pmap(lambda x: 1 / x, [0], distributed=distributed)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


# --- the API Distributed has ----------------------------------------------------------

def _put_from_here(fut, value):
    fut.put(value)
    return cm.myid()


def test_a_future_with_no_call_is_set_once_and_fetched_anywhere(cluster):
    from concurrent.futures import InvalidStateError

    fut = cm.Future()
    assert not fut.isready() and fut.owner == 1
    waiter = cm.remotecall(lambda f: f.fetch() * 2, cluster[0], fut)
    assert cm.remotecall_fetch(_put_from_here, cluster[1], fut, 21) == cluster[1]
    assert waiter.fetch(30) == 42 and fut.fetch() == 21
    with pytest.raises(InvalidStateError, match="set once"):
        fut.put(0)
    with pytest.raises(RemoteError, match="InvalidStateError"):
        cm.remotecall_fetch(_put_from_here, cluster[0], fut, 0)
    assert fut.fetch() == 21
    other = cm.Future()
    other.set_result("x")
    assert cm.fetch(other) == "x"


def test_remotecall_wait_raises_the_remote_error_and_future_wait_does_not(cluster):
    with pytest.raises(RemoteError, match="ZeroDivisionError"):
        cm.remotecall_wait(lambda: 1 / 0, cluster[0])
    fut = cm.remotecall(lambda: 1 / 0, cluster[0])
    assert fut.wait(30) is True
    assert cm.remotecall_wait(cm.myid, cluster[0]).fetch() == cluster[0]


def test_everywhere_collects_every_process_error(cluster):
    def fail_on_even():
        if cm.myid() % 2 == 0:
            raise ValueError(f"even {cm.myid()}")
        return cm.myid()

    with pytest.raises(ExceptionGroup) as info:
        cm.everywhere(fail_on_even, procs=[1, *cluster])
    errors = info.value.exceptions
    assert len(errors) == 1 and "on worker 2" in str(errors[0]) and "process 2" in str(info.value)
    with pytest.raises(ExceptionGroup) as info:
        cm.everywhere("raise KeyError('x')")
    assert len(info.value.exceptions) == 3  # the master and both workers


def test_spawnat_any_with_no_workers_runs_on_the_master(fresh):
    assert cm.spawnat("any", cm.myid).fetch() == 1
    assert cm.remotecall_fetch(cm.myid, cm.WorkerPool([1])) == 1


def test_rmprocs_with_waitfor_0_returns_at_once(fresh):
    ids = cm.addprocs(2)
    start = time.monotonic()
    busy = cm.remotecall(time.sleep, ids[0], 60)  # a worker that cannot leave politely
    thread = cm.rmprocs(ids, waitfor=0)
    assert time.monotonic() - start < 1.0
    thread.join(60)
    assert not thread.is_alive() and cm.workers() == [1]
    with pytest.raises(cm.ProcessExitedError):
        busy.fetch(10)


def test_channel_isopen_and_a_factory_channel_on_its_owner(cluster):
    import queue

    chan = cm.RemoteChannel(lambda: queue.PriorityQueue(3), cluster[0])
    assert chan.owner == cluster[0] and chan.isopen()
    for x in (5, 1, 3):
        chan.put(x)
    with pytest.raises(TimeoutError):
        chan.put(9, timeout=0.2)  # the factory's bound holds, nothing is lost
    assert len(chan) == 3 and cm.fetch(chan) == 1
    assert [chan.take() for _ in range(3)] == [1, 3, 5]
    taker = cm.remotecall(lambda c: c.take(timeout=30), cluster[1], chan)
    chan.put(7)
    assert taker.fetch(30) == 7
    chan.close()
    assert not chan.isopen()
    with pytest.raises(cm.ChannelClosedError):
        chan.put(1)
    with pytest.raises(TypeError, match="queue.Queue-like"):
        cm.RemoteChannel(lambda: [], 1)


def test_a_rendezvous_channel_hands_each_item_to_a_taker(cluster):
    chan = cm.RemoteChannel(cluster[0], rendezvous=True)
    with pytest.raises(TimeoutError):
        chan.put("alone", timeout=0.2)  # nobody takes: the put does not complete
    assert len(chan) == 0 and not chan.isready()
    putter = cm.remotecall(lambda c: (c.put("hi", timeout=30), "put done")[1], cluster[1], chan)
    assert not putter.wait(0.3)  # blocked until a take
    assert chan.take(timeout=30) == "hi"
    assert putter.fetch(30) == "put done"
    with pytest.raises(ValueError, match="rendezvous"):
        cm.RemoteChannel(rendezvous=True, maxsize=2)


def test_pools_are_targets_and_can_be_sent_to_workers(cluster):
    pool = WorkerPool(cluster)
    assert cm.remotecall(cm.myid, pool).fetch() in cluster
    assert cm.remotecall_fetch(cm.myid, pool) in cluster
    assert cm.remotecall_wait(cm.myid, pool).fetch() in cluster
    with pytest.raises(RemoteError):
        cm.remotecall_wait(lambda: 1 / 0, pool)
    cm.remote_do(cm.myid, pool)
    assert pool.isready() and pool.wait(1)
    # sent to a worker, the pool stays on its owner: taking there takes here
    used = cm.remotecall_fetch(lambda p: [cm.remotecall_fetch(cm.myid, p) for _ in range(4)],
                               cluster[0], pool)
    assert set(used) <= set(cluster)
    assert sorted(cm.remotecall_fetch(lambda p: p.workers(), cluster[1], pool)) == cluster
    one = WorkerPool([cluster[0]])
    blocker = cm.remotecall(lambda: time.sleep(0.5), one)
    assert not one.isready() and not one.wait(0.05)
    blocker.fetch(10)
    assert one.wait(5)


class CountedFn:
    """A callable that counts, in each process, how often it was unpickled there."""

    def __call__(self, x):
        return x + 1

    def __reduce__(self):
        return (_unpickled, ())


UNPICKLES = []


def _unpickled():
    UNPICKLES.append(1)
    return CountedFn()


def _unpickles():
    return len(UNPICKLES)


def test_pmap_ships_f_once_per_worker_per_caching_pool(cluster):
    pool = cm.CachingPool(cluster)
    f = CountedFn()
    before = {w: cm.remotecall_fetch(_unpickles, w) for w in cluster}
    for _ in range(3):
        assert cm.pmap(f, range(20), pool=pool) == list(range(1, 21))
    after = {w: cm.remotecall_fetch(_unpickles, w) for w in cluster}
    assert {w: after[w] - before[w] for w in cluster} == {w: 1 for w in cluster}
    pool.clear()
    assert cm.pmap(f, range(4), pool=pool) == [1, 2, 3, 4]
    again = {w: cm.remotecall_fetch(_unpickles, w) for w in cluster}
    assert sum(again[w] - after[w] for w in cluster) >= 1  # shipped anew after clear()


def test_imap_is_lazy_bounded_and_ordered_or_as_completed(cluster):
    import itertools

    consumed = []

    def source():
        for i in itertools.count():
            consumed.append(i)
            yield i

    out = list(itertools.islice(cm.imap(lambda x: x * x, source(), in_flight=4), 50))
    assert out == [i * i for i in range(50)]
    assert len(consumed) <= 50 + 4
    delays = [0.6, 0.0, 0.0, 0.0]
    fast_first = list(cm.imap(lambda d: (time.sleep(d), d)[1], delays, ordered=False, in_flight=2))
    assert sorted(fast_first) == sorted(delays) and fast_first[-1] == 0.6
    assert list(cm.imap(lambda a, b: a - b, [5, 6], [1, 1])) == [4, 5]
    with pytest.raises(RemoteError):
        list(cm.imap(lambda x: 1 / x, [1, 0, 2]))
    with pytest.raises(TypeError):
        cm.imap(abs)
    with pytest.raises(TimeoutError):
        list(cm.imap(time.sleep, [5], timeout=0.2))
    cm.interrupt()


def test_a_remote_traceback_shows_the_source_of_a_function_pickled_by_value(cluster, tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(
        "import clustermgr as cm\n"
        "def inner(x):\n"
        "    y = x - 1\n"
        "    return 1 / y\n"
        "class K:\n"
        "    def meth(self, x):\n"
        "        return inner(x)\n"
        "    @classmethod\n"
        "    def klass(cls, x):\n"
        "        return inner(x)\n"
        "if __name__ == '__main__':\n"
        "    import traceback\n"
        "    cm.addprocs(1)\n"
        "    for f in (inner, K().meth, K.klass):\n"
        "        try:\n"
        "            cm.remotecall_fetch(f, 2, 1)\n"
        "        except cm.RemoteError as e:\n"
        "            traceback.print_exception(e)\n")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    err = done.stderr
    assert "<dynamic-code>" not in err
    assert err.count(f'File "{script}", line 4, in inner\n    return 1 / y') == 3
    assert 'line 7, in meth\n    return inner(x)' in err
    assert 'line 10, in klass\n    return inner(x)' in err


def test_missing_source_lines_are_filled_in_by_the_caller(tmp_path):
    from clustermgr.calls import fill_source

    src = tmp_path / "here_only.py"
    src.write_text("a = 1\nraise ValueError('boom')\n")
    tb = f'Traceback (most recent call last):\n  File "{src}", line 2, in <module>\nValueError: boom\n'
    assert "line 2, in <module>\n    raise ValueError('boom')\nValueError" in fill_source(tb)


def _fetch_plus_one(fut):
    return fut.fetch() + 1


def test_many_waiting_calls_on_one_worker_do_not_exhaust_its_stack(cluster):
    """Each call waits for a Future set only after all 300 were sent: the worker nests
    some, defers the rest in order, and every call completes."""
    gate = cm.Future()
    calls = [cm.remotecall(_fetch_plus_one, cluster[0], gate) for _ in range(300)]
    gate.put(1)
    assert [c.fetch(60) for c in calls] == [2] * 300

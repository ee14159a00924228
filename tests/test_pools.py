"""WorkerPool, CachingPool, default_worker_pool, remote()."""

import threading

import numpy as np
import pytest

import clustermgr as cm
from clustermgr import CachingPool, WorkerPool

UNPICKLED = 0


class Tracker:
    """Counts, in the process that unpickles it, how often that happened."""

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        global UNPICKLED
        UNPICKLED += 1


def unpickled_count():
    return UNPICKLED


def test_worker_pool_hands_out_each_worker_once(cluster):
    pool = WorkerPool(cluster)
    gate = cm.RemoteChannel()
    futs = [pool.remotecall(lambda c: (c.fetch(), cm.myid())[1], gate) for _ in range(2)]
    with pytest.raises(TimeoutError):
        pool.take(timeout=0.1)  # both busy
    gate.put(1)
    assert sorted(f.fetch(10) for f in futs) == cluster
    assert pool.remotecall_fetch(cm.myid) in cluster
    assert pool.remotecall_wait(cm.myid).fetch() in cluster
    assert len(pool) == 2


def test_empty_pool_rejected():
    with pytest.raises(ValueError):
        WorkerPool([])


def test_caching_pool_ships_function_once(cluster):
    [w] = cluster[:1]
    tracker = Tracker()
    weights = np.ones(1000)

    def f(x):
        return tracker is not None and float(weights.sum()) + x

    before = cm.remotecall_fetch(unpickled_count, w)
    pool = CachingPool([w])
    assert [pool.remotecall_fetch(f, i) for i in range(5)] == [1000.0 + i for i in range(5)]
    assert cm.remotecall_fetch(unpickled_count, w) - before == 1
    assert cm.pmap(f, range(3), pool=pool) == [1000.0, 1001.0, 1002.0]
    pool.clear()
    assert pool.remotecall_fetch(f, 1) == 1001.0  # shipped again after clear
    pool.clear()


def test_plain_pool_ships_every_time(cluster):
    [w] = cluster[:1]
    tracker = Tracker()
    before = cm.remotecall_fetch(unpickled_count, w)
    pool = WorkerPool([w])
    for _ in range(3):
        pool.remotecall_fetch(lambda: tracker is not None)
    assert cm.remotecall_fetch(unpickled_count, w) - before == 3


def test_default_pool_and_remote(cluster):
    assert sorted(cm.default_worker_pool().workers()) == cluster
    rsquare = cm.remote(lambda x: (x * x, cm.myid()))
    value, where = rsquare(7)
    assert value == 49 and where in cluster


def test_pool_is_thread_safe(cluster):
    pool = WorkerPool(cluster)
    results = []
    threads = [threading.Thread(target=lambda: results.append(pool.remotecall_fetch(cm.myid)))
               for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 10 and set(results) <= set(cluster)

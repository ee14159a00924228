"""Distributed's semantics where ours once differed: pools, retries, channels, errors, and
the API Julia's Distributed has (each test is named after what it checks)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import clustermgr as cm
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

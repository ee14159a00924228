"""What ClusterExecutor adds to the stdlib's contract: surviving and replacing dead
workers, recycling, reusing workers, initializers, progress."""

import concurrent.futures as cf
import os
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import clustermgr as cm
from clustermgr import ClusterExecutor, ProcessExitedError, RemoteError, WorkerLostError
from clustermgr.executor import parse_bytes


def test_dead_worker_fails_its_futures_and_is_replaced(fresh):
    with ClusterExecutor(2) as ex:
        before = set(ex.workers)
        victim_pid = ex.submit(os.getpid).result(30)
        fut = ex.submit(lambda: (time.sleep(0.2), os.kill(os.getpid(), 9)))
        with pytest.raises(WorkerLostError, match="SIGKILL") as info:
            fut.result(60)
        assert isinstance(info.value, BrokenProcessPool) and isinstance(info.value, ProcessExitedError)
        assert list(ex.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]  # still usable
        deadline = time.monotonic() + 60
        while len(ex.workers) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the replacement joins in the background
        assert len(ex.workers) == 2 and set(ex.workers) != before
        assert victim_pid  # (any worker may have been the victim)


def test_replacement_can_be_turned_off(fresh):
    with ClusterExecutor(1, replace_workers=False) as ex:
        with pytest.raises(BrokenProcessPool):
            ex.submit(os._exit, 3).result(60)
        with pytest.raises(BrokenProcessPool, match="every worker of the executor is gone"):
            ex.submit(abs, -1).result(60)
        with pytest.raises(BrokenProcessPool):
            ex.submit(abs, -1)


def test_max_tasks_per_child_recycles_workers(fresh):
    with ClusterExecutor(1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(os.getpid).result(60) for _ in range(6)]
    assert len(set(pids)) == 3 and pids[0] == pids[1] != pids[2]


def test_max_tasks_per_child_holds_with_a_deep_window(fresh):
    # tiny tasks deepen the pipelining window; no worker still gets more than its quota,
    # and work submitted before shutdown completes on replacements
    with ClusterExecutor(2, max_tasks_per_child=3) as ex:
        futs = [ex.submit(os.getpid) for _ in range(30)]
        ex.shutdown(wait=True)
        pids = [f.result(60) for f in futs]
    assert max(pids.count(p) for p in set(pids)) <= 3 and len(set(pids)) >= 10


def test_shutdown_right_after_a_death_ends_the_replacement_too(fresh):
    # the replacement is still starting when shutdown comes: it is waited for and removed
    # (the autouse leak check fails the test if its process outlives the executor)
    ex = ClusterExecutor(1)
    with pytest.raises(WorkerLostError):
        ex.submit(os._exit, 9).result(60)
    ex.shutdown(wait=True)
    assert cm.workers() == [1]  # nothing of the executor is left in the cluster


def test_max_memory_per_child_recycles_a_worker_that_grew(fresh):
    with ClusterExecutor(1, max_memory_per_child="200MB") as ex:
        first = ex.submit(os.getpid).result(60)
        grow = ex.submit(lambda: (__import__("__main__").__dict__.setdefault("ballast", b"x" * 300_000_000),
                                  os.getpid())[1])
        assert grow.result(60) == first
        assert ex.submit(os.getpid).result(60) != first  # the grown worker was replaced
    assert parse_bytes("2GiB") == 2 * 1024 ** 3 and parse_bytes("512MB") == 512_000_000
    with pytest.raises(ValueError, match="512MB"):
        parse_bytes("lots")


def test_existing_workers_are_used_and_kept(cluster):
    with ClusterExecutor(workers=cluster) as ex:
        assert sorted(set(ex.map(lambda _: cm.myid(), range(20)))) == sorted(cluster)
    assert cm.workers() == cluster  # not removed at shutdown


def test_initializer_runs_on_every_worker_and_a_failing_one_breaks(fresh):
    def init(value):
        os.environ["EXECUTOR_SETTING"] = value

    with ClusterExecutor(2, initializer=init, initargs=("42",)) as ex:
        assert set(ex.map(lambda _: os.environ["EXECUTOR_SETTING"], range(8))) == {"42"}
    # As the stdlib's pool: the executor is made, its futures fail, later submits raise,
    # and the workers it started are removed.
    broken = ClusterExecutor(1, initializer=lambda: 1 / 0)
    with pytest.raises(BrokenProcessPool, match="initializer failed"):
        broken.submit(abs, -1).result(timeout=30)
    with pytest.raises(BrokenProcessPool, match="initializer failed"):
        broken.submit(abs, -1)
    deadline = time.monotonic() + 30
    while cm.workers() != [1] and time.monotonic() < deadline:
        time.sleep(0.05)  # the removal runs on the dispatcher thread
    assert cm.workers() == [1]
    broken.shutdown()


def test_exception_class_missing_here_arrives_as_remote_error(fresh):
    def raise_worker_only_class():
        import sys
        import types

        mod = types.ModuleType("only_on_worker")  # importable there, not here
        exec("class OnlyThere(Exception): pass", mod.__dict__)
        sys.modules["only_on_worker"] = mod
        raise mod.OnlyThere("x")

    with ClusterExecutor(1) as ex:
        with pytest.raises(RemoteError, match="OnlyThere: x"):
            ex.submit(raise_worker_only_class).result(30)


def test_map_progress_bar_counts_completed_and_failed(fresh, capsys):
    def maybe_fail(x):
        if x == 3:
            raise ValueError(x)
        return x

    with ClusterExecutor(2) as ex:
        assert list(ex.map(abs, range(10), chunksize=3, progress="always")) == list(range(10))
        it = ex.map(maybe_fail, range(5), progress="always")
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError):
            next(it)
    err = capsys.readouterr().err
    assert "10/10" in err and "map" in err


def test_bad_arguments(fresh):
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ClusterExecutor(0)
    with pytest.raises(ValueError, match="workers=\\[\\]"):
        ClusterExecutor(workers=[])
    with pytest.raises(TypeError, match="initializer must be a callable"):
        ClusterExecutor(1, initializer=3)


def test_run_in_executor_from_asyncio(fresh):
    import asyncio

    async def main(ex):
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(ex, abs, -i) for i in range(6)))

    with ClusterExecutor(2) as ex:
        assert asyncio.run(main(ex)) == list(range(6))


def test_many_small_futures_with_as_completed(fresh):
    with ClusterExecutor(2) as ex:
        futs = [ex.submit(pow, i, 2) for i in range(2000)]
        assert sorted(f.result() for f in cf.as_completed(futs, timeout=120)) == [i * i for i in range(2000)]


def test_an_idle_worker_that_dies_is_replaced_without_a_submit(fresh):
    with ClusterExecutor(2) as ex:
        pids = {w: cm.remotecall_fetch(os.getpid, w) for w in ex.workers}
        victim = min(pids)
        os.kill(pids[victim], 9)  # nothing runs on it: only the runtime sees it go
        deadline = time.monotonic() + 60
        while (victim in ex.workers or len(ex.workers) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)  # the replacement joins in the background
        assert victim not in ex.workers and len(ex.workers) == 2
        assert set(ex.workers) <= set(cm.workers())  # its view is the runtime's
        assert sorted(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]

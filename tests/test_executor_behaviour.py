"""One behaviour suite, run against ClusterExecutor and, as the reference, the stdlib's
ProcessPoolExecutor (the way CPython tests its own executors).  Where the two differ on
purpose (a dead worker does not break a ClusterExecutor), each case says what each gives.
"""

import concurrent.futures as cf
import os
import pickle
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from clustermgr import ClusterExecutor


@pytest.fixture(params=["process", "cluster"])
def kind(request):
    return request.param


@pytest.fixture
def executor(kind, fresh):
    ex = cf.ProcessPoolExecutor(2) if kind == "process" else ClusterExecutor(2)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


# --- module-level functions, so that both executors can pickle them by reference ---------

def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def fail(msg):
    raise ValueError(msg)


def nap(t, x=None):
    time.sleep(t)
    return x


def crash():
    os._exit(1)


def give_lock():
    return threading.Lock()


def pid():
    return os.getpid()


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")


def _refuse():
    raise RuntimeError("cannot be rebuilt here")


class FailsToUnpickle:
    def __reduce__(self):
        return (_refuse, ())


def give_fails_to_unpickle():
    return FailsToUnpickle()


# --- submit, results, exceptions --------------------------------------------------------

def test_submit_returns_a_stdlib_future(executor):
    fut = executor.submit(add, 1, 2, c=3)
    assert isinstance(fut, cf.Future) and fut.result(timeout=30) == 6


def test_exception_reraises_as_itself_with_remote_traceback(executor):
    fut = executor.submit(fail, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        fut.result(timeout=30)
    assert "Traceback" in str(info.value.__cause__) and "fail" in str(info.value.__cause__)
    assert isinstance(fut.exception(), ValueError)


def test_map_in_order_with_several_iterables_and_chunks(executor):
    assert list(executor.map(add, range(10), range(10))) == [2 * x for x in range(10)]
    assert list(executor.map(square, range(25), chunksize=4)) == [x * x for x in range(25)]
    assert list(executor.map(square, [])) == []


def test_map_raises_the_items_exception_when_reached(executor):
    it = executor.map(fail, ["a"])
    with pytest.raises(ValueError, match="a"):
        next(it)


def test_map_timeout_raises_timeout_error(executor):
    it = executor.map(nap, [5, 5], timeout=0.3)
    with pytest.raises(TimeoutError):
        list(it)


@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_rejects_bad_chunksize(executor, chunksize):
    with pytest.raises(ValueError):
        executor.map(square, [1], chunksize=chunksize)


# --- cancellation, callbacks, as_completed, wait -----------------------------------------

def test_cancel_works_while_pending_not_once_running(executor):
    running = executor.submit(nap, 1.0)
    queued = [executor.submit(nap, 1.0) for _ in range(8)]
    time.sleep(0.3)  # let the executor hand the first calls to its workers
    assert not running.cancel() and running.running()
    last = queued[-1]
    assert last.cancel() and last.cancelled()
    with pytest.raises(cf.CancelledError):
        last.result(timeout=1)
    for fut in queued[:-1]:
        fut.cancel()


def test_done_callbacks_get_the_future(executor):
    seen = []
    got = threading.Event()
    fut = executor.submit(square, 7)
    fut.add_done_callback(lambda f: (seen.append(f.result()), got.set()))
    assert got.wait(30) and seen == [49]


def test_as_completed_and_wait(executor):
    futs = [executor.submit(nap, t, t) for t in (0.6, 0.05, 0.3)]
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=30)) == [0.05, 0.3, 0.6]
    futs = [executor.submit(nap, 0.05, 1), executor.submit(nap, 2, 2)]
    done, not_done = cf.wait(futs, timeout=30, return_when=cf.FIRST_COMPLETED)
    assert [f.result() for f in done] == [1] and len(not_done) == 1
    done, not_done = cf.wait(futs, timeout=30, return_when=cf.ALL_COMPLETED)
    assert len(done) == 2 and not not_done


def test_as_completed_times_out(executor):
    futs = [executor.submit(nap, 3)]
    with pytest.raises(TimeoutError):
        list(cf.as_completed(futs, timeout=0.2))


# --- shutdown ---------------------------------------------------------------------------

def test_submit_after_shutdown_raises_runtime_error(executor):
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)


def test_shutdown_waits_for_running_and_pending_work(executor):
    futs = [executor.submit(nap, 0.2, i) for i in range(5)]
    executor.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futs] == list(range(5))


def test_shutdown_cancel_futures_cancels_what_is_pending(executor):
    futs = [executor.submit(nap, 0.5, i) for i in range(12)]
    time.sleep(0.2)
    executor.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in futs)
    assert all(f.cancelled() or f.result(timeout=0) == i for i, f in enumerate(futs))


def test_shutdown_without_waiting_still_finishes_the_work(executor):
    futs = [executor.submit(nap, 0.2, i) for i in range(3)]
    t0 = time.monotonic()
    executor.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.2
    assert [f.result(timeout=30) for f in futs] == [0, 1, 2]


def test_context_manager(kind, fresh):
    with (cf.ProcessPoolExecutor(2) if kind == "process" else ClusterExecutor(2)) as ex:
        fut = ex.submit(square, 3)
    assert fut.done() and fut.result() == 9


# --- hostile objects: each fails with its expected exception and nothing hangs -----------

def test_argument_that_fails_to_pickle(executor):
    fut = executor.submit(square, Unpicklable())
    with pytest.raises((TypeError, pickle.PicklingError), match="refuses to be pickled"):
        fut.result(timeout=30)
    assert executor.submit(square, 4).result(timeout=30) == 16  # the executor still works


def test_argument_that_fails_to_unpickle_on_the_worker(executor, kind):
    fut = executor.submit(square, FailsToUnpickle())
    if kind == "process":  # the stdlib's worker cannot even read its call: the pool breaks
        with pytest.raises(BrokenProcessPool):
            fut.result(timeout=30)
        return
    with pytest.raises(Exception, match="cannot be rebuilt here"):
        fut.result(timeout=30)
    assert executor.submit(square, 5).result(timeout=30) == 25


def test_task_that_crashes_its_worker(executor, kind):
    fut = executor.submit(crash)
    with pytest.raises(BrokenProcessPool):
        fut.result(timeout=60)
    if kind == "process":
        with pytest.raises(BrokenProcessPool):
            executor.submit(square, 2)
        return
    assert executor.submit(square, 6).result(timeout=60) == 36  # a replacement took over


def test_result_that_fails_to_pickle(executor, kind):
    fut = executor.submit(give_lock)
    with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object") as info:
        fut.result(timeout=30)  # the pickling error itself, as the stdlib raises it
    if kind == "cluster":  # plus a note naming what failed, and where
        assert "the result, a lock, could not be pickled" in "".join(info.value.__notes__)
        assert "Traceback" in str(info.value.__cause__)
    assert executor.submit(square, 3).result(timeout=30) == 9


def test_result_that_fails_to_unpickle_in_the_caller(executor, kind):
    fut = executor.submit(give_fails_to_unpickle)
    expected = BrokenProcessPool if kind == "process" else Exception
    with pytest.raises(expected):
        fut.result(timeout=30)
    if kind == "cluster":
        assert "cannot be rebuilt here" in repr(fut.exception().__cause__)
        assert executor.submit(square, 2).result(timeout=30) == 4

"""pmap and preduce: ordering, batching, retries, on_error, worker death mid-map."""

import os
import signal
import threading
import time

import pytest

import clustermgr as cm
from clustermgr import ProcessExitedError, RemoteError


def square(x):
    return x * x


@pytest.mark.parametrize("batch_size", [1, 7, "auto"])
def test_ordered_results(cluster, batch_size):
    assert cm.pmap(square, range(100), batch_size=batch_size) == [x * x for x in range(100)]


def test_several_iterables_and_empty(cluster):
    assert cm.pmap(lambda a, b: a - b, [5, 6, 7], [1, 1, 1, 99]) == [4, 5, 6]
    assert cm.pmap(square, []) == []


def test_work_is_spread(cluster):
    where = cm.pmap(lambda _: (time.sleep(0.01), cm.myid())[1], range(40))
    assert set(where) == set(cluster)


def test_bad_batch_size(cluster):
    with pytest.raises(ValueError, match="batch_size"):
        cm.pmap(square, [1], batch_size=0)


def test_error_raises_without_policy(cluster):
    with pytest.raises(RemoteError, match="ZeroDivisionError"):
        cm.pmap(lambda x: 1 / x, [1, 0, 2])


def test_on_error_substitutes(cluster):
    assert cm.pmap(lambda x: 1 // x, [1, 0, 2], on_error=lambda e: -1, batch_size=2) == [1, -1, 0]


@pytest.mark.parametrize("batch_size", [1, 4, "auto"])
def test_every_failing_item_of_a_batch_is_its_own(cluster, batch_size):
    # the worker's loop resumes after an item that raised: the items after it still run,
    # once each, with one or several iterables
    xs = list(range(-6, 7))
    assert cm.pmap(lambda x: 12 // x, xs, on_error=lambda e: "bad", batch_size=batch_size) == \
        [12 // x if x else "bad" for x in xs]
    pairs = list(zip(xs, xs[::-1], strict=True))
    assert cm.pmap(lambda a, b: a // b, xs, xs[::-1], on_error=lambda e: "bad",
                   batch_size=batch_size) == [a // b if b else "bad" for a, b in pairs]


def flaky(path, x):
    """Fails on the first attempt for odd x (a marker file remembers the attempt)."""
    marker = os.path.join(path, f"seen-{x}")
    if x % 2 and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"transient failure for {x}")
    return x


def test_retry_on_exception(cluster, tmp_path):
    out = cm.pmap(lambda x: flaky(str(tmp_path), x), range(10), retry_delays=[0.01], batch_size=3)
    assert out == list(range(10))


def test_retry_check_can_veto(cluster, tmp_path):
    with pytest.raises(RemoteError, match="transient failure"):
        cm.pmap(lambda x: flaky(str(tmp_path), x), range(4), retry_delays=[0.01],
                retry_check=lambda e: "transient" not in str(e))


def test_distributed_false_runs_here(cluster, tmp_path):
    assert cm.pmap(lambda _: cm.myid(), range(3), distributed=False) == [1, 1, 1]
    out = cm.pmap(lambda x: flaky(str(tmp_path), x), range(4), distributed=False, retry_delays=[0])
    assert out == [0, 1, 2, 3]


def test_timeout(cluster):
    with pytest.raises(TimeoutError, match="timeout=0.3"):
        cm.pmap(time.sleep, [30, 30], timeout=0.3)
    cm.interrupt()  # free the workers for the next tests
    assert cm.pmap(square, [3]) == [9]


def test_progress_bar(cluster, capsys):
    cm.pmap(square, range(20), progress=True)  # stderr is not a terminal here: no bar
    assert "pmap" not in capsys.readouterr().err
    cm.pmap(square, range(20), progress="always")
    err = capsys.readouterr().err
    assert "pmap" in err and "20/20" in err


def test_progress_bar_counts_failures_and_retries(cluster, capsys):
    def flaky(x):
        import random

        if x % 5 == 0 and random.random() < 2:  # always fails
            raise ValueError(x)
        return x

    out = cm.pmap(flaky, range(10), progress="always", retry_delays=[0.01], on_error=lambda e: None)
    assert out.count(None) == 2
    err = capsys.readouterr().err
    assert "failed=2" in err and "retried=2" in err


def test_preduce(cluster):
    assert cm.preduce(lambda a, b: a + b, square, range(1000)) == sum(x * x for x in range(1000))
    assert cm.preduce(max, abs, [-7, 3]) == 7
    with pytest.raises(TypeError, match="empty"):
        cm.preduce(max, abs, [])


def _slow_reporting(chan, x):
    chan.put((cm.myid(), x))
    time.sleep(0.2)
    return x * 10


def _kill_first_worker_seen(chan, pids, killed):
    wid, _ = chan.take(timeout=60)
    os.kill(pids[wid], signal.SIGKILL)
    killed.append(wid)


def _run_with_kill(**pmap_kwargs):
    ids = cm.addprocs(3)
    pids = {w: cm.remotecall_fetch(os.getpid, w) for w in ids}
    chan = cm.RemoteChannel()
    killed = []
    killer = threading.Thread(target=_kill_first_worker_seen, args=(chan, pids, killed))
    killer.start()
    try:
        return cm.pmap(lambda x: _slow_reporting(chan, x), range(30), **pmap_kwargs), killed
    finally:
        killer.join(60)


def test_kill_9_mid_pmap_with_retries(fresh):
    out, killed = _run_with_kill(retry_delays=[0.05, 0.05])
    assert out == [x * 10 for x in range(30)]  # every result, each exactly once, in order
    assert len(killed) == 1 and killed[0] not in cm.workers()


def test_kill_9_mid_pmap_without_retries(fresh):
    with pytest.raises(ProcessExitedError) as info:
        _run_with_kill()
    assert "SIGKILL" in str(info.value)
    assert info.value.worker_id not in cm.workers()
    assert len(cm.workers()) == 2 and cm.pmap(square, [2]) == [4]  # the others keep working

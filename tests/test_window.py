"""The pipelining window: deep for tiny calls, one at a time for long ones, and no short
call stuck behind a long one while another worker is free (pmap, the executor, joblib)."""

import concurrent.futures as cf
import fcntl
import threading

import clustermgr as cm
from clustermgr import window
from clustermgr.window import Window


def _complete(w: Window, wid: int, run: float, latency: float, monkeypatch, clock: list) -> None:
    token = w.sent(wid)
    clock[0] += latency + run
    w.done(wid, token, run)


def _fake_clock(monkeypatch) -> list:
    clock = [1000.0]
    monkeypatch.setattr(window.time, "perf_counter", lambda: clock[0])
    return clock


def test_a_worker_with_no_measure_gets_one_call():
    assert Window().depth(2) == 1


def test_tiny_calls_get_a_deep_window_long_ones_one(monkeypatch):
    clock = _fake_clock(monkeypatch)
    w = Window()
    _complete(w, 2, 2e-6, 300e-6, monkeypatch, clock)  # 2 us calls, 300 us round trip
    assert w.depth(2) == window.MAX_DEPTH
    _complete(w, 3, 100e-6, 300e-6, monkeypatch, clock)
    assert w.depth(3) == 1 + 3  # enough to cover the latency, no more
    _complete(w, 4, 1.0, 300e-6, monkeypatch, clock)
    assert w.depth(4) == 1


def test_a_call_that_turns_out_long_stops_more_queuing_behind_it(monkeypatch):
    clock = _fake_clock(monkeypatch)
    w = Window()
    for _ in range(3):
        _complete(w, 2, 2e-6, 300e-6, monkeypatch, clock)
    assert w.depth(2) == window.MAX_DEPTH
    w.sent(2)
    clock[0] += 1.0  # out for a second: far longer than its calls run
    assert w.depth(2) == 1


def test_queued_calls_do_not_inflate_the_latency(monkeypatch):
    # a call sent behind others waits for them: its round trip must not count as latency,
    # or the window would grow with its own queue
    clock = _fake_clock(monkeypatch)
    w = Window()
    _complete(w, 2, 100e-6, 300e-6, monkeypatch, clock)
    tokens = [w.sent(2) for _ in range(4)]
    for t in tokens:
        clock[0] += 1e-3  # each waited behind the ones before it
        w.done(2, t, 100e-6)
    assert w.depth(2) == 4


def test_a_gone_worker_is_forgotten(monkeypatch):
    clock = _fake_clock(monkeypatch)
    w = Window()
    _complete(w, 2, 10e-6, 300e-6, monkeypatch, clock)
    w.forget(2)
    assert w.depth(2) == 1
    w.done(2, 99, 1.0)  # a late completion of a forgotten worker's call is ignored


def test_the_worker_reports_how_long_a_call_ran(fresh):
    cm.addprocs(1)
    fut = cm.remotecall(__import__("time").sleep, 2, 0.05)
    fut.fetch(30)
    assert 0.05 <= fut.run_time < 5
    quick = cm.remotecall(abs, 2, -1)
    quick.fetch(30)
    assert 0 <= quick.run_time < 0.05


def _hold(gate):
    return gate.fetch(60)


def test_executor_short_tasks_do_not_wait_behind_one_that_waits_for_a_future(fresh):
    # task 1 blocks until the test releases it, after the other nine are done: a task
    # queued behind it would never finish, and the wait would time out (a task that waits
    # for a Future runs the calls that arrive meanwhile)
    gate = cm.Future()
    with cm.ClusterExecutor(2) as ex:
        ex.submit(abs, 0).result(60)  # both workers measured: a deep window for tiny tasks
        ex.submit(abs, 0).result(60)
        futs = [ex.submit(_hold, gate) if i == 1 else ex.submit(abs, -i) for i in range(10)]
        rest = [f for i, f in enumerate(futs) if i != 1]
        done, not_done = cf.wait(rest, timeout=60)
        gate.put("go")
        assert not not_done
        assert futs[1].result(60) == "go" and [f.result() for f in rest] == [0] + list(range(2, 10))


def test_pmap_tiny_items_keep_several_calls_in_flight(fresh):
    # the window deepens for tiny calls: the results are the same, in order
    cm.addprocs(2)
    assert cm.pmap(abs, range(-3000, 0)) == list(range(3000, 0, -1))


def _blocked(path: str) -> str:
    """Block in C (no clustermgr wait, so no nested calls) until the test unlocks *path*."""
    with open(path) as fh:
        fcntl.flock(fh, fcntl.LOCK_SH)
    return "released"


class _Lock:
    """An exclusive flock the test holds while a task blocks on it."""

    def __init__(self, tmp_path) -> None:
        self.path = str(tmp_path / "hold")
        open(self.path, "w").close()
        self.fh = open(self.path)
        fcntl.flock(self.fh, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def test_executor_moves_tasks_queued_behind_a_long_one_to_an_idle_worker(fresh, tmp_path):
    # both workers have deep windows (tiny tasks measured), so tasks queue behind the one
    # that blocks; once it is overdue they are withdrawn and run on the other worker
    lock = _Lock(tmp_path)
    try:
        with cm.ClusterExecutor(2) as ex:
            for _ in range(5):
                assert list(ex.map(abs, range(-200, 0))) == list(range(200, 0, -1))
            futs = [ex.submit(_blocked, lock.path)] + [ex.submit(abs, -i) for i in range(1, 60)]
            done, not_done = cf.wait(futs[1:], timeout=60)
            assert not not_done, f"{len(not_done)} tasks stayed behind the blocked one"
            assert not futs[0].done()
            lock.release()
            assert futs[0].result(60) == "released"
            assert [f.result() for f in futs[1:]] == list(range(1, 60))
    finally:
        lock.release() if not lock.fh.closed else None


def _tiny_or_blocked(i: int, path: str, box) -> int:
    if i == 0:
        return len(_blocked(path))
    box.put(i)
    return i


def test_pmap_moves_batches_queued_behind_a_long_one_to_an_idle_worker(fresh, tmp_path):
    cm.addprocs(2)
    for _ in range(5):  # deep windows on both workers
        cm.pmap(abs, range(500))
    lock = _Lock(tmp_path)
    box = cm.RemoteChannel()
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault(
        "r", cm.pmap(_tiny_or_blocked, range(60), [lock.path] * 60, [box] * 60)))
    t.start()
    try:
        got = sorted(box.take(timeout=60) for _ in range(59))  # all but the blocked one
        assert got == list(range(1, 60))
    finally:
        lock.release()
        t.join(60)
    assert out["r"] == [len("released")] + list(range(1, 60))

"""The master's read lease: a pmap reads its own results in the I/O thread's place
(``Node.reading``), and everything else keeps working meanwhile and after."""

import signal
import threading
import time

import pytest

import clustermgr as cm
from clustermgr.cluster import master


def _wait_for(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def _slow_identity(x):
    time.sleep(0.05)
    return x


def test_the_io_thread_reads_again_after_a_pmap(cluster):
    m = master()
    assert cm.pmap(abs, range(-500, 0)) == list(range(500, 0, -1))
    assert m._leaseholder == 0
    fut = cm.remotecall(abs, 2, -7)
    _wait_for(fut.done)  # nobody waits in fetch: the I/O thread read the answer
    assert fut.fetch() == 7


def test_a_thread_that_waits_reads_its_own_answer(cluster):
    m = master()
    orig = m._from_network
    own = []

    def spy(frames):
        readers.append(threading.get_ident())
        orig(frames)

    m._from_network = spy
    try:
        for _ in range(5):  # a waiter that finds the role held longer leaves it to its holder
            readers: list = []
            cm.remotecall(time.sleep, 2, 0.1).fetch(timeout=30)
            own.append(threading.get_ident() in readers)
    finally:
        del m._from_network
    assert any(own)  # read where it was awaited, no hand-off
    fut = cm.remotecall(abs, 3, -3)
    _wait_for(fut.done)  # and the I/O thread reads again once nobody waits


def test_other_threads_calls_complete_while_a_pmap_reads(cluster):
    m = master()
    started = threading.Event()
    seen: list = []

    def other():
        _wait_for(lambda: m._leaseholder != 0)
        started.set()
        seen.extend(cm.remotecall_fetch(abs, w, -w, ) for w in (2, 3) for _ in range(20))

    t = threading.Thread(target=other)
    t.start()
    assert cm.pmap(_slow_identity, range(40)) == list(range(40))
    t.join(60)
    assert started.is_set() and seen == [2] * 20 + [3] * 20


def test_two_pmaps_at_once_both_complete(cluster):
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("t", cm.pmap(_slow_identity, range(30))))
    t.start()
    mine = cm.pmap(_slow_identity, range(30, 60))
    t.join(60)
    assert mine == list(range(30, 60)) and out["t"] == list(range(30))


def test_ctrl_c_during_a_pmap_raises_at_a_clean_point(fresh):
    cm.addprocs(2)
    m = master()
    main = threading.main_thread().ident

    def interrupt():
        _wait_for(lambda: m._leaseholder == main)
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        cm.pmap(_slow_identity, range(400))
    t.join(30)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert m._leaseholder == 0
    fut = cm.remotecall(abs, 2, -2)
    _wait_for(fut.done)  # the I/O thread reads again
    # nothing half-handled: the cluster answers, results in order
    assert cm.pmap(abs, range(-50, 0)) == list(range(50, 0, -1))
    assert cm.remotecall_fetch(abs, 3, -3) == 3



def test_a_busy_executor_and_a_pmap_at_once_both_complete(fresh):
    # the pmap holds the lease; the executor's results are read by the pmap's thread
    with cm.ClusterExecutor(2) as ex:
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("ex", list(ex.map(abs, range(-2000, 0)))))
        t.start()
        assert cm.pmap(_slow_identity, range(20)) == list(range(20))
        t.join(60)
        assert out["ex"] == list(range(2000, 0, -1))


def test_only_one_thread_takes_the_lease(cluster):
    m = master()
    entered = threading.Event()
    release = threading.Event()
    seen: dict = {}

    def hold():
        with m.reading() as got:
            seen["first"] = got
            entered.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(30)
    with m.reading() as got:  # another thread holds it: this one does not wait for it
        seen["second"] = got
    release.set()
    t.join(30)
    assert seen == {"first": True, "second": False}
    fut = cm.remotecall(abs, 2, -2)
    _wait_for(fut.done)  # the I/O thread reads again


def test_ctrl_c_while_the_main_thread_reads_its_answer_raises_at_a_clean_point(cluster):
    m = master()
    main = threading.get_ident()
    fut = cm.remotecall(time.sleep, 2, 5.0)

    def interrupt():
        _wait_for(lambda: m.link.reader == main)  # the main thread reads in fetch
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        fut.fetch(timeout=30)
    t.join(30)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert m.link.reader != main
    assert cm.remotecall_fetch(abs, 3, -3) == 3  # nothing half-handled
    cm.interrupt([2])
    with pytest.raises(cm.RemoteError):
        fut.fetch(timeout=30)

"""RemoteChannel from every process: put/take/fetch/close, bounds, timeouts without loss."""

import pytest

import clustermgr as cm
from clustermgr import ChannelClosedError, RemoteChannel


def test_master_owned_channel_between_workers(cluster):
    chan = RemoteChannel()
    cm.remotecall_wait(lambda c: [c.put(i) for i in range(3)], 2, chan)
    assert cm.remotecall_fetch(lambda c: [c.take(10) for _ in range(3)], 3, chan) == [0, 1, 2]


def test_worker_owned_channel(cluster):
    chan = RemoteChannel(owner=2, maxsize=2)
    chan.put("a")
    assert chan.fetch() == "a" and chan.isready() and len(chan) == 1
    assert cm.remotecall_fetch(lambda c: c.take(10), 3, chan) == "a"
    assert not chan.isready()


def test_blocking_take_wakes_on_put(cluster):
    chan = RemoteChannel(owner=3)
    fut = cm.remotecall(lambda c: c.take(), 2, chan)
    assert not fut.wait(0.1)
    chan.put(42)
    assert fut.fetch(10) == 42


@pytest.mark.parametrize("owner", [1, 2])
def test_bounded_put_times_out_and_loses_nothing(cluster, owner):
    chan = RemoteChannel(owner=owner, maxsize=1)
    chan.put(1)
    with pytest.raises(TimeoutError):
        chan.put(2, timeout=0.1)
    assert chan.take() == 1
    with pytest.raises(TimeoutError):
        chan.take(timeout=0.1)
    chan.put(3)
    assert chan.take() == 3  # not swallowed by the take that timed out
    assert len(chan) == 0


def test_close_and_iterate(cluster):
    chan = RemoteChannel(owner=2)
    for i in range(3):
        chan.put(i)
    chan.close()
    with pytest.raises(ChannelClosedError):
        chan.put(9)
    assert list(chan) == [0, 1, 2]
    with pytest.raises(ChannelClosedError):
        chan.take()


def test_close_wakes_blocked_takers(cluster):
    chan = RemoteChannel()
    fut = cm.remotecall(lambda c: c.take(), 2, chan)
    assert not fut.wait(0.1)
    chan.close()
    with pytest.raises(cm.RemoteError, match="ChannelClosedError"):
        fut.fetch(10)


def test_bad_arguments(cluster):
    with pytest.raises(ValueError):
        RemoteChannel(maxsize=-1)
    with pytest.raises(cm.ClusterError, match="no worker 99"):
        RemoteChannel(owner=99)
    chan = RemoteChannel(owner=3)
    chan.put("first")
    assert cm.fetch(chan) == "first" and len(chan) == 1  # fetch() leaves the item

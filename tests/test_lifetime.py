"""Distributed reference counting: owners free Futures, channels and pools once no
process holds them, and a dead process's references go with it."""

from __future__ import annotations

import gc
import os
import signal
import time

import numpy as np

import clustermgr as cm
from clustermgr.cluster import master
from clustermgr.transport import current_node

KEPT: list = []


def _owned_sizes() -> dict[str, int]:
    return current_node().refs.sizes()


def _settled(check, timeout: float = 15.0) -> bool:
    """Releases travel in batches once a tick (0.25 s) after a garbage collection on the
    holder: poll for the outcome (counts in another process have no event to await)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        try:
            cm.everywhere(gc.collect)
        except Exception:  # noqa: BLE001 - a worker that is dying is no holder any more
            pass
        if check():
            return True
        time.sleep(0.1)
    return check()


def _keep(x):
    KEPT.append(x)
    return len(KEPT)


def _last_kept_fetched():
    return KEPT[-1].fetch()


def _drop_kept():
    KEPT.clear()
    gc.collect()


def _fetch(x):
    return x.fetch()


def _worker_channels() -> int:
    return len(current_node().channels.channels)


def test_futures_fetched_elsewhere_are_released_by_their_owner(cluster):
    m = master()
    futs = [cm.remotecall(lambda i=i: i * 2, cluster[0]) for i in range(100)]
    got = [cm.remotecall_fetch(_fetch, cluster[1], f) for f in futs]
    assert got == [i * 2 for i in range(100)]
    keys = {("f", f.id) for f in futs}
    del futs
    # these, not a count: what earlier tests dropped may still be settling meanwhile
    assert _settled(lambda: not keys & set(m.refs.owned)), m.refs.sizes()


def test_an_owner_keeps_a_future_while_another_process_holds_it(cluster):
    m = master()
    fut = cm.Future()
    cm.remotecall_fetch(_keep, cluster[0], fut)
    fid = fut.id
    del fut
    gc.collect()
    assert m.refs.lookup("f", fid) is not None  # worker 2 still holds it
    m.refs.lookup("f", fid).put(41)
    assert cm.remotecall_fetch(_last_kept_fetched, cluster[0]) == 41
    cm.remotecall_fetch(_drop_kept, cluster[0])
    assert _settled(lambda: m.refs.lookup("f", fid) is None)


def test_a_channel_and_its_items_are_freed_when_no_process_holds_it(cluster):
    owner = cluster[0]
    base = cm.remotecall_fetch(_worker_channels, owner)
    chan = cm.RemoteChannel(owner)
    chan.put(np.ones(1 << 20))
    chan.close()  # closing does not free it; the last handle does
    assert cm.remotecall_fetch(_worker_channels, owner) == base + 1
    cm.remotecall_fetch(_keep, cluster[1], chan)  # another process holds a handle too
    del chan
    gc.collect()
    time.sleep(0.6)  # two ticks: the master's release has gone out
    assert cm.remotecall_fetch(_worker_channels, owner) == base + 1
    cm.remotecall_fetch(_drop_kept, cluster[1])
    assert _settled(lambda: cm.remotecall_fetch(_worker_channels, owner) == base)


def test_a_channel_owned_by_its_creator_is_freed_with_its_handle(cluster):
    m = master()
    base = len(m.channels.channels)
    for _ in range(20):
        chan = cm.RemoteChannel()
        chan.put("x")
        assert cm.remotecall_fetch(lambda c: c.take(), cluster[0], chan) == "x"
    del chan
    assert _settled(lambda: len(m.channels.channels) == base)


def test_a_dead_process_drops_its_references(fresh):
    wid = cm.addprocs(1)[0]
    m = master()
    base = m.refs.sizes()["owned"]
    futs = [cm.Future() for _ in range(10)]
    cm.remotecall_fetch(_keep, wid, futs)
    del futs
    gc.collect()
    assert m.refs.sizes()["owned"] == base + 10
    os.kill(cm.remotecall_fetch(os.getpid, wid), signal.SIGKILL)
    assert _settled(lambda: m.refs.sizes()["owned"] == base)


def test_a_reference_that_comes_home_is_the_owners_object(cluster):
    fut = cm.Future()
    back = cm.remotecall_fetch(lambda f: f, cluster[0], fut)
    assert back is fut
    chan = cm.RemoteChannel()
    assert cm.remotecall_fetch(lambda c: c, cluster[1], chan) is chan

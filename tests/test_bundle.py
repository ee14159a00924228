"""BUNDLE: several messages of one sender in one frame (``protocol.pack_bundle``,
``transport.Cork``).  Each inner message keeps what it would have alone: its own result,
revocation, relay, and order with the output before it."""

import time

import pytest

import clustermgr as cm
from clustermgr import protocol as P
from clustermgr.calls import get_node
from clustermgr.errors import CallRevoked, ProtocolError
from clustermgr.protocol import Kind
from clustermgr.worker import loop


def _noop(x):
    return x


def _shout(x):
    print(f"line {x}")
    return x


def _nested_pmap(other):
    return cm.pmap(_noop, range(300), pool=cm.WorkerPool([other]))


def test_a_bundle_round_trips_and_a_truncated_one_is_refused():
    flat = []
    for k in range(5):
        flat += [P.pack_header(Kind.CALL, 2, 1, 3, 10 + k, 0), b"x" * k]
    packed = P.pack_bundle(flat)
    out = P.unpack_bundle(packed)
    assert [(h.kind, h.id, bytes(pair[1])) for h, pair in out] == \
        [(Kind.CALL, 10 + k, b"x" * k) for k in range(5)]
    for cut in (1, P.HEADER_SIZE, len(packed) - 1):
        with pytest.raises(ProtocolError, match="truncated"):
            P.unpack_bundle(packed[:cut])


def _counting_bundles(monkeypatch) -> list[int]:
    """Patch the master's outgoing path to record the size of every BUNDLE it sends."""
    node = get_node()
    sizes: list[int] = []
    route = node._route

    def spy(frames):
        head = bytes(frames[0])
        if head[1] == Kind.BUNDLE:
            sizes.append(P.unpack_header(head).ref)
        route(frames)

    monkeypatch.setattr(node, "_route", spy)
    return sizes


def test_calls_sent_in_a_burst_travel_bundled_each_with_its_own_result(cluster, monkeypatch):
    sizes = _counting_bundles(monkeypatch)
    node = get_node()
    with node.corked():
        futs = [cm.remotecall(_noop, cluster[k % 2], k) for k in range(300)]
    assert [f.fetch(timeout=30) for f in futs] == list(range(300))
    assert sum(sizes) > 250 and max(sizes) <= P.BUNDLE_MAX  # nearly all went in bundles


def test_pmap_one_item_per_call_uses_bundles(cluster, monkeypatch):
    sizes = _counting_bundles(monkeypatch)
    assert cm.pmap(_noop, range(5000)) == list(range(5000))
    assert sizes and max(sizes) > 1


def test_a_bundled_call_not_yet_started_can_be_withdrawn(cluster):
    node = get_node()
    w = cluster[0]
    with node.corked():
        slow = cm.remotecall(time.sleep, w, 1.0)
        queued = [cm.remotecall(_noop, w, k) for k in range(5)]
    node.revoke(queued[-1])
    assert slow.fetch(timeout=30) is None
    assert [f.fetch(timeout=30) for f in queued[:-1]] == [0, 1, 2, 3]
    with pytest.raises(CallRevoked):
        queued[-1].fetch(timeout=30)


def test_a_result_held_behind_a_long_task_still_goes_out(cluster):
    # results are held while the worker has more calls of the bundle to run; one that runs
    # long must not keep the finished ones back (the I/O thread sends them at takeover)
    node = get_node()
    w = cluster[0]
    with node.corked():
        quick = cm.remotecall(_noop, w, 1)
        slow = cm.remotecall(time.sleep, w, 3.0)
    assert quick.wait(1.0) and not slow.done()
    assert loop.TAKEOVER_AFTER < 1.0
    slow.fetch(timeout=30)


def test_output_of_bundled_calls_arrives_before_their_results(cluster, capsys):
    assert cm.pmap(_shout, range(200), pool=cm.WorkerPool([cluster[0]])) == list(range(200))
    out = capsys.readouterr().out
    assert all(f"line {x}" in out for x in range(200))  # no waiting: all there already


def test_bundled_results_between_workers_are_relayed(cluster):
    a, b = cluster
    assert cm.remotecall_fetch(_nested_pmap, a, b) == list(range(300))


def test_a_bundle_with_a_forged_sender_is_dropped(cluster):
    node = get_node()
    w = node.workers[cluster[0]]
    forged = P.pack_bundle([P.pack_header(Kind.OUTPUT, 0, cluster[1], 1), b"not from me\n"])
    before = node.rejected_frames
    node._unbundle(w, [w.identity, P.pack_header(Kind.BUNDLE, 0, w.id, 1, 0, 1), forged])
    assert node.rejected_frames == before + 1
    node._unbundle(w, [w.identity, P.pack_header(Kind.BUNDLE, 0, w.id, 1, 0, 1), b"\x05"])
    assert node.rejected_frames == before + 2  # truncated: dropped, nothing else happens

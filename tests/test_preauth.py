"""What a peer without the secret can do to a listener: nothing that stops, blocks or
bloats it, and nothing it sends is unpickled.  Regression tests for each way it once could,
then a fuzz run (random and structured frames, bounded in count and time, loopback only)
against the master, an elastic endpoint, the session daemon, and, the other way round,
against a worker dialling a hostile "master"."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import subprocess
import sys
import time
import tracemalloc

import pytest
import zmq

import clustermgr as cm
from clustermgr import protocol as P
from clustermgr.auth import Gate, ReplyBudget
from clustermgr.cluster import master
from clustermgr.errors import AuthError

FUZZ_MESSAGES = 1500  # per listener
FUZZ_SECONDS = 15.0


class Canary:
    """A pickle that creates a file when unpickled: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def dealer(address: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def hello(body: bytes) -> list[bytes]:
    return [P.pack_header(P.Kind.HELLO, 0, 0, 1), body]


def replies(sock: zmq.Socket, n: int, timeout: float = 10.0) -> list[list[bytes]]:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
        out.append(sock.recv_multipart())
    return out


def serving(timeout: float = 30.0) -> bool:
    """The master still runs calls (its I/O thread is alive and not stalled)."""
    return cm.remotecall(sum, cm.workers()[0], [1, 2]).fetch(timeout=timeout) == 3


def nested(depth: int) -> bytes:
    return b'{"nonce":' + b"[" * depth + b"]" * depth + b"}"


# --- regressions ----------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    nested(100_000)[: P.HANDSHAKE_LIMIT - 10] + b"]}",  # deep, within the size limit
    b"[" * 5000 + b"]" * 5000,                          # deep, as the probe sent it
    b'{"nonce": ' + b"9" * 5000 + b"}",                 # past Python's int digit limit
    b'{"nonce": "' + b"zz" * 16 + b'"}',                # not hex
    b'{"nonce": 7}', b'{"nonce": null}', b"[]", b'"x"', b"\xff\xfe", b"",
])
def test_malformed_hello_is_refused_and_the_master_keeps_serving(cluster, body):
    sock = dealer(master().address)
    try:
        sock.send_multipart(hello(body))
        got = replies(sock, 1)
        assert got and P.unpack_header(got[0][0]).kind == P.Kind.REFUSED
    finally:
        sock.close()
    assert master()._thread.is_alive()
    assert serving()


def test_nested_json_is_refused_without_raising():
    for payload in (b"[" * 100_000, nested(50), b'{"a":' * 20 + b"1" + b"}" * 20):
        with pytest.raises(P.ProtocolError):
            P.load_json(payload)
    assert P.load_json(b'{"a":{"b":[1,2]}}') == {"a": {"b": [1, 2]}}


def test_oversized_frame_is_refused_before_it_is_copied(cluster):
    sock = dealer(master().address)
    big = bytearray(64 << 20)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        sock.send_multipart(hello(bytes(big)), copy=False)
        del big
        base = tracemalloc.get_traced_memory()[0]
        got = replies(sock, 1, timeout=30)
        assert got and b"too large" in got[0][1]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        sock.close()
    # The master's I/O thread runs in this process: a copy of the 64 MiB body would show.
    assert peak - base < 8 << 20
    assert serving()


def test_abandoned_handshakes_do_not_keep_a_worker_out(cluster):
    m = master()
    ctx = zmq.Context()
    try:
        for _ in range(20):  # 2,000 peers, each its own routing id, none answering
            socks = [ctx.socket(zmq.DEALER) for _ in range(100)]
            for sock in socks:
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(m.address)
                sock.send_multipart(hello(P.dump_json({"nonce": P.new_nonce().hex()})))
            for sock in socks:  # the master has taken each HELLO: it sent a CHALLENGE
                assert P.unpack_header(replies(sock, 1)[0][0]).kind == P.Kind.CHALLENGE
                sock.close()
        new = cm.addprocs(1)  # a worker holding the secret joins at once
        assert cm.remotecall_fetch(os.getpid, new[0]) > 0
        cm.rmprocs(new)
    finally:
        ctx.destroy(linger=0)


def test_the_gate_keeps_no_state_per_pending_handshake():
    gate = Gate(b"s" * 32, b"master", b"worker")
    for i in range(100_000):
        gate.challenge(i.to_bytes(5, "big"), {"nonce": P.new_nonce().hex()})
    assert gate._used == {}  # nothing stored for the 100,000 unanswered challenges
    cn = P.new_nonce()
    challenge = gate.challenge(b"peer", {"nonce": cn.hex()})
    from clustermgr.auth import client_auth

    auth = client_auth(b"s" * 32, b"master", b"worker", cn, challenge)
    with pytest.raises(AuthError, match="does not answer a CHALLENGE"):
        gate.verify(b"another peer", auth)  # a ticket is bound to its peer
    gate.verify(b"peer", auth)
    with pytest.raises(AuthError, match="already used"):
        gate.verify(b"peer", auth)  # and cannot be replayed


def test_a_peer_that_never_reads_gets_a_bounded_number_of_replies(cluster):
    sock = dealer(master().address)
    try:
        for i in range(500):  # well-framed, so each could be answered with REFUSED
            sock.send_multipart([P.pack_header(P.Kind.CALL, 0, 2, 1, i), b"x"])
        got = replies(sock, 500, timeout=3)
        assert 1 <= len(got) <= ReplyBudget().per_peer
    finally:
        sock.close()
    assert serving()


def test_rejections_are_logged_at_a_bounded_rate(cluster, caplog):
    m = master()
    m.rejects._logged_at = float("-inf")  # as for a fresh master
    m.rejects._since = 0
    with caplog.at_level(logging.WARNING, logger="clustermgr"):
        sock = dealer(m.address)
        try:
            before = m.rejected_frames
            for _ in range(2000):
                sock.send_multipart([b"garbage"])
            deadline = time.monotonic() + 20
            while m.rejected_frames - before < 2000 and time.monotonic() < deadline:
                time.sleep(0.05)  # counters of another thread: nothing to await
        finally:
            sock.close()
    assert m.rejected_frames - before == 2000
    drops = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert 1 <= len(drops) <= 2, [r.getMessage() for r in drops]


def test_a_hand_written_worker_still_authenticates(cluster):
    """The full handshake spelled out, as a worker in another language would do it."""
    m = master()
    sock = dealer(m.address)
    try:
        cn = P.new_nonce()
        sock.send_multipart(hello(P.dump_json({"nonce": cn.hex()})))
        challenge = P.load_json(replies(sock, 1)[0][1])
        sn = bytes.fromhex(challenge["nonce"])
        assert P.check_proof(m.secret, b"master", cn, sn, challenge["proof"])
        auth = {"proof": P.proof(m.secret, b"worker", cn, sn), "client_nonce": cn.hex(),
                "nonce": sn.hex(), "versions": P.versions(), "pid": "not a number"}
        sock.send_multipart([P.pack_header(P.Kind.AUTH, 0, 0, 1), P.dump_json(auth)])
        welcome = replies(sock, 1)[0]
        assert P.unpack_header(welcome[0]).kind == P.Kind.WELCOME
        wid = P.load_json(welcome[1])["id"]
        sock.send_multipart([P.pack_header(P.Kind.BYE, 0, wid, 1), b""])
    finally:
        sock.close()


# --- the fuzz run ---------------------------------------------------------------------

def _json_variants(rng: random.Random, canary: bytes) -> bytes:
    choices = [
        lambda: P.dump_json({"nonce": P.new_nonce().hex()}),
        lambda: P.dump_json({"nonce": os.urandom(rng.randrange(0, 40)).hex()}),
        lambda: P.dump_json({"proof": "0" * 64, "client_nonce": P.new_nonce().hex(),
                             "nonce": os.urandom(32).hex(), "versions": P.versions()}),
        lambda: P.dump_json({"proof": ["x"], "nonce": {"a": 1}, "client_nonce": 3}),
        lambda: nested(rng.randrange(10, 3000)),
        lambda: b'{"nonce": ' + b"1" * rng.randrange(1, 9000) + b"}",
        lambda: b'{"nonce": NaN, "x": Infinity}',
        lambda: json.dumps({"k" * rng.randrange(1, 50): "\ud800"}).encode(),
        lambda: os.urandom(rng.randrange(0, 512)),
        lambda: canary,
        lambda: b"",
    ]
    return rng.choice(choices)()


def _master_frames(rng: random.Random, canary: bytes) -> list[bytes]:
    roll = rng.random()
    if roll < 0.2:  # random frames
        return [os.urandom(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 6))]
    kind = rng.choice([k.value for k in P.Kind] + [0, 99, 255])
    head = P._HEADER.pack(rng.choice([P.PROTOCOL_VERSION] * 4 + [0, 2]), kind,
                          rng.randrange(0, 1 << 16), rng.randrange(0, 1 << 32),
                          rng.choice([1, 2, rng.randrange(0, 1 << 32)]), rng.randrange(0, 1 << 64),
                          rng.randrange(0, 1 << 64))
    if roll < 0.3:
        head = head[: rng.randrange(0, len(head))]
    body = [_json_variants(rng, canary) for _ in range(rng.choice([0, 1, 1, 1, 2, 5]))]
    return [head, *body]


def _session_frames(rng: random.Random, canary: bytes) -> list[bytes]:
    kind = rng.choice([b"HELLO", b"AUTH", b"REQ", b"OK", os.urandom(rng.randrange(0, 9))])
    body = [_json_variants(rng, canary) for _ in range(rng.choice([0, 1, 1, 2, 4]))]
    return [kind, *body]


def fuzz(address: str, make, canary_path: str, seed: int) -> int:
    """Send up to FUZZ_MESSAGES hostile messages to *address* within FUZZ_SECONDS, from a
    few peers that come and go; read nothing back.  Returns how many were sent."""
    rng = random.Random(seed)
    canary = pickle.dumps(Canary(canary_path))
    socks = [dealer(address) for _ in range(4)]
    deadline, sent = time.monotonic() + FUZZ_SECONDS, 0
    try:
        while sent < FUZZ_MESSAGES and time.monotonic() < deadline:
            i = rng.randrange(len(socks))
            if rng.random() < 0.02:  # a new peer (a new routing id)
                socks[i].close()
                socks[i] = dealer(address)
            socks[i].send_multipart(make(rng, canary))
            sent += 1
    finally:
        for sock in socks:
            sock.close()
    return sent


def test_fuzz_the_master_and_an_elastic_endpoint(fresh, tmp_path):
    from clustermgr.managers.elastic import ElasticManager

    elastic = ElasticManager(addr="127.0.0.1")
    try:
        cm.addprocs(1)
        m = master()
        canary = tmp_path / "canary"
        for seed, address in enumerate([m.address, elastic.address]):
            before = m.rejected_frames
            assert fuzz(address, _master_frames, str(canary), seed) > 100
            assert serving()
            assert m.rejected_frames > before
        assert m._thread.is_alive()
        assert not canary.exists()
        assert cm.pmap(abs, range(-50, 0)) == list(range(50, 0, -1))
    finally:
        elastic.close()


def test_fuzz_the_session_daemon(tmp_path, monkeypatch):
    from clustermgr.session import attach_session, start_session

    monkeypatch.setenv("CLUSTERMGR_HOME", str(tmp_path / "home"))
    s = start_session(name="fuzzed", nworkers=1)
    try:
        address = json.loads((s.dir / "credential").read_text())["address"]
        canary = tmp_path / "canary"
        assert fuzz(address, _session_frames, str(canary), 7) > 100
        assert fuzz(address, _master_frames, str(canary), 8) > 100
        assert not canary.exists()
        assert s.state() == "running"
        # the same client keeps working, and so does a new one
        task = s.submit(abs, -4)
        assert s.collect(wait=True, timeout=60)[task] == 4
        assert attach_session(s.id).status().state == "running"
    finally:
        s.end()


HOSTILE_CHALLENGES = [
    [P.pack_header(P.Kind.CHALLENGE, 0, 1, 0), nested(5000)],
    [P.pack_header(P.Kind.CHALLENGE, 0, 1, 0), b'{"nonce": ' + b"7" * 6000 + b"}"],
    [P.pack_header(P.Kind.CHALLENGE, 0, 1, 0), P.dump_json({"nonce": "ab", "proof": 3})],
    [P.pack_header(P.Kind.CHALLENGE, 0, 1, 0), b"x" * (2 << 20)],
    [b"short header", b"{}"],
    [P.pack_header(P.Kind.WELCOME, 0, 1, 0), P.dump_json({"id": 2})],
    [P.pack_header(P.Kind.CHALLENGE, 0, 1, 0), b"{}", b"extra", b"frames"],
]


def test_a_worker_refuses_a_hostile_master_with_one_line(tmp_path):
    """A worker dialling something that is not a master holding the secret exits 3 with a
    one-line reason, never a traceback, and runs nothing."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERMGR_")}
    env["CLUSTERMGR_COOKIE"] = "11" * 32
    try:
        for frames in HOSTILE_CHALLENGES:
            proc = subprocess.Popen([sys.executable, "-m", "clustermgr.worker", "--connect",
                                     f"127.0.0.1:{port}", "--connect-timeout", "10"],
                                    env=env, stderr=subprocess.PIPE, text=True)
            try:
                assert router.poll(30_000)
                peer = router.recv_multipart()[0]
                router.send_multipart([peer, *frames])
                _, err = proc.communicate(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert proc.returncode == 3, (frames[:1], err)
            assert "Traceback" not in err and err.count("\n") == 1, err
    finally:
        router.close()

"""CurveZMQ: on by default off loopback; a peer without the secret cannot even connect."""

import os
import subprocess
import sys

import pytest
import zmq

import clustermgr as cm
from clustermgr import protocol as P
from clustermgr.cluster import master
from clustermgr.managers import ElasticManager


def test_keys_derive_from_the_secret():
    a, b = P.curve_keys(b"s1", b"master"), P.curve_keys(b"s2", b"master")
    assert a != b and a == P.curve_keys(b"s1", b"master")
    assert zmq.curve_public(a[1]) == a[0]


def test_encrypted_cluster_works_and_plain_peers_get_nothing(fresh):
    cm.configure(encrypt=True)
    ids = cm.addprocs(2)
    m = master()
    assert m.encrypted and m.router.curve_server
    assert cm.pmap(lambda x: x * 3, range(6)) == [0, 3, 6, 9, 12, 15]
    assert cm.everywhere(lambda: os.environ.get("CLUSTERMGR_ENCRYPT")) == ["1", "1"]
    before = m.rejected_frames
    plain = zmq.Context.instance().socket(zmq.DEALER)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(m.address)
    try:
        plain.send_multipart([b"garbage"])
        plain.send_multipart([P.pack_header(P.Kind.HELLO, 0, 0, 1), P.dump_json({"nonce": "00" * 16})])
        assert plain.poll(1500) == 0  # no CHALLENGE, no REFUSED: the handshake never completed
    finally:
        plain.close()
    assert m.rejected_frames == before  # nothing reached the application
    cm.rmprocs(ids)


def test_off_loopback_is_encrypted_by_default(fresh):
    em = ElasticManager(addr="auto", cookie="ab" * 32)
    assert em.master.encrypted == (em.addr != "127.0.0.1")


def test_unencrypted_master_refuses_to_listen_off_loopback(fresh):
    cm.addprocs(1)
    from clustermgr.managers.elastic import reachable_address

    addr = reachable_address()
    if addr == "127.0.0.1":
        pytest.fail("this machine has no non-loopback address to test with")
    with pytest.raises(cm.ClusterError, match="does not encrypt"):
        master().listen(addr)


def test_worker_with_the_wrong_secret_cannot_connect_to_an_encrypted_master(fresh):
    cm.configure(encrypt=True)
    cm.addprocs(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERMGR_")}
    env["CLUSTERMGR_COOKIE"] = "00" * 32
    done = subprocess.run([sys.executable, "-m", "clustermgr.worker", "--connect", master().address,
                           "--encrypt", "--connect-timeout", "1"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 4 and "a secret that differs" in done.stderr

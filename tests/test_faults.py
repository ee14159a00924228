"""Hostile peers, dead workers, vanished masters, interrupts."""

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import zmq
from procs import watch

import clustermgr as cm
from clustermgr import protocol as P
from clustermgr.cluster import master
from clustermgr.errors import AuthError
from clustermgr.worker.loop import WorkerNode


class Canary:
    """A pickle that creates a file when unpickled: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _dealer(address):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def test_garbage_and_unauthenticated_pickles_are_refused(cluster, tmp_path):
    m = master()
    host, port = m.address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as raw:  # not even ZMTP
        raw.sendall(os.urandom(4096))
    canary = tmp_path / "canary"
    sock = _dealer(m.address)
    try:
        before = m.rejected_frames
        sock.send_multipart([b"garbage", b"more garbage"])
        call = pickle.dumps((Canary(str(canary)), (), {}))
        for kind in (P.Kind.CALL, P.Kind.RESULT, P.Kind.CHANNEL, P.Kind.FETCH):
            sock.send_multipart([P.pack_header(kind, P.Flag.WANT_VALUE, 2, 1, 1, 1), call])
        sock.send_multipart([P.pack_header(P.Kind.HELLO, 0, 0, 1), b"{not json"])
        replies = [sock.recv_multipart() for _ in range(5)] if sock.poll(10_000) else []
        assert [P.unpack_header(r[0]).kind for r in replies] == [P.Kind.REFUSED] * 5
        assert b"not authenticated" in replies[0][1]
        # 6 here, plus whatever libzmq framed out of the raw bytes (read as ZMTP 1.0)
        assert m.rejected_frames - before >= 6
    finally:
        sock.close()
    assert not canary.exists()
    assert cm.pmap(abs, [-1, -2]) == [1, 2]  # the cluster did not notice


def test_wrong_proof_is_refused(cluster):
    m = master()
    sock = _dealer(m.address)
    try:
        cn = P.new_nonce()
        sock.send_multipart([P.pack_header(P.Kind.HELLO, 0, 0, 1), P.dump_json({"nonce": cn.hex()})])
        assert sock.poll(10_000)
        challenge = P.load_json(sock.recv_multipart()[1])
        sn = bytes.fromhex(challenge["nonce"])
        # the master proved it holds the secret without revealing it
        assert P.check_proof(m.secret, b"master", cn, sn, challenge["proof"])
        forged = P.proof(b"not the secret", b"worker", cn, sn)
        sock.send_multipart([P.pack_header(P.Kind.AUTH, 0, 0, 1), P.dump_json(
            {"proof": forged, "client_nonce": cn.hex(), "nonce": sn.hex(),
             "versions": P.versions()})])
        assert sock.poll(10_000)
        hdr, body = sock.recv_multipart()
        assert P.unpack_header(hdr).kind == P.Kind.REFUSED
        assert b"does not hold this cluster's secret" in body
    finally:
        sock.close()
    assert cm.workers() == cluster


def _worker_cmd(env_extra, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERMGR_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "clustermgr.worker", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_worker_with_wrong_secret_exits_3(cluster):
    done = _worker_cmd({"CLUSTERMGR_COOKIE": "00" * 32}, "--connect", master().address)
    assert done.returncode == 3
    assert "holds a different secret" in done.stderr
    assert cm.workers() == cluster


def test_version_mismatch_is_refused_with_both_versions(cluster):
    m = master()
    node = WorkerNode(m.address, m.secret)
    try:
        fake = dict(P.versions(), clustermgr="0.0.0-other")
        with pytest.raises(AuthError, match=r"clustermgr 0\.0\.0-other") as info:
            node.handshake(10, versions=fake)
        assert f"clustermgr {cm.__version__}" in str(info.value)
    finally:
        node.ctx.destroy(linger=0)


def test_unreachable_master_exits_4():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = _worker_cmd({"CLUSTERMGR_COOKIE": "00" * 32}, "--connect", f"127.0.0.1:{port}",
                       "--connect-timeout", "0.5")
    assert done.returncode == 4 and "no answer from the master" in done.stderr


def test_worker_without_secret_or_address_exits_2():
    assert _worker_cmd({}, "--connect", "127.0.0.1:1").returncode == 2
    assert _worker_cmd({"CLUSTERMGR_COOKIE": "00"}).returncode == 2


MASTER_SCRIPT = textwrap.dedent("""
    import os, sys, time, clustermgr as cm
    cm.configure(heartbeat_interval=0.2, master_grace=2.0)
    [w] = cm.addprocs(1)
    print(cm.remotecall_fetch(os.getpid, w), flush=True)
    time.sleep(600)
""")


def test_worker_exits_when_master_is_killed():
    master_proc = subprocess.Popen([sys.executable, "-c", MASTER_SCRIPT], stdout=subprocess.PIPE,
                                   text=True)
    try:
        worker_pid = int(master_proc.stdout.readline())
        with watch([worker_pid]) as worker:  # not our child: its master is
            master_proc.kill()
            master_proc.wait(10)
            t0 = time.monotonic()
            assert worker.all_gone(15), "the worker outlived its master"
            assert time.monotonic() - t0 < 2.0 + 1.0  # the grace, plus ticks and slack
    finally:
        master_proc.kill()
        master_proc.wait(10)
        master_proc.stdout.close()


CHILD_SCRIPT = textwrap.dedent("""
    import os, subprocess, sys, time, clustermgr as cm
    cm.configure(heartbeat_interval=0.2, master_grace=1.0)
    [w] = cm.addprocs(1)
    start = lambda: subprocess.Popen(["sleep", "600"], start_new_session=True).pid
    print(cm.remotecall_fetch(os.getpid, w), cm.remotecall_fetch(start, w), flush=True)
    time.sleep(600)
""")


def test_a_task_child_goes_with_its_worker_when_the_master_is_killed():
    master_proc = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT], stdout=subprocess.PIPE,
                                   text=True)
    pids = []
    try:
        pids = [int(p) for p in master_proc.stdout.readline().split()]
        with watch(pids) as tree:  # the worker and the detached child its task started
            master_proc.kill()
            master_proc.wait(10)
            assert tree.all_gone(15), "a task's child outlived its worker and master"
    finally:
        for pid in pids:  # a failed run must not leave them behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        master_proc.kill()
        master_proc.wait(10)
        master_proc.stdout.close()


def test_silent_worker_is_declared_dead(fresh):
    cm.configure(heartbeat_interval=0.2, heartbeat_timeout=1.5)
    [w] = cm.addprocs(1)
    pid = cm.remotecall_fetch(os.getpid, w)
    os.kill(pid, signal.SIGSTOP)
    fut = cm.remotecall(cm.myid, w)
    with pytest.raises(cm.ProcessExitedError, match=f"worker {w} exited: no heartbeat"):
        fut.fetch(30)
    assert w not in cm.workers()
    psutil.Process(pid).wait(30)  # and the manager killed the stopped process


def test_interrupt_long_task(cluster):
    w = cluster[0]
    started = cm.RemoteChannel()
    fut = cm.remotecall(lambda c: (c.put(1), time.sleep(120)), w, started)
    started.take(timeout=30)
    cm.interrupt(w)
    with pytest.raises(cm.RemoteError, match="KeyboardInterrupt") as info:
        fut.fetch(30)
    assert isinstance(info.value.__cause__, KeyboardInterrupt)
    assert cm.remotecall_fetch(cm.myid, w) == w  # the worker survived


def test_interrupt_idle_worker_is_harmless(cluster):
    cm.interrupt()
    assert cm.pmap(abs, [-5, -6]) == [5, 6]
    with pytest.raises(cm.ClusterError):
        cm.interrupt(99)


def test_worker_dying_alone_fails_its_calls(fresh):
    [w] = cm.addprocs(1)
    fut = cm.remotecall(lambda: os._exit(7), w)
    with pytest.raises(cm.ProcessExitedError, match="exited with code 7") as info:
        fut.fetch(30)
    assert info.value.worker_id == w
    with pytest.raises(cm.ProcessExitedError):
        cm.remotecall(abs, w, 1)

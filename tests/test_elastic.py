"""ElasticManager and the worker connect command: workers started by hand."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import clustermgr as cm
from clustermgr.cluster import master
from clustermgr.managers import ElasticManager

COOKIE = "5e" * 32


def start_worker(address, cookie=COOKIE, *extra, **popen):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERMGR_")}
    if cookie:
        env["CLUSTERMGR_COOKIE"] = cookie
    cli = os.path.join(os.path.dirname(sys.executable), "clustermgr")
    return subprocess.Popen([cli, "worker", "--connect", address.removeprefix("tcp://"), *extra],
                            env=env, stdout=subprocess.DEVNULL, **popen)


def reap(procs, timeout=30):
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGUSR1)  # the worker dumps its stacks to stderr
            time.sleep(1)  # give the dump a moment: there is no event for it
            p.kill()
            p.wait()
            raise


def test_twenty_hand_started_workers_and_late_joiners(fresh):
    em = ElasticManager(cookie=COOKIE)
    first = [start_worker(em.address) for _ in range(10)]
    ids = em.wait(10, timeout=60)
    assert sorted(ids) == cm.workers() and len(ids) == 10
    assert cm.pmap(lambda x: x + 1, range(20)) == list(range(1, 21))
    late = [start_worker(em.address) for _ in range(10)]
    ids = em.wait(20, timeout=60)
    where = cm.pmap(lambda _: (time.sleep(0.05), cm.myid())[1], range(80))
    late_ids = set(ids[10:])
    assert late_ids & set(where), "pmap did not use the late joiners"
    assert len(set(where)) >= 15
    cm.rmprocs(ids)
    reap(first + late)
    assert all(p.returncode == 0 for p in first + late)
    assert em.active == [] and sorted(em.terminated) == sorted(ids)


def test_printed_command_has_no_secret_and_works_with_cookie_file(fresh, tmp_path):
    em = ElasticManager(cookie=COOKIE)
    path = em.write_cookie_file(str(tmp_path / "cookie"))
    assert os.stat(path).st_mode & 0o777 == 0o600
    text = str(em)
    assert COOKIE not in text and master().secret.hex() not in text
    assert "clustermgr worker --connect 127.0.0.1:" in text and f"--cookie-file {path}" in text
    proc = start_worker(em.address, None, "--cookie-file", path)
    [w] = em.wait(1, timeout=60)
    assert f"Active workers: [{w}]" in str(em)
    cm.rmprocs(w)
    reap([proc])


def test_wrong_secret_is_refused_and_runs_nothing(fresh):
    em = ElasticManager(cookie=COOKIE)
    proc = start_worker(em.address, "00" * 32, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "different secret" in err
    assert cm.workers() == [1] and em.active == []


def test_killed_worker_is_handled(fresh):
    cm.configure(heartbeat_interval=0.2, heartbeat_timeout=1.5)
    em = ElasticManager(cookie=COOKIE)
    procs = [start_worker(em.address) for _ in range(2)]
    a, b = em.wait(2, timeout=60)
    pid_a = cm.remotecall_fetch(os.getpid, a)
    victim = next(p for p in procs if p.pid == pid_a)
    fut = cm.remotecall(time.sleep, a, 30)
    victim.send_signal(signal.SIGKILL)
    with pytest.raises(cm.ProcessExitedError, match="no heartbeat|connection to the master closed"):
        fut.fetch(30)
    assert cm.workers() == [b] and em.terminated == [a]
    cm.rmprocs(b)
    reap(procs)


def test_auto_address_and_fixed_port(fresh):
    em = ElasticManager(addr="auto", port=0, cookie=COOKIE)
    assert em.address.startswith("tcp://") and em.addr in em.address
    if em.addr != "127.0.0.1":  # off loopback the master encrypts, and says so
        assert em.master.encrypted and "--encrypt" in em.connect_command()
    proc = start_worker(em.address, COOKIE, *(["--encrypt"] if em.master.encrypted else []))
    [w] = em.wait(1, timeout=60)
    assert cm.remotecall_fetch(cm.myid, w) == w
    cm.rmprocs(w)
    reap([proc])


def test_cookie_cannot_change_a_running_master(fresh):
    cm.addprocs(1)
    with pytest.raises(cm.ClusterError, match="another secret"):
        ElasticManager(cookie=COOKIE)


MASTER = textwrap.dedent("""
    import os, sys, clustermgr as cm
    from clustermgr.managers import ElasticManager
    em = ElasticManager(port=int(sys.argv[1]), cookie=os.environ.pop("TEST_COOKIE"))
    [w] = em.wait(1, timeout=60)
    print(cm.remotecall_fetch(lambda: __import__("os").getpid(), w), flush=True)
    sys.stdin.readline()
""")


def test_worker_rejoins_a_restarted_master(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    masters = []

    def start_master():
        p = subprocess.Popen([sys.executable, "-c", MASTER, str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TEST_COOKIE": COOKIE})
        masters.append(p)
        return p

    first = start_master()
    worker = start_worker(f"127.0.0.1:{port}", COOKIE, "--connect-timeout", "60")
    try:
        pid = int(first.stdout.readline())
        assert pid == worker.pid
        first.kill()
        first.wait(10)
        second = start_master()  # same address, same cookie, well within the grace
        assert int(second.stdout.readline()) == worker.pid  # the same process joined again
        second.stdin.close()  # the master exits normally and removes the worker
        assert second.wait(30) == 0
        assert worker.wait(30) == 0
    finally:
        for p in [*masters, worker]:
            if p.poll() is None:
                p.kill()
                p.wait()
        for p in masters:
            p.stdout.close()


def test_worker_declared_dead_is_told_to_leave_when_it_speaks(fresh):
    cm.configure(heartbeat_interval=0.2, heartbeat_timeout=1.0)
    em = ElasticManager(cookie=COOKIE)
    proc = start_worker(em.address)
    [w] = em.wait(1, timeout=60)
    proc.send_signal(signal.SIGSTOP)  # silent: declared dead, its calls failed
    with pytest.raises(cm.ProcessExitedError, match="no heartbeat"):
        cm.remotecall(cm.myid, w).fetch(30)
    proc.send_signal(signal.SIGCONT)  # it speaks again and is told to leave
    assert proc.wait(30) == 0
    assert em.terminated == [w]

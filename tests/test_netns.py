"""Network faults, for real: workers in network namespaces this module creates (a veth pair,
addresses only inside 10.231.0.0/16), the master on the host end, and iptables rules in the
namespace to cut, flap or thin the link; a small TCP proxy adds delay (this kernel has no
netem).  Needs root and ip(8)/iptables(8); CI runs as root.  Only the namespaces' own
addresses are used.

Outcomes asserted (README, "When things fail"):
- a partition longer than heartbeat_timeout: the cut-off workers are declared dead, their
  tasks retried on a worker that can be reached, each result returned once; the cut-off
  workers leave within master_grace, with EXIT_MASTER_LOST (5), not 0;
- a flap shorter than heartbeat_timeout: nothing is declared dead, nothing is lost;
- 100 ms of delay each way and 5 % packet loss: everything arrives, once, in order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

import clustermgr as cm
from clustermgr.managers import ElasticManager

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"),
    reason="needs root, ip(8) and iptables(8) to make network namespaces")

COOKIE = "4c" * 32
EXIT_MASTER_LOST = 5


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class Namespace:
    """A network namespace joined to the host by a veth pair: host .1, namespace .2."""

    def __init__(self, index: int) -> None:
        tag = f"{os.getpid() % 10000}{index}"
        self.name, self.host_if, self.ns_if = f"cmt{tag}", f"cmh{tag}", f"cmn{tag}"
        net = f"10.231.{(os.getpid() + index) % 250}"
        self.host, self.inside = f"{net}.1", f"{net}.2"
        run("ip", "netns", "add", self.name)
        try:
            run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            run("ip", "link", "set", self.ns_if, "netns", self.name)
            run("ip", "addr", "add", f"{self.host}/30", "dev", self.host_if)
            run("ip", "link", "set", self.host_if, "up")
            self.exec("ip", "addr", "add", f"{self.inside}/30", "dev", self.ns_if)
            self.exec("ip", "link", "set", self.ns_if, "up")
            self.exec("ip", "link", "set", "lo", "up")
        except Exception:
            self.remove()
            raise

    def exec(self, *argv: str) -> None:
        run("ip", "netns", "exec", self.name, *argv)

    def worker(self, address: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERMGR_")}
        env["CLUSTERMGR_COOKIE"] = COOKIE
        cli = os.path.join(os.path.dirname(sys.executable), "clustermgr")
        return subprocess.Popen(["ip", "netns", "exec", self.name, cli, "worker", "--connect",
                                 address.removeprefix("tcp://"), "--encrypt"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def cut(self) -> None:
        """Drop everything in and out of the namespace (the link stays up)."""
        self.exec("iptables", "-I", "INPUT", "-j", "DROP")
        self.exec("iptables", "-I", "OUTPUT", "-j", "DROP")

    def heal(self) -> None:
        self.exec("iptables", "-F")

    def lose(self, probability: float) -> None:
        for chain in ("INPUT", "OUTPUT"):
            self.exec("iptables", "-I", chain, "-m", "statistic", "--mode", "random",
                      "--probability", str(probability), "-j", "DROP")

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class DelayProxy:
    """TCP proxy on *host*: every chunk is passed on *delay* seconds after it arrived."""

    def __init__(self, host: str, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.server = socket.create_server((host, 0))
        self.address = f"tcp://{host}:{self.server.getsockname()[1]}"
        self.closed = threading.Event()
        self.socks: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        import queue

        due: queue.SimpleQueue = queue.SimpleQueue()

        def send() -> None:
            while True:
                when, data = due.get()
                if data is None:
                    return
                time.sleep(max(0.0, when - time.monotonic()))
                with contextlib.suppress(OSError):
                    dst.sendall(data)

        threading.Thread(target=send, daemon=True).start()
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                due.put((0, None))
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            due.put((time.monotonic() + self.delay, data))

    def close(self) -> None:
        self.closed.set()
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def namespaces(fresh):
    made: list[Namespace] = []
    procs: list[subprocess.Popen] = []

    def make(n: int) -> list[Namespace]:
        made.extend(Namespace(len(made) + i) for i in range(n))
        return made[-n:]

    yield make, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(10)
        if p.stderr:
            p.stderr.close()
    cm.shutdown()
    for ns in made:
        ns.remove()


def slow_square(x):
    time.sleep(0.02)
    return x * x


def two_workers_inside(namespaces, **settings) -> tuple[Namespace, ElasticManager, list[int]]:
    """A namespace, and two hand-started workers in it joined to a master with *settings*."""
    make, procs = namespaces
    [ns] = make(1)
    cm.configure(**settings)
    em = ElasticManager(addr=ns.host, cookie=COOKIE)
    procs += [ns.worker(em.address), ns.worker(em.address)]
    return ns, em, em.wait(2, timeout=60)


def in_background(fn) -> tuple[threading.Thread, list]:
    """Run *fn* in a thread; its result lands in the list."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    return thread, result


def test_a_partition_longer_than_the_timeout_retries_elsewhere_and_evicts(namespaces):
    ns, em, cut_off = two_workers_inside(namespaces, heartbeat_interval=0.2,
                                         heartbeat_timeout=1.5, master_grace=3.0)
    [local] = cm.addprocs(1)  # reachable through the whole test: the retries land here
    first = cm.RemoteChannel()

    def work(x, ch=first):
        if x == 0:
            ch.put(cm.myid())
        return slow_square(x)

    mapper, result = in_background(lambda: cm.pmap(work, range(300), retry_delays=[0.0] * 5))
    first.take(timeout=60)  # the map is running
    ns.cut()
    mapper.join(120)
    assert not mapper.is_alive() and result[0] == [x * x for x in range(300)]  # each once
    assert sorted(em.terminated) == sorted(cut_off) and cm.workers() == [local]
    for p in namespaces[1]:  # cut off, they give up on the master after master_grace
        assert p.wait(30) == EXIT_MASTER_LOST
        assert b"no word from the master" in p.stderr.read()


def test_a_flap_shorter_than_the_timeout_changes_nothing(namespaces):
    ns, em, ids = two_workers_inside(namespaces, heartbeat_interval=0.2, heartbeat_timeout=3.0,
                                     master_grace=10.0)
    mapper, result = in_background(lambda: cm.pmap(slow_square, range(200)))
    ns.cut()
    time.sleep(0.8)  # the length of the flap is the point of the test: no event to wait on
    ns.heal()
    mapper.join(120)
    assert result[0] == [x * x for x in range(200)]
    assert em.terminated == [] and cm.workers() == sorted(ids)


def test_delay_and_loss_lose_nothing(namespaces):
    make, procs = namespaces
    [ns] = make(1)
    cm.configure(heartbeat_interval=0.5, heartbeat_timeout=20.0)
    em = ElasticManager(addr=ns.host, cookie=COOKIE)
    host, port = em.address.removeprefix("tcp://").rsplit(":", 1)
    proxy = DelayProxy(ns.host, (host, int(port)), delay=0.1)
    try:
        procs += [ns.worker(proxy.address), ns.worker(proxy.address)]
        ids = em.wait(2, timeout=60)
        ns.lose(0.05)
        t0 = time.monotonic()
        assert cm.remotecall(cm.myid, ids[0]).fetch(60) == ids[0]
        assert time.monotonic() - t0 >= 0.2  # the delay is there, both ways
        assert cm.pmap(slow_square, range(300)) == [x * x for x in range(300)]
        assert em.terminated == []
    finally:
        ns.heal()
        cm.shutdown()
        proxy.close()

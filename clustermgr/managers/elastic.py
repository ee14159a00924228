"""ElasticManager: workers that join by themselves, from anywhere, at any time.

Creating the manager makes the master listen where other hosts can reach it; workers
started by hand with the connect command join as they come (and are used by ``pmap`` and
the default pool as they arrive), and leave at any time (handled like any death).  The
printed command never contains the secret: workers read it from ``CLUSTERMGR_COOKIE`` or a
0600 cookie file that :meth:`ElasticManager.write_cookie_file` can write.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..errors import ClusterError
from .base import ClusterManager, LaunchSpec, WorkerHandle


def reachable_address() -> str:
    """This host's first non-loopback IPv4 address (else 127.0.0.1); sends nothing."""
    import socket

    import psutil

    stats = psutil.net_if_stats()
    for name, addrs in psutil.net_if_addrs().items():
        if not stats.get(name) or not stats[name].isup:
            continue
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return "127.0.0.1"


class ElasticManager(ClusterManager):
    """Accept workers started by hand.

    addr: the address to listen on ("auto": this host's address other hosts can reach).
    port: 0 picks a free one.
    cookie: the secret workers must present (default: the master's own).  It can only be
        chosen before the master starts (the first ``addprocs`` or ``ElasticManager``).
    topology: as ``addprocs``.
    """

    def __init__(self, addr: str = "127.0.0.1", port: int = 0, cookie: str | None = None,
                 topology: str = "all_to_all") -> None:
        from .. import cluster
        from ..protocol import cookie_bytes
        from ..transport import current_node

        self.addr = reachable_address() if addr == "auto" else addr
        if current_node() is None:  # the master listens (and, off loopback, encrypts) here
            cluster.configure(bind=self.addr, **({"cookie": cookie} if cookie else {}))
        self.master = cluster.master()
        if cookie and cookie_bytes(cookie) != self.master.secret:
            raise ClusterError("the master already runs with another secret; create the "
                               "ElasticManager before other addprocs, or omit cookie=")
        cluster._set_topology(self.master, topology)
        self.address = self._listen(port)
        self.cookie_file: str | None = None
        self.active: list[int] = []
        self.terminated: list[int] = []
        self._lock = threading.Condition()
        self.master.listeners.append(self._on_event)
        cluster.register_manager(self)

    def _listen(self, port: int) -> str:
        current = self.master.address
        host, cur_port = current.removeprefix("tcp://").rsplit(":", 1)
        if host == self.addr and port in (0, int(cur_port)):
            return current
        return self.master.listen(self.addr, port)

    def _on_event(self, event: str, wid: int) -> None:
        w = self.master.workers.get(wid)
        if w is None or w.launch is not None:
            return  # a worker some other manager launched
        with self._lock:
            if event == "join":
                self.active.append(wid)
            elif wid in self.active:
                self.active.remove(wid)
                self.terminated.append(wid)
            self._lock.notify_all()

    # --- what users call -------------------------------------------------------------

    def connect_command(self) -> str:
        """The command to run on other hosts; it carries no secret."""
        cmd = f"clustermgr worker --connect {self.address.removeprefix('tcp://')}"
        cmd += " --encrypt" if self.master.encrypted else ""
        return cmd + (f" --cookie-file {self.cookie_file}" if self.cookie_file else "")

    def write_cookie_file(self, path: str | None = None) -> str:
        """Write the secret to a 0600 file (for ``--cookie-file``) and return its path."""
        if path is None:
            fd, path = tempfile.mkstemp(prefix="clustermgr-cookie-")
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.master.secret.hex())
        self.cookie_file = path
        return path

    def wait(self, n: int, timeout: float | None = None) -> list[int]:
        """Block until at least *n* of this manager's workers are active; return them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while len(self.active) < n:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{len(self.active)} of {n} workers joined within {timeout} s")
                self._lock.wait(left)
            return list(self.active)

    def __str__(self) -> str:
        with self._lock:
            active, terminated = list(self.active), list(self.terminated)
        return "\n".join([
            "ElasticManager:",
            f"  Active workers: {active}",
            f"  Pending (handshaking): {self.master.gate.pending()}",
            f"  Terminated workers: {terminated}",
            "  Worker connect command:",
            f"    {self.connect_command()}",
            "  (the secret comes from CLUSTERMGR_COOKIE or --cookie-file PATH, never the command)",
        ])

    __repr__ = __str__

    # --- the ClusterManager hooks ----------------------------------------------------

    def launch(self, spec: LaunchSpec) -> Iterator[WorkerHandle]:
        """Nothing to start: workers come by themselves."""
        return iter(())

    def kill(self, handle: WorkerHandle, grace: float = 5.0) -> None:
        """Hand-started workers have no handle; ``rmprocs`` asks them to leave."""

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"active": list(self.active), "terminated": list(self.terminated),
                    "address": self.address}

    def close(self) -> None:
        if self._on_event in self.master.listeners:
            self.master.listeners.remove(self._on_event)
        if self.cookie_file and os.path.exists(self.cookie_file):
            os.unlink(self.cookie_file)

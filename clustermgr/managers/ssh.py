"""SSHManager: workers on hosts reachable by SSH (paramiko; ``pip install clustermgr[ssh]``).

One SSH connection per host; each worker is one exec channel running
``python -m clustermgr.worker --stdin-config``.  Its environment, the secret included,
goes down the channel's stdin, never into argv; the worker exits when the channel closes
(no pty needed, so nothing is echoed).  The remote command prints its PID first, so
``kill`` can signal the remote process group.  With ``tunnel=True`` the worker reaches the
master through a reverse port forward over the same SSH connection.

Host keys: the system and user ``known_hosts`` (and ``known_hosts=``) are trusted; an
unknown host is refused unless ``accept_unknown_hosts=True``.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import socket
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import LaunchError
from .base import ClusterManager, LaunchSpec, WorkerHandle
from .local import tail

MachineSpec = str | tuple[str, int | str]
_LOOPBACK = ("127.", "localhost", "::1")


@dataclass(frozen=True)
class Machine:
    host: str
    user: str | None = None
    port: int | None = None
    count: int | str = 1  # or "auto": the host's CPU count

    @property
    def label(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"


def parse_machine(spec: MachineSpec) -> Machine:
    """``"host"``, ``"user@host:2222"``, ``("host", 4)`` or ``("host", "auto")``."""
    count: int | str = 1
    if isinstance(spec, tuple):
        spec, count = spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"a machine is '[user@]host[:port]' or (that, count), not {spec!r}")
    if count != "auto" and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"worker count for {spec!r} must be a positive int or 'auto', not {count!r}")
    user, _, hostport = spec.rpartition("@")
    host, _, port = hostport.partition(":")
    if port and not port.isdigit():
        raise ValueError(f"bad port in {spec!r}")
    return Machine(host, user or None, int(port) if port else None, count)


@dataclass
class SSHHandle(WorkerHandle):
    machine: Machine | None = None
    channel: Any = field(default=None, repr=False)
    pid: int = 0
    log_path: str = ""
    started: threading.Event = field(default_factory=threading.Event, repr=False)


class SSHManager(ClusterManager):
    """Workers on SSH hosts.

    machines: specs as in :func:`parse_machine`.
    max_parallel: SSH channels opened at once per host.
    tunnel: reach the master through the SSH connection (compute hosts that cannot reach it).
    ssh_config: path of an OpenSSH client config (default ``~/.ssh/config`` if present;
        ``False``: none) for HostName, User, Port, IdentityFile.
    key_filename, known_hosts: a private key, an extra known_hosts file.
    accept_unknown_hosts: trust hosts missing from known_hosts (off: refused).
    connect_timeout: seconds for each SSH connection.
    """

    def __init__(self, machines: Sequence[MachineSpec], *, max_parallel: int = 10,
                 tunnel: bool = False, ssh_config: str | bool | None = None,
                 key_filename: str | None = None, known_hosts: str | None = None,
                 accept_unknown_hosts: bool = False, connect_timeout: float = 30.0) -> None:
        import paramiko  # noqa: F401 - fail early, with the extra to install

        if isinstance(machines, (str, tuple)):
            machines = [machines]
        self.machines = [parse_machine(m) for m in machines]
        if not self.machines:
            raise ValueError("SSHManager needs at least one machine")
        if max_parallel < 1:
            raise ValueError("max_parallel must be >= 1")
        self.max_parallel = max_parallel
        self.tunnel = tunnel
        self.ssh_config = ssh_config
        self.key_filename = key_filename
        self.known_hosts = known_hosts
        self.accept_unknown_hosts = accept_unknown_hosts
        self.connect_timeout = connect_timeout
        self.log_dir = ""
        self._clients: dict[Machine, Any] = {}
        self._handles: list[SSHHandle] = []

    def __repr__(self) -> str:
        return f"SSHManager({[m.label for m in self.machines]})"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"max_parallel": 10, "tunnel": False, "ssh_config": None, "key_filename": None,
                "known_hosts": None, "accept_unknown_hosts": False, "connect_timeout": 30.0}

    # --- launch ---------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> Iterator[SSHHandle]:
        if not self.log_dir:
            self.log_dir = tempfile.mkdtemp(prefix="clustermgr-ssh-logs-")
        for machine in self.machines:
            if not self.tunnel:
                self._check_reachable(machine, spec)
            client = self._connect(machine)
            address = self._address_for(machine, client, spec)
            count = self._count(machine, client, spec)
            gate = threading.Semaphore(self.max_parallel)
            for _ in range(count):
                with gate:
                    yield self._start_worker(machine, client, spec, address)

    def _connect(self, machine: Machine) -> Any:
        import paramiko

        if machine in self._clients:
            return self._clients[machine]
        host, user, port, key = self._resolve(machine)
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        if self.known_hosts:
            client.load_host_keys(os.path.expanduser(self.known_hosts))
        client.set_missing_host_key_policy(
            paramiko.AutoAddPolicy() if self.accept_unknown_hosts else paramiko.RejectPolicy())
        where = f"{user or os.environ.get('USER', '?')}@{host}:{port}"
        try:
            client.connect(host, port=port, username=user, key_filename=key,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout)
        except paramiko.BadHostKeyException as exc:
            raise LaunchError(f"{where}: the host key does not match known_hosts ({exc}); "
                              "if the host was reinstalled, update known_hosts") from exc
        except paramiko.AuthenticationException as exc:
            raise LaunchError(f"{where}: SSH authentication failed with key "
                              f"{key or '(agent / default keys)'}: {exc}") from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise LaunchError(
                    f"{where}: unknown host key. Add it to known_hosts (ssh-keyscan -p {port} "
                    f"{host} >> ~/.ssh/known_hosts) or pass accept_unknown_hosts=True") from exc
            raise LaunchError(f"{where}: SSH failed: {exc}") from exc
        except OSError as exc:
            raise LaunchError(f"{where}: cannot connect: {exc}") from exc
        self._clients[machine] = client
        return client

    def _resolve(self, m: Machine) -> tuple[str, str | None, int, str | None]:
        import paramiko

        cfg: dict[str, Any] = {}
        path = os.path.expanduser("~/.ssh/config") if self.ssh_config is None else self.ssh_config
        if path and os.path.exists(path):  # type: ignore[arg-type]
            cfg = paramiko.SSHConfig.from_path(path).lookup(m.host)  # type: ignore[arg-type]
        key = self.key_filename or (cfg.get("identityfile") or [None])[0]
        return (cfg.get("hostname", m.host), m.user or cfg.get("user"),
                m.port or int(cfg.get("port", 22)), key)

    def _check_reachable(self, m: Machine, spec: LaunchSpec) -> None:
        host = spec.address.removeprefix("tcp://").rsplit(":", 1)[0]
        if host.startswith(_LOOPBACK) and not m.host.startswith(_LOOPBACK):
            raise LaunchError(f"the master listens on {host} only, which {m.host} cannot reach: "
                              "call clustermgr.configure(bind='0.0.0.0') before the first "
                              "addprocs, or pass tunnel=True")

    def _address_for(self, m: Machine, client: Any, spec: LaunchSpec) -> str:
        if not self.tunnel:
            return spec.address
        host, port = spec.address.removeprefix("tcp://").rsplit(":", 1)
        remote_port = client.get_transport().request_port_forward(
            "127.0.0.1", 0, handler=lambda ch, origin, server: _pipe(ch, host, int(port)))
        return f"tcp://127.0.0.1:{remote_port}"

    def _count(self, m: Machine, client: Any, spec: LaunchSpec) -> int:
        if m.count != "auto":
            return int(m.count)
        cmd = f"{shlex.quote(spec.python)} -c 'import os; print(len(os.sched_getaffinity(0)))'"
        _, out, err = client.exec_command(cmd, timeout=self.connect_timeout)
        text = out.read().decode().strip()
        if not text.isdigit():
            raise LaunchError(f"{m.label}: could not count CPUs with {spec.python}: "
                              f"{err.read().decode().strip()}")
        return int(text)

    def _start_worker(self, m: Machine, client: Any, spec: LaunchSpec, address: str) -> SSHHandle:
        import secrets

        launch_id = secrets.token_hex(8)
        env = spec.environment(launch_id)
        env["CLUSTERMGR_MASTER"] = address
        argv = " ".join(shlex.quote(a) for a in [*spec.argv(), "--stdin-config"])
        command = f"cd {shlex.quote(spec.dir)} && echo CLUSTERMGR_PID $$ && exec {argv}"
        channel = client.get_transport().open_session(timeout=self.connect_timeout)
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        channel.sendall((json.dumps({"env": env}) + "\n").encode())
        handle = SSHHandle(launch_id, m.host, m, channel,
                           log_path=os.path.join(self.log_dir, f"worker-{launch_id}.log"))
        self._handles.append(handle)
        threading.Thread(target=self._follow, args=(handle, spec), daemon=True,
                         name="clustermgr-ssh-log").start()
        return handle

    def _follow(self, handle: SSHHandle, spec: LaunchSpec) -> None:
        """Copy the channel's output to the log; report the end of the worker."""
        channel = handle.channel
        with open(handle.log_path, "wb") as log:
            first = b""
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                if not handle.started.is_set():
                    first += data
                    line, nl, rest = first.partition(b"\n")
                    if nl:
                        if line.startswith(b"CLUSTERMGR_PID "):
                            handle.pid = int(line.split()[1])
                        handle.started.set()
                        data = rest if line.startswith(b"CLUSTERMGR_PID ") else first
                    else:
                        continue
                log.write(data)
                log.flush()
        handle.started.set()
        code = channel.recv_exit_status()
        cause = (f"exited with code {code}" if code >= 0 else
                 "its SSH channel closed without an exit status (killed by a signal?)")
        spec.on_exit(handle, f"{cause} on {handle.host}", tail(handle.log_path))

    # --- kill, logs, close -----------------------------------------------------------

    def kill(self, handle: WorkerHandle, grace: float = 5.0) -> None:
        h: SSHHandle = handle  # type: ignore[assignment]
        channel = h.channel
        if channel is None or channel.exit_status_ready():
            return
        if _wait_exit(channel, grace):
            return
        client = self._clients.get(h.machine)  # type: ignore[arg-type]
        h.started.wait(5.0)
        for sig, wait in (("TERM", 2.0), ("KILL", 5.0)):
            if h.pid and client is not None and client.get_transport() is not None:
                try:
                    client.exec_command(f"kill -{sig} -- -{h.pid}", timeout=10)
                except Exception:  # noqa: BLE001 - the connection may be gone; close below
                    pass
            if _wait_exit(channel, wait):
                return
        channel.close()  # stdin closes: the worker leaves by itself

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        return tail(getattr(handle, "log_path", ""), lines)

    def status(self) -> dict[str, Any]:
        running = sum(1 for h in self._handles if not h.channel.exit_status_ready())
        return {"machines": [m.label for m in self.machines], "workers": len(self._handles),
                "running": running, "log_dir": self.log_dir}

    def close(self) -> None:
        import shutil

        for handle in self._handles:
            self.kill(handle, grace=0.5)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if self.log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)


def _wait_exit(channel: Any, timeout: float) -> bool:
    """True once the remote command has ended (the channel reports its exit status)."""
    event = channel.status_event
    return event.wait(timeout) and channel.exit_status_ready()


def _pipe(channel: Any, host: str, port: int) -> None:
    """Carry one forwarded connection to the master's port, both ways (tunnel=True)."""

    def run() -> None:
        with socket.create_connection((host, port)) as sock:
            while True:
                ready, _, _ = select.select([sock, channel], [], [])
                if sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        break
                    sock.sendall(data)
        channel.close()

    threading.Thread(target=run, daemon=True, name="clustermgr-ssh-tunnel").start()

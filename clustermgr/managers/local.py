"""LocalManager: workers as subprocesses of the master on this host.

Each worker runs in its own session (so a Ctrl-C in the master's terminal does not reach
it), with stdin closed and its file-level stdout/stderr in a log file; Python-level output
is forwarded to the master by the worker itself.  One watcher thread learns of every exit
at once through pidfds and reports it with the exit code or signal and the log's tail.

What a worker's tasks start goes with it: a worker that leaves (asked, or because its
master is gone) ends its descendants itself; and each worker's environment carries its
launch id (``CLUSTERMGR_TASK_OF``), inherited by whatever its tasks start, so once a
worker's process has ended, even by ``kill -9``, the watcher ends every process still
carrying that mark, also those that left its process tree (a new session, a double fork).
A process that clears its environment escapes this.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..processes import stop_processes
from .base import ClusterManager, LaunchSpec, WorkerHandle


@dataclass
class LocalHandle(WorkerHandle):
    proc: Any = field(default=None, repr=False)  # a Popen, or a ForkedProcess
    log_path: str = ""
    index: int = 0
    helper_pid: int = 0  # the fork server that forked it (lives while its workers do)


def describe_exit(code: int | None) -> str:
    """'exited with code 1' / 'killed by signal SIGKILL (9)'."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "signal"
        return f"killed by signal {name} ({-code})"
    return f"exited with code {code}"


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


#: Set in each worker's environment to its launch id; what its tasks start inherits it.
TASK_OF = "CLUSTERMGR_TASK_OF"


def end_leftovers(launch_id: str, grace: float = 1.0) -> None:
    """A worker is gone (even by ``kill -9``): end every process that carries its mark,
    such as a child its task started in a session of its own, which no longer descends
    from it (SIGTERM, then SIGKILL after *grace* s).  Called by the exit watcher."""
    victims = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TASK_OF) == launch_id:
                victims.append(proc)
        except psutil.Error:
            continue
    stop_processes(victims, grace)


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _signal_tree(pid: int, tree: list[psutil.Process], sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the worker leads its own process group
    except (ProcessLookupError, PermissionError):
        pass
    for proc in tree:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    rows = data.splitlines()
    crash = max((k for k, row in enumerate(rows) if row.startswith("Fatal Python error")), default=None)
    if crash is not None:  # faulthandler's report of a crash: its start names the thread that crashed
        return "\n".join(rows[crash:crash + max(lines, 60)])
    return "\n".join(rows[-lines:])


class LocalManager(ClusterManager):
    """Start *np* workers on this host (``np=None``: one per CPU this process may use).

    ``peers`` (only with ``topology="custom"``): ``{i: {j, ...}}`` over launch indices
    0..np-1, the workers that worker *i* may call.
    """

    scalable = True

    def __init__(self, np: int | None = None, *, peers: dict[int, set[int]] | None = None,
                 fork_server: bool = True) -> None:
        if np is None:
            np = len(os.sched_getaffinity(0))
        if isinstance(np, bool) or not isinstance(np, int) or np < 0:
            raise ValueError(f"LocalManager needs a number of workers >= 0, not {np!r}")
        self.np = np
        self.peers = peers
        self.fork_server = fork_server
        self._servers: list[Any] = []
        self.log_dir = ""
        self._watcher: _ExitWatcher | None = None
        self._handles: list[LocalHandle] = []

    def __repr__(self) -> str:
        return f"LocalManager(np={self.np})"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return {"np": len(os.sched_getaffinity(0)), "peers": None}

    def launch(self, spec: LaunchSpec) -> Iterator[LocalHandle]:
        if not os.path.isdir(spec.dir):
            raise ValueError(f"dir={spec.dir!r} is not a directory")
        return self._launch(spec)

    def _launch(self, spec: LaunchSpec) -> Iterator[LocalHandle]:
        if not self.log_dir:
            self.log_dir = tempfile.mkdtemp(prefix="clustermgr-logs-")
            self._watcher = _ExitWatcher(spec, self)
        base_env = {**os.environ}
        count = self.how_many(spec)
        server = self._fork_server(spec, count)
        try:
            for index in range(count):
                launch_id = secrets.token_hex(8)
                log_path = os.path.join(self.log_dir, f"worker-{launch_id}.log")
                env = {**base_env, **spec.environment(launch_id), **self.worker_env(index),
                       TASK_OF: launch_id}
                if server is not None:
                    proc: Any = server.spawn(env, spec.dir, log_path)
                else:
                    with open(log_path, "wb") as log:
                        proc = subprocess.Popen(
                            self.worker_command(spec, index), env=env, cwd=spec.dir,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, close_fds=True)
                handle = LocalHandle(launch_id, "localhost", proc, log_path, index,
                                     helper_pid=server.pid if server else 0)
                self._handles.append(handle)
                self._watcher.watch(handle)  # type: ignore[union-attr]
                yield handle
        finally:
            if server is not None:
                server.done()

    def _fork_server(self, spec: LaunchSpec, count: int) -> Any:
        """A fork server when the workers would run this very interpreter, unchanged:
        same executable, no interpreter flags or PYTHON* variables, the plain command."""
        import sys

        plain = (self.fork_server and count >= 2 and spec.python == sys.executable
                 and not spec.exeflags and not any(k.startswith("PYTHON") for k in spec.env)
                 and type(self).worker_command is LocalManager.worker_command)
        if not plain:
            return None
        from .forkserver import ForkServer

        server = ForkServer(spec.python)
        self._servers.append(server)
        return server

    def worker_command(self, spec: LaunchSpec, index: int) -> list[str]:
        """argv of worker *index* (subclasses wrap it, e.g. in ``taskset``)."""
        return spec.argv()

    def worker_env(self, index: int) -> dict[str, str]:
        """Extra environment of worker *index* (subclasses: GPU pinning)."""
        return {}

    def connects(self, a: WorkerHandle, b: WorkerHandle) -> bool:
        if self.peers is None:
            return True
        return getattr(b, "index", -1) in self.peers.get(getattr(a, "index", -1), set())

    def kill(self, handle: WorkerHandle, grace: float = 5.0) -> None:
        """Wait *grace* s for the worker to leave, then SIGTERM, then SIGKILL: its process
        group and every descendant (also those that left the group)."""
        proc = handle.proc  # type: ignore[attr-defined]
        if proc is None:
            return
        tree = _descendants(proc.pid)
        for sig, wait in ((None, grace), (signal.SIGTERM, 2.0), (signal.SIGKILL, 10.0)):
            if sig is not None:
                _signal_tree(proc.pid, tree, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        _signal_tree(proc.pid, [p for p in tree if _running(p)], signal.SIGKILL)

    def exit_cause(self, handle: LocalHandle, code: int) -> str:
        """How the end of a worker's process is described (subclasses add what they know)."""
        return describe_exit(code)

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        return tail(getattr(handle, "log_path", ""), lines)

    def status(self) -> dict[str, Any]:
        running = sum(1 for h in self._handles if h.proc and h.proc.poll() is None)
        return {"workers": len(self._handles), "running": running, "log_dir": self.log_dir}

    def close(self) -> None:
        for handle in self._handles:
            self.kill(handle, grace=0.5)
        for server in self._servers:
            server.close()
        if self._watcher is not None:
            self._watcher.stop()
        if self.log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)


class _ExitWatcher:
    """One thread that waits on the pidfds of all of a manager's workers."""

    def __init__(self, spec: LaunchSpec, manager: LocalManager) -> None:
        self.spec = spec
        self.manager = manager
        self.poll = select.poll()
        self.by_fd: dict[int, LocalHandle] = {}
        self.wake_r, self.wake_w = os.pipe()
        self.poll.register(self.wake_r, select.POLLIN)
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="clustermgr-local-exits", daemon=True)
        self.thread.start()

    # Ownership: the thread owns ``wake_r`` and the pidfds (it closes them as it ends);
    # ``wake_w`` is written only under ``lock`` while not stopped, and closed by stop().
    def watch(self, handle: LocalHandle) -> None:
        fd = os.pidfd_open(handle.proc.pid)  # type: ignore[union-attr]
        with self.lock:
            if self.stopped:
                os.close(fd)
                return
            self.by_fd[fd] = handle
            self.poll.register(fd, select.POLLIN)
            os.write(self.wake_w, b"x")

    def stop(self) -> None:
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
            os.write(self.wake_w, b"x")
        self.thread.join(timeout=5)
        os.close(self.wake_w)

    def _run(self) -> None:
        while not self.stopped:
            for fd, _ in self.poll.poll():
                if fd == self.wake_r:
                    os.read(self.wake_r, 4096)
                else:
                    self._exited(fd)
        with self.lock:
            for fd in list(self.by_fd):
                os.close(fd)
            self.by_fd.clear()
        os.close(self.wake_r)

    def _exited(self, fd: int) -> None:
        with self.lock:
            handle = self.by_fd.pop(fd)
            self.poll.unregister(fd)
        os.close(fd)
        code = handle.proc.wait()  # type: ignore[union-attr]
        threading.Thread(target=end_leftovers, args=(handle.launch_id,), daemon=True,
                         name="clustermgr-leftovers").start()
        self.spec.on_exit(handle, self.manager.exit_cause(handle, code), self.manager.log_tail(handle))

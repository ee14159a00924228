"""A fork server for local workers: one helper process imports the worker's modules once,
then forks each worker from that warm state (a few ms each, instead of a full interpreter
start and import per worker).

Who calls what: ``LocalManager.launch`` starts a :class:`ForkServer` (``python -m
clustermgr.managers.forkserver``) when the workers would run this same interpreter without
extra flags, asks it for each worker with ``spawn`` (environment, secret included, on the
helper's stdin pipe, never argv), then calls ``done()``.  The helper reaps its children
and reports each exit status on its stdout; it exits once ``done()`` came and its last
worker is gone, or when the master goes away (stdin closes).  A forked worker starts in a
new session with a fresh ``__main__``, its output in its log file, as an exec'd one.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from typing import Any


class ForkedProcess:
    """The master's view of a forked worker: the parts of ``Popen`` LocalManager uses."""

    def __init__(self, pid: int, server: ForkServer) -> None:
        self.pid = pid
        self.server = server
        self.returncode: int | None = None
        self._done = threading.Event()

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        return self.returncode  # type: ignore[return-value]


class ForkServer:
    def __init__(self, python: str = sys.executable) -> None:
        self.proc = subprocess.Popen([python, "-m", "clustermgr.managers.forkserver"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True, close_fds=True)
        self.lock = threading.Lock()
        self.children: dict[int, ForkedProcess] = {}
        self.spawned: dict[int, threading.Event] = {}
        self._started: list[int] = []
        self._started_cv = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True, name="clustermgr-forkserver")
        self.reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def spawn(self, env: dict[str, str], cwd: str, log_path: str, timeout: float = 30.0) -> ForkedProcess:
        """Fork one worker; its process handle."""
        with self.lock:
            line = json.dumps({"env": env, "cwd": cwd, "log": log_path}) + "\n"
            self.proc.stdin.write(line.encode())  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            with self._started_cv:
                answered = self._started_cv.wait_for(
                    lambda: self._started or self.proc.poll() is not None, timeout)
                if not answered:
                    raise OSError("the fork server did not answer")
                if not self._started:
                    raise OSError(f"the fork server exited with code {self.proc.poll()}")
                pid = self._started.pop(0)
            return self.children[pid]

    def done(self) -> None:
        """No more workers: the helper leaves once its last worker is gone."""
        with self.lock:
            try:
                self.proc.stdin.write(b'{"done": true}\n')  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
            except (BrokenPipeError, ValueError):
                pass

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            msg = json.loads(line)
            if "started" in msg:
                with self._started_cv:
                    self.children[msg["started"]] = ForkedProcess(msg["started"], self)
                    self._started.append(msg["started"])
                    self._started_cv.notify_all()
            elif "exited" in msg and msg["exited"] in self.children:
                self.children[msg["exited"]]._exited(msg["code"])
        self.proc.wait()
        for child in self.children.values():  # the helper died: no more statuses will come
            if child.returncode is None:
                child._exited(-signal.SIGKILL if not _alive(child.pid) else 0)
        with self._started_cv:
            self._started_cv.notify_all()

    def close(self) -> None:
        with self.lock:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
        self.reader.join(timeout=10)
        if not self.reader.is_alive():  # its pipe is ours to close once it has read to EOF
            self.proc.stdout.close()  # type: ignore[union-attr]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# --- the helper process ------------------------------------------------------------------

def _child(req: dict[str, Any], keep: list[int]) -> None:
    """In the forked worker: become a fresh worker process, then run the worker."""
    import types

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    for fd in keep:
        os.close(fd)
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    sys.argv = [sys.executable, "-m", "clustermgr.worker"]
    from clustermgr.worker.__main__ import main as worker_main

    code = 1
    try:
        code = worker_main([])
    finally:
        os._exit(code)


def serve() -> None:
    import clustermgr.worker.__main__  # noqa: F401 - the warm state every worker forks from
    import clustermgr.worker.loop  # noqa: F401

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    stdin, out = sys.stdin.buffer, sys.stdout
    children: set[int] = set()
    done = closed = False
    buf = b""
    while not closed and not (done and not children):
        ready, _, _ = select.select([stdin.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            children.discard(pid)
            out.write(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
            out.flush()
        if stdin.fileno() not in ready:
            continue
        chunk = os.read(stdin.fileno(), 1 << 20)
        if not chunk:
            closed = True
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            if req.get("done"):
                done = True
                continue
            out.flush()
            pid = os.fork()
            if pid == 0:
                _child(req, [wake_r, wake_w])
            children.add(pid)
            out.write(json.dumps({"started": pid}) + "\n")
            out.flush()


if __name__ == "__main__":
    serve()

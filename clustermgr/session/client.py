"""The user's side of sessions: ``start_session``, ``attach_session``, ``list_sessions``
and the ``Session`` handle.

Writes (submit, scale, extend, end) go to the daemon over the authenticated control
channel; reads (status, collect, events, logs) come straight from the session's database
and log, which only the owner can open (mode 0700 folder, 0600 files), so they also work
once the daemon has ended.  Closing or killing the client never affects the session.
"""

from __future__ import annotations

import json
import os
import pickle
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import psutil

from .control import Client, SessionError, home, read_credential, wait_for, write_private
from .daemon import PickledFunction
from .store import Store


@dataclass
class TaskFailure:
    """A failed task's entry in ``collect()``: the error, as text (never raised)."""

    task_id: int
    type: str
    message: str
    traceback: str

    def __repr__(self) -> str:
        return f"TaskFailure({self.task_id}, {self.type}: {self.message})"


class TaskFailedError(SessionError):
    """``Session.result`` of a task that failed; ``.failure`` holds the details."""

    def __init__(self, failure: TaskFailure) -> None:
        super().__init__(f"task {failure.task_id} failed: {failure.type}: {failure.message}\n"
                         f"{failure.traceback}".rstrip())
        self.failure = failure


@dataclass
class Status:
    """Counts of a session's tasks; ``print(status)`` shows a readable summary."""

    id: str
    name: str
    state: str
    workers: int
    total: int
    pending: int
    running: int
    completed: int
    failed: int

    @property
    def progress(self) -> float:
        """Percentage of tasks finished (completed or failed)."""
        return 100.0 * (self.completed + self.failed) / self.total if self.total else 100.0

    def __str__(self) -> str:
        return (f"session {self.name} ({self.id}) {self.state}, {self.workers} workers: "
                f"{self.completed + self.failed}/{self.total} tasks done ({self.progress:.0f}%) - "
                f"{self.pending} pending, {self.running} running, {self.completed} completed, "
                f"{self.failed} failed")


def _find(session: str) -> Path:
    """The folder of a session given its id, a unique id prefix, or its name."""
    root = home()
    if (root / session).is_dir():
        return root / session
    matches = [d for d in root.iterdir()
               if d.is_dir() and (d.name.startswith(session) or _name(d) == session)]
    if len(matches) > 1:  # a name shared by ended sessions and one live one means the live one
        live = [d for d in matches if _live_status(d)]
        if len(live) == 1:
            return live[0]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SessionError(f"no session {session!r}; `clustermgr ps --all` lists them")
    raise SessionError(f"{session!r} matches several sessions ({', '.join(d.name for d in matches)}); "
                       "give more of the id")


def _live_status(sdir: Path) -> bool:
    """Does this folder hold a session that is running or starting (its daemon alive)?"""
    try:
        return daemon_alive(sdir) and Session(sdir).state() in ("running", "starting")
    except Exception:  # noqa: BLE001 - a folder that cannot be read is no live session
        return False


def _name(sdir: Path) -> str | None:
    try:
        return (sdir / "name").read_text().strip()
    except OSError:
        return None


def daemon_alive(sdir: Path) -> bool:
    """Is this session's daemon process running?"""
    try:
        pid = int(read_credential(sdir).get("pid", 0))
    except (OSError, ValueError, SessionError):
        return False
    if not pid or not psutil.pid_exists(pid):
        return False
    try:
        proc = psutil.Process(pid)
        ours = "clustermgr.session.daemon" in " ".join(proc.cmdline())
        return proc.status() != psutil.STATUS_ZOMBIE and ours
    except psutil.Error:
        return False


def _spawn_daemon(sdir: Path) -> None:
    # Imported, not run as __main__: what the daemon sends its workers (run_payloads)
    # then goes by reference, and a worker imports the module (checkpoint.py finds the
    # running task in its frames) instead of getting a copy of the code with every batch.
    starter = subprocess.Popen([sys.executable, "-c", "from clustermgr.session.daemon import main; main()",
                                str(sdir)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, cwd=str(sdir))
    starter.wait(60)  # it forks the daemon and exits at once


def _read(path: str, what: str, binary: bool = False) -> Any:
    try:
        return Path(path).read_bytes() if binary else Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path!r} ({exc.strerror or exc})") from None


def _pickle_manager(manager: Any, resources: dict[str, Any],
                    flags: dict[str, Any] | None = None) -> str | None:
    from . import managers_by_name

    if manager is None or manager == "local":
        if flags:
            raise ValueError("scheduler flags need a scheduler manager (--manager slurm|sge|...)")
        if resources:
            raise ValueError("resources (-r cpu=..., mem=...) need a scheduler manager "
                             "(--manager slurm|sge|...)")
        return None
    if isinstance(manager, str):
        factory = managers_by_name(manager, resources, flags)
    elif callable(manager) and not hasattr(manager, "launch"):
        factory = manager
    else:
        raise TypeError("manager: give a name ('slurm', 'sge', ...) or a factory n -> ClusterManager "
                        "(the daemon builds its own managers, so a manager instance cannot be used)")
    return cloudpickle.dumps(factory).hex()


def start_session(name: str | None = None, manager: Any = None, nworkers: int = 4,
                  release_after: float | None = 1200, session_timeout: float | None = None,
                  absolute_timeout: float | None = None, files: Iterable[str] = (),
                  code_files: Iterable[str] = (), env: dict[str, str] | None = None,
                  log_dir: str | None = None, print_logs: bool = False, nowait: bool = False, *,
                  resources: dict[str, Any] | None = None, max_attempts: int = 3,
                  python: str | None = None, program: dict[str, Any] | None = None,
                  flags: dict[str, Any] | None = None, timeout: float = 300.0,
                  adaptive: tuple[int, int] | dict[str, Any] | None = None) -> Session:
    """Start a session daemon with *nworkers* workers; returns once they joined (at once
    with ``nowait=True``).  ``adaptive=(minimum, maximum)`` (or a dict of ``adapt``
    keywords): instead of *nworkers*, the daemon's workers follow its pending tasks
    (``clustermgr.adapt``); ``release_after`` is then adapt's ``idle_timeout``.  See the
    README's "Sessions" for every option."""
    # Everything is checked before anything is created: a start that fails leaves nothing.
    if isinstance(nworkers, bool) or not isinstance(nworkers, int) or nworkers < 0:
        raise ValueError(f"nworkers must be an int >= 0, not {nworkers!r}")
    manager_blob = _pickle_manager(manager, dict(resources or {}), dict(flags or {}))
    adapt_options = _adapt_options(adaptive, release_after)
    if adapt_options is not None:
        nworkers = adapt_options["minimum"]
    file_data = {os.path.basename(f): _read(f, "files", binary=True).hex() for f in files}
    code = [_read(f, "code_files") for f in code_files]
    if program and program.get("kind") == "script" and not os.path.isfile(program["script"]):
        raise ValueError(f"no script {program['script']!r}: give the path of a Python file")
    if python is not None and not (shutil.which(python) or os.access(python, os.X_OK)):
        raise ValueError(f"python={python!r} is not an executable on this host")
    root = home()
    if name is not None:
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise ValueError(f"name must be a non-empty string without '/', not {name!r}")
        for other in root.iterdir():
            if other.is_dir() and _name(other) == name and _live_status(other):
                raise SessionError(f"a session named {name!r} is running ({other.name}): choose another "
                                   f"name, or end it first (`clustermgr rm {other.name}`)")
    sid = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    sdir = root / sid
    sdir.mkdir(mode=0o700)
    try:
        if log_dir:
            os.symlink(os.path.abspath(log_dir), sdir / "logs")
        (sdir / "name").write_text(name or sid)
        write_private(sdir / "credential", {"secret": secrets.token_bytes(32).hex()})
        store = Store(str(sdir / "session.db"))
        try:
            store.set(id=sid, name=name or sid, created=time.time(), status="starting", nworkers=nworkers,
                      release_after=release_after, session_timeout=session_timeout,
                      absolute_timeout=absolute_timeout, env=dict(env or {}), max_attempts=max_attempts,
                      manager=manager_blob, python=python, files=file_data, code=code, program=program,
                      adaptive=adapt_options,
                      sys_path=[p for p in sys.path if p],  # the client's modules, importable there
                      dir=str(sdir / "work"))
            store.event("created", name=name or sid, workers=nworkers)
        finally:
            store.close()
        (sdir / "work").mkdir(mode=0o700)
    except BaseException:
        shutil.rmtree(sdir, ignore_errors=True)
        raise
    _spawn_daemon(sdir)
    session = Session(sdir, print_logs=print_logs)
    session._connect(timeout=60)
    if not nowait and nworkers:
        session.wait_for_workers(1 if program else nworkers, timeout=timeout)
    return session


def _adapt_options(adaptive: Any, release_after: float | None) -> dict[str, Any] | None:
    """``start_session``'s ``adaptive=`` as the daemon's ``adapt`` keywords (checked here,
    before anything starts)."""
    if adaptive is None:
        return None
    if isinstance(adaptive, dict):
        options = dict(adaptive)
    elif isinstance(adaptive, (tuple, list)) and len(adaptive) == 2:
        options = {"minimum": adaptive[0], "maximum": adaptive[1]}
    else:
        raise TypeError(f"adaptive= takes (minimum, maximum) or a dict of adapt() keywords, not {adaptive!r}")
    options.setdefault("minimum", 0)
    if release_after is not None:
        options.setdefault("idle_timeout", float(release_after))
    from ..adaptive import Adaptive
    from ..managers.local import LocalManager

    try:
        json.dumps(options)
        Adaptive(LocalManager(1), **options)  # the same checks as the daemon's (starts nothing)
    except TypeError as exc:
        raise TypeError(f"adaptive=: {exc}") from None
    return options


def attach_session(session: str, resume: bool = False, timeout: float = 30.0) -> Session:
    """A handle on a running session (by id, id prefix or name).  A session whose daemon
    died is resumed with ``resume=True``; without it, the error says how."""
    sdir = _find(session)
    s = Session(sdir)
    if s.state() == "ended":
        return s  # read-only: results and logs until cleanup()
    if not daemon_alive(sdir):
        if not resume:
            raise SessionError(f"session {sdir.name}'s daemon is not running (killed?); resume it with "
                               f"`clustermgr session resume {sdir.name}` or attach_session(..., resume=True)")
        resume_session(sdir.name, timeout=timeout)
    s._connect(timeout=timeout)
    return s


def resume_session(session: str, timeout: float = 60.0) -> Session:
    """Restart a dead session's daemon from its database: completed results stay, pending
    and interrupted tasks run again."""
    sdir = _find(session)
    if daemon_alive(sdir):
        raise SessionError(f"session {sdir.name} is running; nothing to resume")
    s = Session(sdir)
    if s.state() == "ended":
        raise SessionError(f"session {sdir.name} has ended; start a new one")
    if s.state() == "broken":
        raise SessionError(f"session {sdir.name} never started (its folder is incomplete): "
                           f"remove it with `clustermgr rm {sdir.name}`")
    old = read_credential(sdir)
    write_private(sdir / "credential", {"secret": old["secret"]})  # no stale address or pid
    _spawn_daemon(sdir)
    s._connect(timeout=timeout)
    return s


def list_sessions() -> list[dict[str, Any]]:
    """Every session of this user: id, name, created, last activity, state and counts."""
    out = []
    for sdir in sorted(home().iterdir()):
        if not sdir.is_dir():
            continue
        session = Session(sdir)
        try:
            if session.state() == "broken":
                raise ValueError("incomplete folder")
            out.append(session.summary())
        except Exception:  # noqa: BLE001 - a broken folder is listed as such, and rm removes it
            out.append({"id": sdir.name, "name": _name(sdir) or "-", "state": "broken"})
    return out


class Session:
    """A handle on one session (see the module docstring for what goes where)."""

    def __init__(self, sdir: Path, print_logs: bool = False) -> None:
        self.dir = sdir
        self.id = sdir.name
        self.print_logs = print_logs
        self._client: Client | None = None
        self._log_pos = 0

    def __repr__(self) -> str:
        return f"<Session {self.name} ({self.id}) {self.state()}>"

    @property
    def name(self) -> str:
        return _name(self.dir) or self.id

    def _connect(self, timeout: float) -> None:
        cred = wait_for(lambda: self._credential_with_address(), timeout, "the session daemon to start")
        self._client = Client(cred["address"], bytes.fromhex(cred["secret"]))

    def _credential_with_address(self) -> dict | None:
        cred = read_credential(self.dir)
        if "address" in cred:
            return cred
        if self._read_store(lambda st: st.get("status")) == "ended":
            raise SessionError(f"session {self.id} ended while starting:\n{self.logs(tail=20)}")
        return None

    def _request(self, op: str, blobs: list[bytes] = (), **args: Any) -> dict:  # type: ignore[assignment]
        if self._client is None:
            if self.state() == "ended":
                raise SessionError(f"session {self.id} has ended; its results stay readable")
            raise SessionError(f"not connected to session {self.id}: attach_session({self.id!r}) first")
        return self._client.request(op, blobs, **args)[0]

    def _read_store(self, fn: Callable[[Store], Any]) -> Any:
        store = Store(str(self.dir / "session.db"), readonly=True)
        try:
            return fn(store)
        finally:
            store.close()

    # --- state -------------------------------------------------------------------------

    def state(self) -> str:
        """"running", "ended", "starting", "dead" (daemon gone without ending), or "broken"
        (a folder whose database is missing or was never filled in: ``cleanup()`` removes it)."""
        if not (self.dir / "session.db").exists():
            return "broken"
        try:
            status = self._read_store(lambda st: st.get("status"))
        except sqlite3.Error:
            if self._files_gone():
                return "broken"
            raise
        if status is None:
            return "broken"
        if status in ("running", "starting") and not daemon_alive(self.dir):
            return "dead" if status == "running" else "starting"
        return str(status)

    def _files_gone(self) -> bool:
        """Are the session's files being removed (by ``rm``, under a reader)?"""
        return not all((self.dir / name).exists() for name in ("session.db", "credential"))

    def summary(self) -> dict[str, Any]:
        meta, counts = self._read_store(lambda st: (st.meta(), st.counts()))
        return {"id": self.id, "name": meta.get("name"), "created": meta.get("created"),
                "last_activity": meta.get("last_activity"), "state": self.state(),
                "workers": meta.get("nworkers"), **counts}

    def status(self) -> Status:
        """Task counts, and the workers the daemon has now (0 once it ended or died)."""
        s = self.summary()
        workers = 0
        if s["state"] == "running":
            try:
                if self._client is None:
                    self._connect(timeout=10)
                workers = len(self._request("ping")["workers"])
            except SessionError:
                workers = 0  # the daemon went meanwhile
        return Status(self.id, s["name"], s["state"], workers, s["total"], s["pending"], s["running"],
                      s["completed"], s["failed"])

    def explain(self, task_id: int | None = None) -> str:
        """Why work waits or failed: workers, the managers' jobs (the scheduler's pending
        reasons, jobs running but not joined, how dead ones ended), and with *task_id* that
        task's state, attempts and error.  Asks the daemon; needs it running."""
        if self._client is None:
            self._connect(timeout=10)
        return self._request("explain", task=task_id)["text"]

    def wait_for_workers(self, n: int, timeout: float = 300.0) -> None:
        wait_for(lambda: len(self._request("ping")["workers"]) >= n, timeout, f"{n} workers to join",
                 interval=0.1)

    # --- work --------------------------------------------------------------------------

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> int:
        """Store one task (in the database before this returns); its id."""
        return self._request("submit", [cloudpickle.dumps((fn, args, kwargs))])["ids"][0]

    def map(self, fn: Callable, iterable: Iterable, chunk: int = 1000) -> list[int]:
        """One task per item; their ids, in order."""
        ids: list[int] = []
        items = list(iterable)
        call = PickledFunction(cloudpickle.dumps(fn))  # by value once, not once per item
        for i in range(0, len(items), chunk):
            blobs = [_payload(fn, call, x) for x in items[i:i + chunk]]
            ids += self._request("submit", blobs)["ids"]
        return ids

    def collect(self, wait: bool = False, timeout: float | None = None) -> dict[int, Any]:
        """``{task id: value}`` of the finished tasks (all of them with ``wait=True``); a
        failed task's value is a :class:`TaskFailure`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while wait:
            counts = self._read_store(lambda st: st.counts())
            if counts["pending"] + counts["running"] == 0:
                break
            if self.state() in ("ended", "dead"):
                raise SessionError(f"session {self.id} is {self.state()} with tasks unfinished")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{counts['pending'] + counts['running']} tasks still unfinished "
                                   f"after {timeout} s")
            if self.print_logs:
                self._print_new_logs()
            time.sleep(0.1)  # progress is in another process's database: poll it
        return {row[0]: _entry(row) for row in self._read_store(lambda st: st.finished())}

    def result(self, task_id: int, timeout: float | None = None) -> Any:
        """The value of one task (waits for it); raises TaskFailedError if it failed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rows = self._read_store(lambda st: st.finished([task_id]))
            if rows:
                value = _entry(rows[0])
                if isinstance(value, TaskFailure):
                    raise TaskFailedError(value)
                return value
            if self._read_store(lambda st: st.task_state(task_id)) is None:
                raise SessionError(f"session {self.id} has no task {task_id}")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} unfinished after {timeout} s")
            time.sleep(0.05)  # see collect()

    def scale(self, n: int) -> None:
        """Grow or shrink the worker set to *n* (running tasks of removed workers rerun)."""
        self._request("scale", n=n)

    def extend(self, seconds: float) -> None:
        """Push session_timeout and absolute_timeout back by *seconds*."""
        self._request("extend", seconds=seconds)

    def end(self, timeout: float = 120.0) -> None:
        """Stop the workers (cancelling scheduler jobs) and the daemon; results stay."""
        if daemon_alive(self.dir):  # a running daemon is always asked, whatever its files say
            if self._client is None:
                self._connect(timeout=30)
            self._request("end")
            wait_for(lambda: not daemon_alive(self.dir), timeout, "the session daemon to stop", interval=0.1)
            if self._client is not None:
                self._client.close()
                self._client = None
            return
        if self.state() in ("ended", "broken"):
            return
        store = Store(str(self.dir / "session.db"))  # dead, or a start that never got going
        store.set(status="ended", ended=time.time(), end_reason="ended while its daemon was not running")
        store.close()

    def cleanup(self) -> None:
        """Remove the session's files (ends it first)."""
        self.end()
        shutil.rmtree(self.dir)

    # --- what happened -----------------------------------------------------------------

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        """Lifecycle events: created, worker started / joined / lost, task failed, scaled,
        released, extended, ended, ..."""
        return self._read_store(lambda st: st.events(after))

    def logs(self, tail: int = 50, follow: bool = False, program: bool = False) -> Any:
        """The last *tail* lines of the session's log (daemon and worker output; with
        ``program=True`` the output of ``clustermgr run``'s program, ``program.log``) as text;
        with ``follow=True`` an iterator that keeps yielding new lines until it ends."""
        path = self.dir / ("program.log" if program else "daemon.log")
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = text.splitlines()[-tail:] if tail else []
        if not follow:
            return "\n".join(lines)
        return self._follow(path, lines)

    def _follow(self, path: Path, first: list[str]) -> Iterator[str]:
        yield from first
        pos = path.stat().st_size if path.exists() else 0
        gone = SessionError(f"session {self.id} was removed while its log was followed")
        while True:
            if not self.dir.exists():
                raise gone
            if path.exists() and path.stat().st_size > pos:
                with open(path, errors="replace") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                    pos = fh.tell()
                yield from chunk.splitlines()
            elif (state := self.state()) != "running":
                if state == "broken" or self._files_gone():
                    raise gone
                return
            else:
                time.sleep(0.2)  # a growing file: nothing to wait on portably

    def _print_new_logs(self) -> None:
        path = self.dir / "daemon.log"
        if path.exists():
            with open(path, errors="replace") as fh:
                fh.seek(self._log_pos)
                sys.stdout.write(fh.read())
                self._log_pos = fh.tell()


def _entry(row: tuple) -> Any:
    task, state, result, kind, message, tb = row
    if state == "completed":
        return cloudpickle.loads(result)
    return TaskFailure(task, kind or "?", message or "", tb or "")


def _payload(fn: Callable, call: PickledFunction, x: Any) -> bytes:
    """One task of a map: the C pickler with the function pickled once, unless the item
    needs cloudpickle (it fails the C pickler or names the user's script)."""
    try:
        if b"__main__" not in pickle.dumps(x, protocol=5):
            return pickle.dumps((call, (x,), {}), protocol=5)
    except Exception:  # noqa: BLE001 - cloudpickle may manage, or say why not
        pass
    return cloudpickle.dumps((fn, (x,), {}))

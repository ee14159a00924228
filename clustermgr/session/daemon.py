"""The session daemon: a detached clustermgr master that owns a session's workers.

Started by ``start_session`` / ``clustermgr session resume`` as
``python -m clustermgr.session.daemon SESSION_DIR`` (it forks once more and leaves its
parent, so no client process is its parent).  It reads the secret from the session's
0600 credential file, binds its control socket, then loops on one thread: answer
clients, hand pending tasks to idle workers (``Store.claim``), store results, grow,
shrink and release workers, enforce the timeouts.  Workers start and stop on helper
threads, whose outcome comes back to the loop through a queue.  Everything it knows is in
the database, so a killed daemon resumes from it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import runpy
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle

from ..checkpoint import Preempted, task_frame
from ..transport import current_node
from .control import Server, read_credential, write_private
from .store import Store

log = logging.getLogger("clustermgr")

#: a session worker whose daemon vanished exits after this many silent seconds
WORKER_GRACE = 15.0
#: Tasks go to a worker in batches of about this much work (by the measured time per task),
#: at most MAX_BATCH, with up to two batches in flight per worker while tasks are short.
BATCH_SECONDS = 0.02
MAX_BATCH = 1000
_SMOOTH = 0.25


def run_payload(payload: bytes) -> tuple:
    """On a worker: run one task; ``("ok", pickled value)`` or the error's text.  The
    daemon stores either without unpickling anything."""
    try:
        fn, args, kwargs = cloudpickle.loads(payload)
        return ("ok", cloudpickle.dumps(fn(*args, **kwargs)))
    except Preempted as exc:  # its checkpoint: the task's new payload, to run elsewhere
        again = exc.resume
        return ("resume", cloudpickle.dumps((again.fn, again.args, again.kwargs)))
    except BaseException as exc:  # noqa: BLE001 - every error is the task's outcome
        return ("err", f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
                str(exc), "".join(traceback.format_exception(exc)))


class PickledFunction:
    """A function cloudpickled once, for many tasks (``Session.map``): each task's payload
    holds these bytes, so the function is not pickled by value per task; a worker unpickles
    each distinct function once."""

    _cache: dict[bytes, Callable] = {}

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple:
        return PickledFunction, (self.blob,)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self._cache.get(self.blob)
        if fn is None:
            if len(self._cache) >= 64:
                self._cache.clear()
            fn = self._cache[self.blob] = cloudpickle.loads(self.blob)
        return fn(*args, **kwargs)


def run_payloads(payloads: list[bytes]) -> list[tuple]:
    """On a worker: run a batch of tasks, each as :func:`run_payload` (one outcome each).
    After a task was preempted, the rest of the batch is handed back unstarted."""
    out: list[tuple] = []
    for p in payloads:
        out.append(run_payload(p) if not out or out[-1][0] != "resume" else ("requeue",))
        if out[-1][0] == "resume":
            out.extend([("requeue",)] * (len(payloads) - len(out)))
            break
    return out


task_frame(run_payload, ("fn", "args", "kwargs"))  # a preempted worker checkpoints the task


def setup_worker(files: dict[str, bytes], code: list[str]) -> None:
    """On a worker at start: write *files* into its working folder, run *code* in __main__."""
    import __main__

    for name, data in files.items():
        Path(name).write_bytes(data)
    for source in code:
        exec(compile(source, "<session code_file>", "exec"), __main__.__dict__)  # noqa: S102


class Daemon:
    def __init__(self, sdir: Path) -> None:
        self.sdir = sdir
        self.store = Store(str(sdir / "session.db"))
        cred = read_credential(sdir)
        self.secret = bytes.fromhex(cred["secret"])
        self.meta = self.store.meta()
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # from helper threads and callbacks
        self.wake_r, self.wake_w = os.pipe()  # a byte per event wakes the loop at once
        os.set_blocking(self.wake_w, False)
        self.next_deadline_check = 0.0
        self.workers: set[int] = set()    # joined and set up
        self.busy: dict[int, list[list[int]]] = {}  # worker -> its batches in flight (task ids)
        self.task_time: float | None = None  # seconds per task, as workers measured, smoothed
        self.isolate = 0  # tasks to run one per batch (after a worker died with a batch)
        self.lost: set[int] = set()  # workers whose death was seen (charged or not)
        self.removing: set[int] = set()
        self.starting = 0
        self.target = int(self.meta.get("nworkers", 1))
        self.released = False
        self.ending = False
        self.last_activity = time.time()
        self.program: threading.Thread | None = None
        self.adaptive: Any = None  # with start_session(adaptive=...): its workers follow the tasks
        self.pending_tasks = 0  # tasks waiting (for adapt; counted every _check_deadlines)

    # --- life --------------------------------------------------------------------------

    def run(self) -> None:
        import clustermgr as cm

        cm.configure(output=self._worker_output, master_grace=WORKER_GRACE)
        sys.path[:0] = [p for p in self.store.get("sys_path") or [] if p not in sys.path]
        self.server = Server(self.secret)
        cred = read_credential(self.sdir)
        write_private(self.sdir / "credential", {**cred, "address": f"tcp://127.0.0.1:{self.server.port}",
                                                 "pid": os.getpid()})
        interrupted = self.store.requeue_interrupted()
        resumed = self.store.get("status") not in (None, "starting")
        self.store.set(status="running", pid=os.getpid(), last_activity=time.time())
        self.store.event("resumed" if resumed else "started", pid=os.getpid(), requeued=interrupted)
        log.info("session daemon %d up on port %d (requeued %d interrupted tasks)",
                 os.getpid(), self.server.port, interrupted)
        from ..cluster import node

        node().listeners.append(self._cluster_event)
        if self.meta.get("adaptive"):
            self._adapt(self.meta["adaptive"])
        else:
            self._grow(self.target)
        import zmq

        poller = zmq.Poller()
        poller.register(self.server.sock, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        try:
            stopping = False
            while not (self.ending and not self.starting):
                if self.ending and self.starting and not stopping:
                    stopping = True
                    threading.Thread(target=self._stop_launches, daemon=True, name="session-stop").start()
                ready = dict(poller.poll(250))
                if self.wake_r in ready:
                    os.read(self.wake_r, 65536)
                if self.server.sock in ready:
                    for _ in range(64):
                        self.server.handle_one(self._request)
                        if not self.server.poll(0):
                            break
                self._drain_events()
                self._dispatch()
                if time.monotonic() >= self.next_deadline_check:
                    self.next_deadline_check = time.monotonic() + 0.25
                    self._check_deadlines()
                    self.server.tick()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        import clustermgr as cm

        _stop_program_command()
        with contextlib.suppress(Exception):
            cm.shutdown()
        self.store.requeue_interrupted()  # unfinished tasks stay pending, for a resume
        if self.store.get("status") != "ended":
            self.store.set(status="ended", ended=time.time())
        self.store.event("ended", reason=self.store.get("end_reason", "ended"))
        self.server.close()
        self.store.close()
        log.info("session daemon %d ended", os.getpid())

    # --- clients -----------------------------------------------------------------------

    def _request(self, msg: dict, blobs: list) -> tuple[dict, list]:
        op = msg.get("op")
        self.last_activity = time.time()  # stored by _check_deadlines, not per request
        if op == "ping":
            return {"pid": os.getpid(), "workers": sorted(self.workers)}, []
        if op == "submit":
            ids = self.store.add_tasks(bytes(b) for b in blobs)
            if self.released and not self.workers and not self.starting:
                self.released = False
                self.store.event("scaled", workers=self.target, why="new work after release")
                self._grow(self.target)
            return {"ids": ids}, []
        if op == "scale":
            return self._scale(int(msg["n"])), []
        if op == "extend":
            extended = float(self.meta.get("extended", 0.0)) + float(msg["seconds"])
            self.meta["extended"] = extended
            self.store.set(extended=extended)
            self.store.event("extended", seconds=float(msg["seconds"]), total=extended)
            return {"extended": extended}, []
        if op == "end":
            self._end("ended by the user")
            return {}, []
        if op == "explain":
            return {"text": self._explain(msg.get("task"))}, []
        raise ValueError(f"unknown request {op!r}")

    def _explain(self, task: int | None) -> str:
        """Why work waits or failed: the workers, each manager's jobs (``explain()``), and
        with *task* that task's own record."""
        from .. import cluster

        lines = []
        if task is not None:
            info = self.store.task_info(int(task))
            if info is None:
                return f"no task {task} in this session"
            lines.append(f"task {task}: {info['state']}, {info['attempts']} attempt(s)"
                         + (f", on worker {info['worker']}" if info["worker"] else ""))
            if info["error_type"]:
                lines.append(f"  error: {info['error_type']}: {info['error_message']}")
                lines += [f"    {line}" for line in (info["error_traceback"] or "").strip().splitlines()[-8:]]
            if info["state"] != "pending":
                return "\n".join(lines)
        busy = sorted(self.busy)
        lines.append(f"workers: {len(self.workers)} joined ({len(busy)} busy), {self.starting} starting, "
                     f"target {self.target}" + (" (released while idle: new work starts them again)"
                                                if self.released else ""))
        counts = self.store.counts()
        lines.append(f"tasks: {counts['pending']} pending, {counts['running']} running, "
                     f"{counts['completed']} completed, {counts['failed']} failed")
        for manager in list(cluster._managers):
            explain = getattr(manager, "explain", None)
            if explain is not None:
                lines.append(explain())
        return "\n".join(lines)

    # --- workers -----------------------------------------------------------------------

    def _factory(self) -> Any:
        blob = self.store.get("manager")
        if blob is None:
            from ..managers.local import LocalManager

            return LocalManager
        return cloudpickle.loads(bytes.fromhex(blob))

    def _cluster_event(self, kind: str, wid: int) -> None:
        """A node listener (the I/O thread): a worker joined, or left (an idle one too:
        retired by adapt, or its job ended)."""
        if kind == "join":
            self.post("arrived", wid)
        elif kind == "leave":
            self.post("left", wid)

    def _adapt(self, options: dict[str, Any]) -> None:
        """``start_session(adaptive=...)``: an adapt of one manager from the session's
        factory follows the pending tasks (``backlog``); workers that join are set up and
        used as any other (``arrived``), and are not counted as ``starting``."""
        from ..adaptive import adapt, add_backlog

        self.pending_tasks = self.store.count_pending()
        add_backlog(self)
        self.adaptive = adapt(self._factory()(1), **options, **self._launch_options())
        self.store.event("adapting", **{k: v for k, v in options.items() if k in ("minimum", "maximum")})

    def backlog(self) -> int:
        """Tasks waiting for a worker (read by adapt, from its thread)."""
        return self.pending_tasks

    def _launch_options(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"env": self.store.get("env") or {}}
        if self.store.get("dir"):
            kw["dir"] = self.store.get("dir")
        if self.store.get("python"):
            kw["python"] = self.store.get("python")
        return kw

    def _grow(self, n: int) -> None:
        if n <= 0:
            return
        self.starting += n
        self.store.event("worker started", count=n)
        threading.Thread(target=self._start_workers, args=(n,), daemon=True, name="session-grow").start()

    def _start_workers(self, n: int) -> None:
        """One launch of *n* workers.  Each worker is set up and used as it joins (the
        "arrived" event, from the node's listener), not when the whole launch has joined:
        under a batch scheduler some of its jobs may pend for hours.  When the launch is
        over, the workers that never joined stop counting as starting."""
        import clustermgr as cm

        ids: list[int] = []
        try:
            kw: dict[str, Any] = {**self._launch_options(), "min_workers": 1}
            try:
                ids = cm.addprocs(self._factory()(n), **kw)
            except cm.LaunchError as exc:
                ids = exc.joined
                if not self.ending:
                    self.post("launch_error", str(exc))
        except Exception as exc:  # noqa: BLE001 - reported in the events
            self.post("launch_error", f"{type(exc).__name__}: {exc}")
        self.post("joined", (n - len(ids), []))

    def _arrived(self, wid: int) -> None:
        """A worker joined: set it up (files, code) off the loop thread, then use it."""
        import clustermgr as cm

        files = {name: bytes.fromhex(data) for name, data in (self.store.get("files") or {}).items()}
        code = self.store.get("code") or []
        try:
            cm.remotecall_fetch(setup_worker, wid, files, code)
        except Exception as exc:  # noqa: BLE001 - that worker is unusable
            self.post("launch_error", f"worker {wid} setup failed: {exc}")
            cm.rmprocs(wid, waitfor=0)
            self.post("joined", (self._counted(), []))
            return
        self.post("joined", (self._counted(), [wid]))

    def _counted(self) -> int:
        """How much a worker that arrived takes off ``starting``: adapt's workers were
        never counted in it."""
        return 0 if self.adaptive is not None else 1

    def _stop_launches(self) -> None:
        """The session ends while jobs still wait in a queue: cancel them (every manager
        closes), so the end does not wait for a job that may pend for hours."""
        from .. import cluster

        for manager in list(cluster._managers):
            with contextlib.suppress(Exception):
                manager.close()

    def _scale(self, n: int) -> dict:
        if n < 0:
            raise ValueError("scale needs a number of workers >= 0")
        if self.adaptive is not None:
            raise ValueError(f"this session adapts its workers to its tasks (between "
                             f"{self.adaptive.minimum} and {self.adaptive.maximum}); scale does not "
                             "apply: start a session without adaptive= to set a number")
        now = len(self.workers) + self.starting - len(self.removing)
        self.target = n
        self.store.set(nworkers=n)
        self.store.event("scaled", workers=n, was=now)
        if n > now:
            self._grow(n - now)
        elif n < now:
            idle = sorted(self.workers - set(self.busy) - self.removing)
            busy = sorted(set(self.busy) - self.removing)
            self._remove((idle + busy)[: now - n])
        return {"workers": n}

    def _remove(self, ids: list[int]) -> None:
        import clustermgr as cm

        if not ids:
            return
        self.removing.update(ids)
        self.workers.difference_update(ids)
        def shrink() -> None:
            cm.rmprocs(ids)
            self.post("removed", ids)

        threading.Thread(target=shrink, daemon=True, name="session-shrink").start()

    def _worker_output(self, wid: int, line: str, stream: str) -> None:
        log.info("worker %d: %s", wid, line)

    # --- tasks -------------------------------------------------------------------------

    def _batch_size(self) -> int:
        """Tasks per call: one until their time is known (or while isolating a task that
        may kill its worker), then about ``BATCH_SECONDS`` of work."""
        if self.isolate or self.task_time is None:
            return 1
        return max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(self.task_time, 1e-7))))

    def _in_flight(self) -> int:
        """Batches per worker: two while tasks are short (no idle gap between batches),
        one when they are long (no task waits behind another while a worker is free)."""
        short = self.task_time is not None and self.task_time * self._batch_size() < 0.05
        return 2 if short and not self.isolate else 1

    def _dispatch(self) -> None:
        from ..calls import remotecall

        depth = self._in_flight()
        draining = getattr(current_node(), "draining", None) or {}
        for wid in sorted(self.workers - self.removing):
            if wid in draining:  # adapt retires it, or its walltime nears
                continue
            while len(self.busy.get(wid, ())) < depth:
                claimed = self.store.claim_many(wid, self._batch_size())
                if not claimed:
                    return
                tasks = [task for task, _ in claimed]
                self.busy.setdefault(wid, []).append(tasks)
                try:
                    fut = remotecall(run_payloads, wid, [payload for _, payload in claimed])
                except Exception as exc:  # noqa: BLE001 - the worker is gone: its tasks go back
                    self._batch_done(wid, tasks, None, exc)
                    break
                fut.add_done_callback(functools.partial(self._call_done, wid, tasks))

    def _call_done(self, wid: int, tasks: list[int], fut: Any) -> None:
        """On the runtime's I/O thread: hand the finished batch to the loop."""
        self.post("done", (wid, tasks, fut))

    def post(self, kind: str, what: Any) -> None:
        """Hand an event to the loop (any thread) and wake it."""
        self.events.put((kind, what))
        try:
            os.write(self.wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake anyway

    def _drain_events(self) -> None:
        while True:
            try:
                kind, what = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "done":
                wid, tasks, fut = what
                try:
                    outcomes = fut.fetch()
                except Exception as exc:  # noqa: BLE001
                    self._batch_done(wid, tasks, None, exc)
                else:
                    if fut.run_time is not None:
                        per = fut.run_time / len(tasks)
                        self.task_time = per if self.task_time is None else \
                            (1 - _SMOOTH) * self.task_time + _SMOOTH * per
                    self._batch_done(wid, tasks, outcomes, None)
            elif kind == "arrived":
                if self.ending:  # no use for it: it goes (and no longer counts as starting)
                    self.starting -= self._counted()
                    self._remove([what])
                else:
                    threading.Thread(target=self._arrived, args=(what,), daemon=True,
                                     name="session-setup").start()
            elif kind == "joined":
                n, ready = what
                self.starting -= n
                if self.ending:
                    self._remove(ready)
                    continue
                self.workers.update(ready)
                for wid in ready:
                    self.store.event("worker joined", worker=wid)
            elif kind == "removed":
                self.removing.difference_update(what)
            elif kind == "left" and what in self.workers and what not in self.busy:
                self.workers.discard(what)  # idle when it went: no task to put back
                if what not in self.removing:
                    self.store.event("worker left", worker=what)
                    if not self.ending and not self.released and self.adaptive is None:
                        self._grow(1)  # keep the worker count (adapt keeps its own)
            elif kind == "launch_error":
                self.store.event("launch error", error=what)
                log.error("session: %s", what)
            elif kind == "program":
                status, code = what
                self.store.set(program_status=status, program_exit=code)
                self.store.event(f"program {status}", exit_code=code)
            elif kind == "end":
                self._end(what)

    def _batch_done(self, wid: int, tasks: list[int], outcomes: list[tuple] | None,
                    exc: BaseException | None) -> None:
        """A batch came back (*outcomes*, one per task) or its call failed (*exc*)."""
        from ..errors import ProcessExitedError

        batches = self.busy.get(wid, [])
        # The first failure of a dead worker that held this one task alone: it was running it.
        held_alone = batches == [tasks] and len(tasks) == 1 and wid not in self.lost
        if tasks in batches:
            batches.remove(tasks)
        if not batches:
            self.busy.pop(wid, None)
        self.last_activity = time.time()
        if outcomes is not None:
            self.store.finish_many(wid, list(zip(tasks, outcomes, strict=True)))
            self.isolate = max(0, self.isolate - len(tasks))
        elif isinstance(exc, ProcessExitedError):
            self.lost.add(wid)
            removed = wid in self.removing or bool(exc.infrastructure)  # not the tasks' doing
            self.workers.discard(wid)
            if wid not in self.removing:
                self.store.event("worker lost", worker=wid, cause=str(exc))
                if not self.ending and not self.released and self.adaptive is None:
                    self._grow(1)  # keep the worker count (adapt keeps its own)
            if not held_alone and not removed:
                # Which task killed the worker is unknown (it held other batches, and a
                # finished one's result may have died with it): none is charged an
                # attempt; they run one per batch next, where the one that kills is charged.
                for task in tasks:
                    self.store.release(task, wid, count_attempt=False)
                self.isolate += 2 * len(tasks)
                return
            limit = int(self.store.get("max_attempts", 3))
            for task in tasks:
                if removed or self.store.attempts(task) < limit:
                    self.store.release(task, wid, count_attempt=not removed)
                else:
                    self.store.fail(task, wid, "ProcessExitedError", str(exc), "")
                    self.store.event("task failed", task=task, worker=wid,
                                     error=f"gave up after {limit} attempts")
        else:
            for task in tasks:
                self.store.fail(task, wid, type(exc).__name__, str(exc), "")

    # --- time --------------------------------------------------------------------------

    def _check_deadlines(self) -> None:
        now = time.time()
        meta = self.meta  # read at start; the daemon is its only writer
        if self.last_activity != meta.get("last_activity"):
            meta["last_activity"] = self.last_activity
            self.store.set(last_activity=self.last_activity)
        extended = float(meta.get("extended", 0.0))
        idle_limit, absolute = meta.get("session_timeout"), meta.get("absolute_timeout")
        if absolute is not None and now > meta["created"] + float(absolute) + extended:
            self._end(f"absolute_timeout ({absolute} s) reached")
        elif idle_limit is not None and now > self.last_activity + float(idle_limit) + extended \
                and not self.busy:
            self._end(f"session_timeout ({idle_limit} s without activity) reached")
        if self.adaptive is not None:  # adapt's idle_timeout plays release_after's part
            self.pending_tasks = self.store.count_pending()
            return
        release = meta.get("release_after")
        counts_pending = self.busy or self.store.has_pending()
        if release is not None and self.workers and not counts_pending and not self.released \
                and now > self.last_activity + float(release):
            self.released = True
            self.store.event("released", workers=len(self.workers), after=float(release))
            self._remove(sorted(self.workers))

    def _end(self, reason: str) -> None:
        if self.ending:
            return
        self.ending = True
        self.store.set(end_reason=reason)
        log.info("session ending: %s", reason)


# --- the program of `clustermgr run` ----------------------------------------------------

_commands: list[subprocess.Popen] = []  # the program's shell command (run --exec), while it runs


def _stop_program_command() -> None:
    """The session ends: its ``--exec`` command, and what that started, end with it."""
    from ..processes import stop_processes, with_descendants

    for proc in _commands:
        if proc.poll() is None:
            stop_processes(with_descendants(proc.pid), grace=5.0)
            proc.wait()

def run_program(sdir: Path, program: dict[str, Any]) -> int:
    """Run `clustermgr run`'s code, script or command in this process (the session's
    master: ``cm.workers()`` are the session's workers), its output to ``program.log``;
    its exit status."""
    code = 0
    with open(sdir / "program.log", "a", buffering=1) as out, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if program["kind"] == "code":
                exec(compile(program["code"], "<clustermgr run -c>", "exec"), {"__name__": "__main__"})  # noqa: S102
            elif program["kind"] == "script":
                sys.argv = [program["script"], *program.get("args", [])]
                runpy.run_path(program["script"], run_name="__main__")
            else:
                proc = subprocess.Popen(program["command"], shell=True, cwd=str(sdir / "work"),  # noqa: S602
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                _commands.append(proc)
                code = proc.wait()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - the program's error goes to its log
            traceback.print_exc()
            code = 1
    return code


def main() -> None:
    sdir = Path(sys.argv[1])
    if os.fork() > 0:  # leave the starter: no client process is this daemon's parent
        os._exit(0)
    log_path = sdir / "daemon.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    daemon = Daemon(sdir)
    # SIGTERM (a second Ctrl-C on `clustermgr run --rm`, a system shutdown) ends the session
    # in order: the program stops, the workers are removed, unfinished tasks stay pending.
    signal.signal(signal.SIGTERM, lambda *_: daemon.post("end", "terminated (SIGTERM)"))
    program = daemon.store.get("program")
    if program and daemon.store.get("program_status") is None:
        threading.Thread(target=_program_thread, args=(daemon, program), daemon=True,
                         name="session-program").start()
    daemon.run()


def _program_thread(daemon: Daemon, program: dict[str, Any]) -> None:
    """Wait for a first worker (or give up after max_wait), run the program, record it."""
    deadline = time.time() + float(program.get("max_wait") or 1e9)
    while not daemon.workers and time.time() < deadline and not daemon.ending:
        time.sleep(0.1)  # the loop thread fills daemon.workers; nothing to wait on here
    if not daemon.workers:
        daemon.post("launch_error", f"no worker running after max_wait={program.get('max_wait')} s")
        daemon.post("program", ("timeout", 5))
        daemon.post("end", "no worker in time (--max-wait)")
        return
    log.info("running the program: %s", shlex.join(program.get("argv", [])))
    daemon.post("program", ("running", None))
    code = run_program(daemon.sdir, program)
    log.info("the program exited with status %s", code)
    daemon.post("program", ("exited", code))
    if program.get("rm"):
        daemon.post("end", "the program ended (--rm)")


if __name__ == "__main__":
    main()

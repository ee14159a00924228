"""BatchManager: the base that makes a queueing system mostly data.

A subclass gives the submit / status / cancel commands, the job-script directive prefix,
a job-id regular expression, the table of scheduler states, and how it names array tasks.
This base renders the job script (``job_script()`` shows exactly what is submitted),
submits an array (one submission for N workers) with retries, polls every job of the
manager in one scheduler call, starts each worker's join clock when its job RUNS, bounds
the queue wait (``queue_timeout``), reports a job's end at once with its scheduler state,
and cancels everything it submitted on ``close()``.

The secret never enters the script or argv: the submit command runs with it in its
environment, which the scheduler exports to the job.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import secrets
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import LaunchError
from .base import BLAS_THREAD_VARS, ClusterManager, LaunchSpec, ManageOp, WorkerHandle
from .local import tail

log = logging.getLogger("clustermgr")


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class SchedulerCommandError(LaunchError):
    """A scheduler command failed: carries the command, exit code, stdout and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str) -> None:
        what = "timed out" if returncode is None else f"exited with code {returncode}"
        super().__init__(f"`{shlex.join(argv)}` {what}: {(stderr or stdout).strip()[-2000:]}")
        self.argv, self.returncode, self.stdout, self.stderr = list(argv), returncode, stdout, stderr


def run_command(argv: Sequence[str], *, timeout: float = 60.0, env: dict[str, str] | None = None,
                cwd: str | None = None, input: str | None = None) -> str:
    """Run one scheduler command (*input* on its stdin, else none); its stdout, or
    :class:`SchedulerCommandError`."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=cwd, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise SchedulerCommandError(argv, None, str(exc.stdout or ""), str(exc.stderr or "")) from None
    except FileNotFoundError:
        if cwd is not None and not os.path.isdir(cwd):
            raise LaunchError(f"cannot run `{shlex.join(argv)}`: the working folder {cwd} does "
                              "not exist here; create it or pass an existing dir=") from None
        raise SchedulerCommandError(argv, 127, "", f"{argv[0]}: command not found; is the "
                                    "scheduler's client installed and on PATH?") from None
    if done.returncode != 0:
        raise SchedulerCommandError(argv, done.returncode, done.stdout, done.stderr)
    return done.stdout


def flag(name: str, value: Any) -> list[str]:
    """Mechanical keyword -> flag translation (ClusterManagers.jl's rule): one letter
    ``k=v`` -> ``-k v``; longer ``mem_per_cpu=100`` -> ``--mem-per-cpu=100``; value ``""``
    or ``True`` -> the bare flag (``exclusive=True`` -> ``--exclusive``); ``False`` or
    ``None`` -> no flag at all."""
    if value is None or value is False:
        return []
    bare = value == "" or value is True
    name = name.replace("_", "-")
    if len(name) == 1:
        return [f"-{name}"] if bare else [f"-{name}", str(value)]
    return [f"--{name}"] if bare else [f"--{name}={value}"]


def _indented(text: str, title: str) -> list[str]:
    text = text.strip()
    return [f"  {title}:", *(f"    {line}" for line in text.splitlines())] if text else []


def default_log_dir(scheduler: str) -> str:
    """A fresh (not yet made) folder for one manager's job scripts and worker logs, under
    ``$CLUSTERMGR_LOG_DIR`` or ``~/.cache/clustermgr/jobs``: a path on the home folder,
    which a cluster's compute nodes usually see, unlike the submit host's /tmp."""
    root = os.environ.get("CLUSTERMGR_LOG_DIR") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                 "clustermgr", "jobs")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{scheduler.lower()}-{stamp}-{secrets.token_hex(3)}")


@dataclass
class BatchHandle(WorkerHandle):
    job_id: str = ""        # what the scheduler calls this worker's job (an array task)
    index: int = 0
    state: str = ""         # the scheduler's own word (PENDING, RUNNING, CANCELLED, ...)
    reason: str = ""        # why it pends, when the scheduler says
    submitted: float = 0.0
    running_at: float = 0.0  # time.time() when it was first seen running
    ended: bool = False
    worker_id: int | None = None  # once it joined
    cause: str = ""               # how it ended, once it did
    script: str = ""              # the job script submitted for it
    done: threading.Event = field(default_factory=threading.Event, repr=False)


class BatchManager(ClusterManager):
    """Base of the queueing-system managers.  Options common to all of them:

    cores, memory, walltime, queue, account, gpus, job_name: resources (``None``: the
        scheduler's default).
    profile: a named profile of the configuration files (``clustermgr/config.py``); every
        option not given here comes from the files' section for this scheduler, then the
        profile, and ``job_script()`` names the file each came from.
    python, dir: addprocs' defaults for this manager's workers (an addprocs argument wins).
    directives, prologue: extra job script header lines, and shell lines run before the
        worker starts (``module load ...``).
    log_dir: where job scripts and worker logs go.  Default: a new folder under
        ``$CLUSTERMGR_LOG_DIR``, else ``~/.cache/clustermgr/jobs`` - under the home folder,
        which compute nodes usually share, unlike the submit host's /tmp.  It is made at the
        first launch, never when a manager is only constructed (a dry run leaves nothing).
    env: extra environment of the workers.
    queue_timeout: seconds a job may wait in the queue before it is cancelled (default:
        no limit; the pending reason is logged while it waits).
    poll_interval: seconds between status polls.
    retry_delays: delays before re-submitting after a failed submit command.
    use_array: one array job for the N workers (one submission), or one job each
        (default: the scheduler's preference).
    throttle: without arrays, submissions in flight at once.
    preempt_signal: the signal the scheduler sends as its preemption (or walltime)
        warning, e.g. ``"USR1"``: a worker that gets it tells the master, takes no new
        tasks, hands back those not started, checkpoints its running task when the task
        offers ``checkpoint()`` (``clustermgr.checkpoint``), and leaves once idle.
    """

    scheduler: ClassVar[str] = "batch"
    directive: ClassVar[str] = "#"
    scalable = True
    job_id_regexp: ClassVar[str] = r"(?P<job_id>\d+)"
    array_index_var: str = ""  # a PBS manager picks it per dialect
    #: ``{option: directive template}`` for the common options that map one to one
    resource_templates: ClassVar[dict[str, str]] = {}
    arrays_by_default: ClassVar[bool] = True
    cancel_many: ClassVar[bool] = True  # one cancel command for many jobs
    states: ClassVar[dict[str, JobState]] = {}
    max_failed_polls: ClassVar[int] = 5
    #: what the queue_timeout option is called in messages (Kubernetes: pending_timeout)
    queue_timeout_name: ClassVar[str] = "queue_timeout"
    #: submit errors that no retry can fix (a usage error): a regular expression
    fatal_submit_errors: ClassVar[str] = ""
    #: how the scheduler reads a walltime: the unit of a bare number (Slurm and LSF:
    #: minutes) and of a two-part ``A:B`` (Slurm: minutes:seconds; LSF: hours:minutes)
    walltime_unit: ClassVar[float] = 1.0
    walltime_pair: ClassVar[tuple[float, float]] = (60.0, 1.0)

    def __init__(self, np: int, *, cores: int | None = None, memory: str | None = None,
                 walltime: str | None = None, queue: str | None = None, account: str | None = None,
                 gpus: int | None = None, job_name: str | None = None, log_dir: str | None = None,
                 env: dict[str, str] | None = None, queue_timeout: float | None = None,
                 poll_interval: float | None = None, retry_delays: Sequence[float] = (1.0, 5.0),
                 use_array: bool | None = None, throttle: int = 4, profile: str | None = None,
                 python: str | None = None, dir: str | None = None, directives: Sequence[str] = (),
                 prologue: Sequence[str] = (), preempt_signal: str | None = None,
                 **flags: Any) -> None:
        from ..config import settings_for

        if isinstance(np, bool) or not isinstance(np, int) or np < 1:
            raise ValueError(f"{type(self).__name__} needs a number of workers >= 1, not {np!r}")
        self.np = np
        self.profile = profile
        conf = settings_for(self.scheduler, profile)
        self.origins: dict[str, str] = {}  # option -> the config file and section it came from

        def pick(name: str, given: Any, default: Any = None) -> Any:
            if given is not None:
                return given
            if name in conf.values:
                self.origins[name] = conf.origins[name]
                return conf.values[name]
            return default

        self.cores, self.memory = pick("cores", cores), pick("memory", memory)
        self.walltime, self.queue = pick("walltime", walltime), pick("queue", queue)
        self.walltime_seconds = self.parse_walltime(self.walltime)
        self.account, self.gpus = pick("account", account), pick("gpus", gpus)
        self.job_name = pick("job_name", job_name, "clustermgr")
        self.log_dir = pick("log_dir", log_dir) or default_log_dir(self.scheduler)
        self.python, self.dir = pick("python", python), pick("dir", dir)
        for name in ("env", "flags", "directives", "prologue"):  # the file's, then the caller's
            if name in conf.values:
                self.origins[name] = conf.origins[name]
        self.env = {**conf.values.get("env", {}), **(env or {})}
        self.preempt_signal = pick("preempt_signal", preempt_signal)
        if self.preempt_signal:
            from ..checkpoint import preempt_signals

            if not preempt_signals(str(self.preempt_signal)):
                raise ValueError(f"preempt_signal={self.preempt_signal!r} names no signal; "
                                 "write e.g. 'USR1', 'SIGUSR2' or 'TERM'")
            self.env["CLUSTERMGR_PREEMPT_SIGNAL"] = str(self.preempt_signal)
        flags = {**conf.values.get("flags", {}), **flags}
        self.directives = [*conf.values.get("directives", []), *directives]
        self.prologue = [*conf.values.get("prologue", []), *prologue]
        self.queue_timeout = pick("queue_timeout", queue_timeout)
        self.poll_interval = pick("poll_interval", poll_interval, 1.0)
        self.retry_delays = list(retry_delays)
        self.use_array = self.arrays_by_default if use_array is None else use_array
        if throttle < 1:
            raise ValueError("throttle (submissions in flight at once) must be >= 1")
        self.throttle = throttle
        self.flags = flags
        self.handles: list[BatchHandle] = []
        self._spec: LaunchSpec | None = None
        self._poller: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.np})"

    def parse_walltime(self, walltime: Any) -> float | None:
        """*walltime* in seconds as this scheduler reads it (``[D-]HH:MM:SS``, ``A:B``
        per ``walltime_pair``, a bare number per ``walltime_unit``); None when unset or in
        a form only the scheduler knows (it then checks it at submission)."""
        if walltime is None or walltime == "":
            return None
        match = re.fullmatch(r"(?:(\d+)-)?(\d+(?:\.\d+)?)(?::(\d+))?(?::(\d+))?", str(walltime).strip())
        if not match:
            return None
        days, a, b, c = match.groups()
        extra = int(days) * 86400 if days else 0
        if days and b is None:  # Slurm's days-hours
            return extra + float(a) * 3600
        if c is not None:
            return extra + float(a) * 3600 + int(b) * 60 + int(c)
        if b is not None:
            return extra + float(a) * (3600 if days else self.walltime_pair[0]) + int(b) * (
                60 if days else self.walltime_pair[1])
        return float(a) * self.walltime_unit

    def ends_at(self, handle: WorkerHandle) -> float | None:
        """The scheduler's end time for the job when it gives one (``end_time``), else
        when it started running plus the walltime."""
        h: BatchHandle = handle  # type: ignore[assignment]
        told = self.end_time(h)
        if told is not None:
            return told
        if not getattr(h, "running_at", 0.0) or self.walltime_seconds is None:
            return None
        return h.running_at + self.walltime_seconds

    def end_time(self, handle: BatchHandle) -> float | None:
        """The end time the scheduler itself gives a running job (``time.time()``), if
        it does; None by default."""
        return None

    # --- what subclasses supply ------------------------------------------------------

    def resource_directives(self) -> list[str]:
        """Directive arguments for the common options and the raw flags."""
        return self.templated_directives()

    def templated_directives(self) -> list[str]:
        """The common options set on this manager, rendered with ``resource_templates``."""
        return [template.format(getattr(self, name)) for name, template in self.resource_templates.items()
                if getattr(self, name) not in (None, "")]

    # A command-line scheduler supplies these four; a manager that talks to a library
    # (DRMAA) overrides submit_workers, poll_table and cancel instead.

    def submit_argv(self, script: str, n: int, tag: str) -> list[str]:
        """The command that submits *script* as *n* workers (n > 1: an array).  *tag* names
        the submission (a launch id, or the array's prefix) for its log file."""
        raise TypeError(f"{type(self).__name__} must define submit_argv or submit_workers")

    def status_argv(self) -> list[str]:
        """One command that lists every job of this manager, array tasks one per line."""
        raise TypeError(f"{type(self).__name__} must define status_argv or poll_table")

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        """The command that cancels *job_ids*."""
        raise TypeError(f"{type(self).__name__} must define cancel_argv or cancel")

    def parse_status(self, text: str) -> dict[str, tuple[str, str]]:
        """``{job id: (state word, reason)}`` from the status command's output."""
        raise TypeError(f"{type(self).__name__} must define parse_status or poll_table")

    def task_id(self, job_id: str, index: int, n: int) -> str:
        """The scheduler's id of array task *index* of the submission *job_id*."""
        return job_id

    def classify(self, word: str) -> JobState | None:
        """The JobState of a scheduler's state word (None: unknown)."""
        return self.states.get(word)

    def exit_info(self, handle: BatchHandle) -> str:
        """What the scheduler's accounting says of a job that left the queue ("" if nothing)."""
        return ""

    def index_expression(self) -> str:
        """Shell expression for a task's 0-based index in its array."""
        return f"${{{self.array_index_var}:-0}}" if self.array_index_var else "0"

    def array_parent(self, task_id: str) -> str:
        """The submission a task id belongs to, for schedulers that list some tasks only
        under their array (Slurm: cancelled pending tasks).  Default: none, a task missing
        from the listing has finished (PBS ``qstat -t`` lists every unfinished subjob)."""
        return task_id

    # --- the job script ----------------------------------------------------------------

    def job_script(self, python: str | None = None, dir: str | None = None,
                   exeflags: Sequence[str] = (), threaded_blas: bool = False,
                   launch_prefix: str = "LAUNCH") -> str:
        """Exactly the script that is submitted (the dry run).  It holds no secret."""
        import sys

        lines = ["#!/bin/bash"]
        lines += [f"{self.directive} {d}" for d in [*self.resource_directives(), *self.directives]]
        by_origin: dict[str, list[str]] = {}
        for name, origin in self.origins.items():
            by_origin.setdefault(origin, []).append(name)
        lines += [f"# from {origin}: {', '.join(names)}" for origin, names in by_origin.items()]
        env = dict(self.env)
        if not threaded_blas:
            env.update({name: "1" for name in BLAS_THREAD_VARS})
        lines += [f"export {k}={shlex.quote(str(v))}" for k, v in sorted(env.items())]
        index = self.index_expression()
        # a job of its own brings its launch id in the submit environment; an array task
        # derives it from its index
        lines.append(f'export CLUSTERMGR_LAUNCH_ID="${{CLUSTERMGR_LAUNCH_ID:-{launch_prefix}-{index}}}"')
        lines.append(f"# worker logs: {self.log_dir} (log_dir=; the default lies under your home, "
                     "which compute nodes usually see)")
        lines += list(self.prologue)
        workdir = self.working_dir(dir)
        if workdir:
            lines.append(f"cd {shlex.quote(workdir)}")
        argv = [python or sys.executable, *exeflags, "-m", "clustermgr.worker"]
        lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
        return "\n".join(lines) + "\n"

    def working_dir(self, dir: str | None) -> str | None:
        """The folder the job script changes to: addprocs' ``dir``, else the submit folder.
        A manager whose scheduler sets it itself (SGE's ``wd=``) returns None."""
        return dir or os.getcwd()

    # --- launch ------------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> Iterator[BatchHandle]:
        self._spec = spec
        prefix = secrets.token_hex(6)
        count = self.how_many(spec)
        for i in range(count):
            spec.expect(f"{prefix}-{i}")
        script = self._write_script(spec, prefix)
        env = {**os.environ, **spec.env, "CLUSTERMGR_MASTER": spec.address,
               "CLUSTERMGR_COOKIE": spec.secret.hex(), "PYTHONUNBUFFERED": "1",
               "CLUSTERMGR_ENCRYPT": "1" if spec.encrypt else ""}
        env.pop("CLUSTERMGR_LAUNCH_ID", None)
        ids = self.submit_workers(script, prefix, env, spec.dir, count)
        now = time.monotonic()
        new = [BatchHandle(f"{prefix}-{i}", "?", job, i, "PENDING", "", now, queued=True, script=script)
               for i, job in enumerate(ids)]
        with self._lock:
            self.handles.extend(new)
        self._start_polling()
        yield from new

    def submit_workers(self, script: str, prefix: str, env: dict[str, str], cwd: str,
                       count: int | None = None) -> list[str]:
        """Submit *script* for *count* workers (default ``np``; one array, or one job
        each); their job ids.  *env* holds the secret: it goes to the submit command's
        environment only."""
        n = self.np if count is None else count
        if not self.use_array:
            return self._submit_each(script, prefix, env, cwd, n)
        job_id = self._submit(script, n, prefix, env, cwd)
        log.info("%s: submitted array job %s for %d workers", self.scheduler, job_id, n)
        return [self.task_id(job_id, i, n) for i in range(n)]

    def run_submit(self, argv: list[str], script: str, env: dict[str, str], cwd: str) -> str:
        """Run one submit command; its stdout.  Override to feed the script on stdin or to
        submit from another host."""
        return run_command(argv, env=env, cwd=cwd)

    def run(self, argv: list[str], timeout: float = 30.0) -> str:
        """Run a status or cancel command; override to run it elsewhere (``ssh_cmd``)."""
        return run_command(argv, timeout=timeout)

    def poll_table(self) -> dict[str, tuple[str, str]]:
        """``{job id: (state word, reason)}`` for this manager's jobs, in one call."""
        return self.parse_status(self.run(self.status_argv()))

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel *job_ids* (already gone is fine)."""
        for group in [list(job_ids)] if self.cancel_many else [[i] for i in job_ids]:
            try:
                self.run(self.cancel_argv(group))
            except SchedulerCommandError as exc:
                log.debug("%s cancel: %s", self.scheduler, exc)

    def _submit_each(self, script: str, prefix: str, env: dict[str, str], cwd: str,
                     n: int) -> list[str]:
        """One job per worker, at most ``throttle`` submissions in flight."""
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int) -> str:
            launch_id = f"{prefix}-{i}"
            job = self._submit(script, 1, launch_id, {**env, "CLUSTERMGR_LAUNCH_ID": launch_id}, cwd)
            return self.task_id(job, 0, 1)

        with ThreadPoolExecutor(max_workers=self.throttle) as pool:
            ids = list(pool.map(one, range(n)))
        log.info("%s: submitted jobs %s", self.scheduler, ", ".join(ids))
        return ids

    def ensure_log_dir(self) -> None:
        """Make ``log_dir`` (mode 0700 where it is new): called at launch, not before."""
        try:
            os.makedirs(self.log_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"{type(self).__name__}: cannot make log_dir {self.log_dir!r} "
                             f"({exc.strerror or exc}); pass log_dir= a folder the jobs can write") from None

    def _write_script(self, spec: LaunchSpec, prefix: str) -> str:
        text = self.job_script(spec.python, spec.dir, spec.exeflags, spec.enable_threaded_blas, prefix)
        self.ensure_log_dir()
        fd, path = tempfile.mkstemp(prefix="job-", suffix=".sh", dir=self.log_dir)
        with os.fdopen(fd, "w") as fh:  # mkstemp: mode 0600
            fh.write(text)
        return path

    def _submit(self, script: str, n: int, tag: str, env: dict[str, str], cwd: str) -> str:
        out = self.retrying(lambda: self.run_submit(self.submit_argv(script, n, tag), script, env, cwd))
        match = re.search(self.job_id_regexp, out)
        if not match:
            raise LaunchError(f"{self.scheduler}: no job id in the submit output {out!r}")
        return match.group("job_id")

    def retrying(self, submit: Callable[[], str]) -> str:
        """Run *submit*; after a failure, again after each of ``retry_delays``, unless the
        error is one no retry can fix (``fatal_submit_errors``, command not found)."""
        delays = [0.0, *self.retry_delays]
        for attempt, delay in enumerate(delays):
            time.sleep(delay)
            try:
                return submit()
            except SchedulerCommandError as exc:
                said = exc.stderr + exc.stdout
                fatal = self.fatal_submit_errors and re.search(self.fatal_submit_errors, said)
                if attempt == len(delays) - 1 or exc.returncode == 127 or fatal:
                    raise
                log.warning("%s submit failed, retrying in %s s: %s", self.scheduler,
                            delays[attempt + 1], exc)
        raise AssertionError("unreachable")

    # --- polling -----------------------------------------------------------------------

    def _start_polling(self) -> None:
        if self._poller is None or not self._poller.is_alive():
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                            name=f"clustermgr-{self.scheduler.lower()}-poll")
            self._poller.start()

    def _poll_loop(self) -> None:
        failures = 0
        while not self._stop.wait(self.poll_interval):
            with self._lock:
                live = [h for h in self.handles if not h.ended]
            if not live:
                return
            try:
                table = self.poll_table()
                failures = 0
            except (SchedulerCommandError, OSError) as exc:
                failures += 1
                level = logging.WARNING if failures >= self.max_failed_polls else logging.DEBUG
                log.log(level, "%s status poll failed (%d in a row): %s", self.scheduler, failures, exc)
                continue
            for handle in live:
                self._update(handle, table)

    def _update(self, h: BatchHandle, table: dict[str, tuple[str, str]]) -> None:
        word, reason = table.get(h.job_id) or table.get(self.array_parent(h.job_id)) or ("", "")
        state = self.classify(word) if word else None
        if state is JobState.PENDING:
            if reason != h.reason:
                log.info("%s job %s is pending (%s)", self.scheduler, h.job_id, reason or "no reason given")
            h.state, h.reason = word, reason
            waited = time.monotonic() - h.submitted
            if self.queue_timeout is not None and waited > self.queue_timeout:
                self._give_up(h, f"still {word} after {self.queue_timeout_name}={self.queue_timeout} s "
                              f"(reason: {reason or 'none given'})")
        elif state is JobState.RUNNING:
            h.state = word
            h.running_at = h.running_at or time.time()
            if h.queued:
                h.queued = False
                self._spec.on_running(h)  # type: ignore[union-attr]
        else:  # finished, or gone from the queue
            h.state = word or h.state
            how = f"ended in state {word}" if word else "left the queue"
            how += f" ({reason})" if word and reason else ""
            info = "" if word else self.exit_info(h)
            self._ended(h, f"{self.scheduler} job {h.job_id} {how}" + (f" ({info})" if info else ""))

    def _give_up(self, h: BatchHandle, why: str) -> None:
        self._cancel([h])
        self._ended(h, f"{self.scheduler} job {h.job_id} {why}")

    def _ended(self, h: BatchHandle, cause: str) -> None:
        with self._lock:
            if h.ended:
                return
            h.ended = True
            h.cause = cause
        h.done.set()
        self._spec.on_exit(h, cause, self.log_tail(h))  # type: ignore[union-attr]

    def _cancel(self, handles: Sequence[BatchHandle]) -> None:
        if handles:
            self.cancel([h.job_id for h in handles])

    # --- the ClusterManager hooks ------------------------------------------------------

    def manage(self, handle: WorkerHandle, op: ManageOp, worker_id: int) -> None:
        """A worker that joined runs, whatever the last poll said."""
        if op is ManageOp.REGISTER and isinstance(handle, BatchHandle) and not handle.ended:
            handle.state, handle.queued = "RUNNING", False
            handle.running_at = handle.running_at or time.time()
            handle.worker_id = worker_id

    def kill(self, handle: WorkerHandle, grace: float = 5.0) -> None:
        """Wait *grace* s for the job to end by itself, then cancel it and wait for the
        scheduler to report it gone."""
        h: BatchHandle = handle  # type: ignore[assignment]
        if not self._wait_ended(h, grace):
            self._cancel([h])
            self._wait_ended(h, 30.0)

    def _wait_ended(self, h: BatchHandle, timeout: float) -> bool:
        return h.done.wait(timeout)  # set by the poller when the job leaves the queue

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        return tail(self.log_path(handle), lines)

    def log_path(self, handle: WorkerHandle) -> str:
        return ""

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {h.job_id: h.state for h in self.handles}

    def pending_detail(self, handle: BatchHandle) -> str:
        """More than the status poll's reason on why *handle*'s job waits (a scheduler's
        own explanation); "" when there is nothing more.  Called by :meth:`explain`."""
        return ""

    def explain(self) -> str:
        """Why each job of this manager waits, or how it ended: the scheduler's state and
        pending reason, whether it runs without having joined (with its log's tail), how a
        dead one ended (state, exit, log tail), and the job script's path."""
        with self._lock:
            handles = list(self.handles)
        if not handles:
            return f"{self!r}: no job submitted yet"
        lines = [f"{self!r}: {len(handles)} job(s); worker logs in {self.log_dir}"]
        now = time.monotonic()
        for h in handles:
            head = f"- job {h.job_id}"
            if h.ended:
                lines.append(f"{head}: ended - {h.cause}")
                lines += _indented(self.log_tail(h, 10), "last lines of its log")
            elif h.worker_id is not None:
                lines.append(f"{head}: {h.state or 'RUNNING'}, worker {h.worker_id} joined")
            elif h.queued:
                why = h.reason or "the scheduler gives no reason yet"
                lines.append(f"{head}: {h.state or 'PENDING'} for {now - h.submitted:.0f} s - reason: {why}")
                lines += _indented(self.pending_detail(h), f"{self.scheduler} says")
            else:
                lines.append(f"{head}: {h.state or 'RUNNING'} but its worker has not joined yet "
                             "(starting Python, or it cannot reach the master)")
                lines += _indented(self.log_tail(h, 10), "last lines of its log")
            if h.script:
                lines.append(f"  job script: {h.script}")
        return "\n".join(lines)

    def close(self) -> None:
        with self._lock:
            live = [h for h in self.handles if not h.ended]
        self._cancel(live)
        for h in live:
            self._wait_ended(h, 10.0)
        self._stop.set()


def addprocs_with(manager_cls: type, np: int, **kwargs: Any) -> list[int]:
    """Julia's function form (``addprocs_slurm(np, **kw)``): keywords that ``addprocs``
    takes (``timeout``, ``min_workers``, ``dir``, ...) go to it, the rest to the manager."""
    from ..cluster import AddprocsOptions, addprocs

    runtime, options = AddprocsOptions.split(kwargs)
    return addprocs(manager_cls(np, **options), **runtime)

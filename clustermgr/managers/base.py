"""The manager contract: how a back end starts, observes and stops workers.

A manager only *starts* ``python -m clustermgr.worker`` somewhere with the environment the
runtime gives it (master address, credential); the worker dials the master by itself.  The
runtime calls the hooks; a manager never calls the runtime except through
``LaunchSpec.on_exit``.

Who calls what, and when:

- ``launch(spec)``: by ``addprocs``, once per call, in the thread that called ``addprocs``.
  Yields one :class:`WorkerHandle` per worker as soon as each is started (not when it has
  joined), so the runtime starts the join clock per worker; a handle yielded with
  ``queued=True`` starts its clock when the manager calls ``spec.on_running(handle)``.
  Must put ``spec.environment`` into the worker's environment (or a 0600 file) and never
  into argv.
- ``manage(handle, op, worker_id)``: by the runtime at each :class:`ManageOp` of a worker's
  life; a notification, must return quickly.  Default: nothing.
- ``kill(handle, grace)``: by ``rmprocs``, at master exit, and when a worker stops
  heartbeating.  Must leave no process of that worker running: ask, then SIGTERM, then
  SIGKILL, the whole process tree.  Called after the runtime already asked the worker to
  exit; must be safe to call on a worker that is already gone.
- ``close()``: at master exit, after every ``kill``.  Releases what the manager holds.
"""

from __future__ import annotations

import enum
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar

BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


class ManageOp(enum.Enum):
    """The events of a worker's life reported to ``ClusterManager.manage``."""

    REGISTER = "register"      # the worker joined and has its id
    DEREGISTER = "deregister"  # the worker left or died
    INTERRUPT = "interrupt"    # interrupt() was sent to it
    FINALIZE = "finalize"      # the runtime is done with it (after kill)


@dataclass
class WorkerHandle:
    """A manager's record of one started worker.  Subclass it to keep back-end state
    (a process, a job id).  ``launch_id`` ties the joining worker to this handle.
    ``queued`` handles (a job waiting in a scheduler's queue) do not count against the
    join timeout until the manager calls ``spec.on_running(handle)``."""

    launch_id: str
    host: str = "localhost"
    _: KW_ONLY
    queued: bool = False


@dataclass
class LaunchSpec:
    """What the runtime gives ``launch``: where the master is and how workers must run."""

    address: str
    secret: bytes = field(repr=False)
    dir: str
    env: dict[str, str]
    python: str
    exeflags: list[str]
    enable_threaded_blas: bool
    on_exit: Callable[[WorkerHandle, str, str], None] = field(repr=False)
    expect: Callable[[str], None] = field(repr=False, default=lambda launch_id: None)
    on_running: Callable[[WorkerHandle], None] = field(repr=False, default=lambda handle: None)
    encrypt: bool = False
    #: workers to start this time, instead of the manager's own ``np`` (``adapt`` sets it;
    #: only managers with ``scalable = True`` honour it)
    count: int | None = None

    def argv(self) -> list[str]:
        """The worker command line.  It carries no secret."""
        return [self.python, *self.exeflags, "-m", "clustermgr.worker"]

    def environment(self, launch_id: str) -> dict[str, str]:
        """Variables the worker needs (the secret among them: keep them out of argv and
        logs).  Call it before starting the worker: it tells the master to expect it."""
        self.expect(launch_id)
        env = {k: str(v) for k, v in self.env.items()}
        if not self.enable_threaded_blas:
            env.update({name: "1" for name in BLAS_THREAD_VARS})
        env.update({
            "CLUSTERMGR_MASTER": self.address,
            "CLUSTERMGR_COOKIE": self.secret.hex(),
            "CLUSTERMGR_LAUNCH_ID": launch_id,
            "PYTHONUNBUFFERED": "1",
        })
        if self.encrypt:
            env["CLUSTERMGR_ENCRYPT"] = "1"
        return env


class ClusterManager(ABC):
    """Base of every back end; see the module docstring for the call contract."""

    #: ``launch`` starts ``spec.count`` workers when it is set (see :meth:`how_many`), so
    #: ``adapt`` can grow the manager's workers a job at a time
    scalable: ClassVar[bool] = False
    #: the manager's walltime parsed, in seconds, when it has one (batch managers)
    walltime_seconds: float | None = None

    def how_many(self, spec: LaunchSpec) -> int:
        """How many workers this ``launch`` starts: ``spec.count`` when given, else ``np``."""
        return spec.count if spec.count is not None else getattr(self, "np", 1)

    def ends_at(self, handle: WorkerHandle) -> float | None:
        """When the worker of *handle* will be ended by its scheduler (``time.time()``
        seconds), if known: the scheduler's own end time, else its start plus the manager's
        walltime.  Read by ``adapt`` (to drain and replace it in time) and by schedulers
        placing tasks that say how long they run.  Default: never."""
        return None

    @abstractmethod
    def launch(self, spec: LaunchSpec) -> Iterable[WorkerHandle]:
        """Start workers; yield a handle for each as soon as it is started."""

    @abstractmethod
    def kill(self, handle: WorkerHandle, grace: float = 5.0) -> None:
        """Make sure the worker of *handle* is gone (escalating; see module docstring)."""

    def manage(self, handle: WorkerHandle, op: ManageOp, worker_id: int) -> None:
        """A worker's life event; default: nothing to do."""

    def connects(self, a: WorkerHandle, b: WorkerHandle) -> bool:
        """With ``topology="custom"``: may the worker of *a* call the worker of *b*?"""
        return True

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        """The last lines of the worker's own log, for error messages ("" if none)."""
        return ""

    def status(self) -> dict[str, Any]:
        """A summary of what the manager runs (for display)."""
        return {}

    def explain(self) -> str:
        """Why this manager's workers wait, or how they ended, for a person to read (a
        scheduler's manager gives each job's state and pending reason); by default its
        ``status()``."""
        return f"{self!r}: {self.status()}"

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """The defaults of the manager's options (for display and documentation)."""
        return {}

    def close(self) -> None:
        """Release what the manager holds; called once, at master exit."""


def default_python() -> str:
    return sys.executable or "python3"


def default_dir() -> str:
    return os.getcwd()

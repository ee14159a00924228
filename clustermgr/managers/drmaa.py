"""DRMAAManager: workers as one DRMAA bulk job, through the ``drmaa`` package.

Needs ``pip install clustermgr[drmaa]`` and a DRMAA library: ``DRMAA_LIBRARY_PATH`` names
it (Grid Engine: ``$SGE_ROOT/lib/<arch>/libdrmaa.so.1.0``).  Set it, with the scheduler's
own environment, before Python starts: some libraries (Grid Engine's, which links
jemalloc) also need ``GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096`` at startup.

One DRMAA session serves the whole process (DRMAA allows one at a time); every manager
shares it.  The worker's environment, secret included, goes in the job template's
``jobEnvironment``, never in its arguments.  Removal is ``control(TERMINATE)``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import LaunchError
from .base import WorkerHandle
from .batch import BatchHandle, BatchManager, JobState, SchedulerCommandError, addprocs_with

log = logging.getLogger("clustermgr")

_lock = threading.RLock()  # guards the shared session and every call into the library
_session: Any = None
_users = 0

#: the variable that holds a bulk job's task index (counted from 1), by DRM
TASK_INDEX_VARS = {"SGE": "SGE_TASK_ID", "Grid Engine": "SGE_TASK_ID", "Slurm": "SLURM_ARRAY_TASK_ID",
                   "SLURM": "SLURM_ARRAY_TASK_ID", "PBS": "PBS_ARRAYID", "Torque": "PBS_ARRAYID",
                   "LSF": "LSB_JOBINDEX"}


def _import_drmaa() -> Any:
    try:
        import drmaa
    except ImportError as exc:
        raise LaunchError("DRMAAManager needs the drmaa package: pip install 'clustermgr[drmaa]'") from exc
    except RuntimeError as exc:  # no library found
        raise LaunchError(f"the DRMAA library could not be found ({exc}); set DRMAA_LIBRARY_PATH "
                          "to the scheduler's libdrmaa.so before starting Python") from exc
    except OSError as exc:
        hint = (" Start Python with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096 in its "
                "environment." if "static TLS" in str(exc) else "")
        raise LaunchError(f"the DRMAA library failed to load: {exc}.{hint}") from exc
    return drmaa


def acquire_session() -> Any:
    """The process's DRMAA session, opened on first use; pair with ``release_session``."""
    global _session, _users
    drmaa = _import_drmaa()
    with _lock:
        if _session is None:
            session = drmaa.Session()
            try:
                session.initialize()
            except drmaa.errors.DrmaaException as exc:
                raise LaunchError(f"DRMAA: cannot open a session: {exc}") from exc
            _session = session
        _users += 1
        return _session


def release_session() -> None:
    global _session, _users
    with _lock:
        _users -= 1
        if _users <= 0 and _session is not None:
            try:
                _session.exit()
            finally:
                _session, _users = None, 0


class DRMAAManager(BatchManager):
    """``DRMAAManager(np, native_specification="-q all.q -l h_vmem=1G")``: one bulk job.

    ``native_specification`` is passed to the DRM as is (its own submit options).  Common
    ``BatchManager`` options that DRMAA names (``job_name``) are honoured; resources go in
    the native specification.
    """

    scalable = False  # one session prefix names the logs of its one bulk job

    scheduler = "DRMAA"
    directive = "#"
    states: ClassVar[dict[str, JobState]] = {
        "queued_active": JobState.PENDING, "system_on_hold": JobState.PENDING,
        "user_on_hold": JobState.PENDING, "user_system_on_hold": JobState.PENDING,
        "undetermined": JobState.PENDING, "system_suspended": JobState.PENDING,
        "user_suspended": JobState.PENDING, "user_system_suspended": JobState.PENDING,
        "running": JobState.RUNNING, "done": JobState.DONE, "failed": JobState.FAILED}

    def __init__(self, np: int, *, native_specification: str = "", task_index_var: str | None = None,
                 **kwargs: Any) -> None:
        unsupported = {"cores", "memory", "walltime", "queue", "account", "gpus"} & {
            k for k, v in kwargs.items() if v is not None}
        if unsupported:
            raise ValueError(f"DRMAAManager: put {sorted(unsupported)} in native_specification "
                             "(the DRM's own submit options), e.g. native_specification='-l h_vmem=1G'")
        super().__init__(np, **kwargs)
        self.native_specification = native_specification
        self.task_index_var = task_index_var
        self._session: Any = None
        self._prefix = ""

    def resource_directives(self) -> list[str]:
        return []

    def index_expression(self) -> str:
        return f"$(( ${{{self.array_index_var}:-1}} - 1 ))"  # bulk tasks are counted from 1

    def submit_workers(self, script: str, prefix: str, env: dict[str, str], cwd: str,
                       count: int | None = None) -> list[str]:
        """One ``runBulkJobs(1..np)``; the job template carries the worker's environment."""
        os.chmod(script, 0o700)
        drmaa = _import_drmaa()
        user = self._spec.env if self._spec else {}
        keep = {k: v for k, v in env.items() if k.startswith("CLUSTERMGR_") or k in user}
        keep["PYTHONUNBUFFERED"] = "1"
        with _lock:
            jt = self._session.createJobTemplate()
            try:
                jt.remoteCommand = script
                jt.jobName = self.job_name
                jt.workingDirectory = cwd
                jt.jobEnvironment = keep
                jt.outputPath = f":{self.log_dir}/worker-{prefix}-$drmaa_incr_ph$.log"
                jt.joinFiles = True
                jt.nativeSpecification = self.native_specification
                try:
                    ids = list(self._session.runBulkJobs(jt, 1, self.np if count is None else count, 1))
                except drmaa.errors.DrmaaException as exc:
                    raise SchedulerCommandError(["runBulkJobs", self.native_specification], 1, "",
                                                f"DRMAA: {exc}") from exc
            finally:
                self._session.deleteJobTemplate(jt)
        log.info("DRMAA: submitted bulk job %s", ", ".join(ids))
        self._prefix = prefix
        return ids

    def _write_script(self, spec: Any, prefix: str) -> str:
        if self._session is None:
            self._session = acquire_session()
        if self.task_index_var is None:
            drms = str(self._session.drmsInfo)
            self.task_index_var = next((v for k, v in TASK_INDEX_VARS.items() if k in drms), "SGE_TASK_ID")
        self.array_index_var = self.task_index_var
        return super()._write_script(spec, prefix)

    def poll_table(self) -> dict[str, tuple[str, str]]:
        drmaa = _import_drmaa()
        table = {}
        with self._lock:
            live = [h.job_id for h in self.handles if not h.ended]
        for job_id in live:
            with _lock:
                try:
                    state = str(self._session.jobStatus(job_id))
                except drmaa.errors.InvalidJobException:
                    continue  # reaped already: gone from the DRM
                reason = self._verdict(job_id) if state in ("done", "failed") else ""
            table[job_id] = (state, reason)
        return table

    def _verdict(self, job_id: str) -> str:
        """What ``wait`` says of a finished job (reaps it)."""
        drmaa = _import_drmaa()
        try:
            info = self._session.wait(job_id, drmaa.Session.TIMEOUT_NO_WAIT)
        except drmaa.errors.DrmaaException:
            return ""
        said = []
        if info.wasAborted:
            said.append("aborted")
        if info.hasSignal:
            said.append(f"signal {info.terminatedSignal}")
        if info.hasExited:
            said.append(f"exit status {info.exitStatus}")
        usage = info.resourceUsage or {}
        if not info.hasExited and "exit_status" in usage:
            said.append(f"exit_status {float(usage['exit_status']):.0f}")
        return ", ".join(said)

    def cancel(self, job_ids: Sequence[str]) -> None:
        drmaa = _import_drmaa()
        for job_id in job_ids:
            with _lock:
                try:
                    self._session.control(job_id, drmaa.JobControlAction.TERMINATE)
                except drmaa.errors.DrmaaException as exc:
                    log.debug("DRMAA terminate %s: %s", job_id, exc)  # already gone is fine

    def log_path(self, handle: WorkerHandle) -> str:
        if not isinstance(handle, BatchHandle):
            return ""
        return os.path.join(self.log_dir, f"worker-{self._prefix}-{handle.index + 1}.log")

    def close(self) -> None:
        super().close()
        if self._session is not None:
            self._session = None
            release_session()


def addprocs_drmaa(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(DRMAAManager(np, ...))`` in one call."""
    return addprocs_with(DRMAAManager, np, **kwargs)

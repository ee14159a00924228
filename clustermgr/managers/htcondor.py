"""HTCManager: workers as the procs of one HTCondor cluster (``queue N``).

``condor_submit`` gets a generated submit description; every job carries a
``ClustermgrTag`` attribute, so one ``condor_q -constraint`` lists exactly this manager's
jobs and one ``condor_rm -constraint`` could remove them.  The secret reaches the job
through ``getenv`` (the submit command's environment, never its argv or the description).

Jobs often run as another user than the submitter (a personal pool, or a pool that maps
users): that user must be able to read the worker's ``python`` and the modules it imports
(clustermgr, cloudpickle, pyzmq, psutil) and write ``log_dir`` and ``dir``.  The usual
setup is a virtual environment in a shared folder::

    python3 -m venv /shared/cm && /shared/cm/bin/pip install clustermgr
    addprocs(HTCManager(4, log_dir="/shared/logs"), python="/shared/cm/bin/python",
             dir="/shared/work")
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import WorkerHandle
from .batch import BatchHandle, BatchManager, JobState, addprocs_with, run_command

#: HTCondor's JobStatus numbers, as condor_q prints them with -af
JOB_STATUS = {"1": "Idle", "2": "Running", "3": "Removed", "4": "Completed", "5": "Held",
              "6": "TransferringOutput", "7": "Suspended"}


class HTCManager(BatchManager):
    """``HTCManager(np, request_memory="1GB", requirements='OpSys == "LINUX"')``.

    Keywords other than the common ``BatchManager`` options are submit-description
    commands (``name = value`` lines), so anything ``condor_submit`` accepts can be set.
    A job that HTCondor holds (its executable missing, a policy) is removed at once and its
    ``HoldReason`` is the worker's cause of death.
    """

    scheduler = "HTCondor"
    directive = "#"  # a submit description is separate from the script: no directives
    job_id_regexp = r"submitted to cluster (?P<job_id>\d+)\."
    array_index_var = "CLUSTERMGR_TASK"
    states: ClassVar[dict[str, JobState]] = {
        "Idle": JobState.PENDING, "Suspended": JobState.PENDING, "Running": JobState.RUNNING,
        "TransferringOutput": JobState.RUNNING, "Completed": JobState.DONE,
        "Removed": JobState.FAILED, "Held": JobState.FAILED}
    resource_templates: ClassVar[dict[str, str]] = {
        "cores": "request_cpus = {}", "memory": "request_memory = {}", "gpus": "request_gpus = {}",
        "account": "accounting_group = {}", "job_name": "batch_name = {}"}

    def __init__(self, np: int, **kwargs: Any) -> None:
        super().__init__(np, **kwargs)
        if self.walltime:
            _seconds(self.walltime)  # a bad walltime fails here, not at submit
        self.tag = secrets.token_hex(6)

    def resource_directives(self) -> list[str]:
        return []  # resources go in the submit description, see submit_description()

    def submit_description(self, script: str, n: int) -> str:
        """The submit description for *n* workers running *script* (it holds no secret)."""
        log = os.path.join(self.log_dir, "worker-$(Cluster).$(Process).log")
        initialdir = self._spec.dir if self._spec else os.getcwd()
        getenv = ["CLUSTERMGR_*", *sorted(self._spec.env if self._spec else {})]  # addprocs(env=...)
        lines = ["universe = vanilla", f"executable = {script}", f"output = {log}",
                 f"error = {log}", "should_transfer_files = NO", f"initialdir = {initialdir}",
                 f"getenv = {', '.join(getenv)}",
                 f'environment = "{self.array_index_var}=$(Process)"',
                 f'+ClustermgrTag = "{self.tag}"', *self.templated_directives()]
        if self.walltime:  # HTCondor has no walltime: remove the job when it runs too long
            lines.append(f"periodic_remove = (JobStatus == 2) && "
                         f"(time() - EnteredCurrentStatus > {_seconds(self.walltime)})")
        if self.queue:
            lines.append(f'requirements = (TARGET.Machine == "{self.queue}")')
        lines += [f"{key} = {value}" for key, value in self.flags.items()]
        return "\n".join(lines) + f"\nqueue {n}\n"

    def _write_script(self, spec: Any, prefix: str) -> str:
        path = super()._write_script(spec, prefix)
        os.chmod(path, 0o755)  # the job may run as another user; the script holds no secret
        return path

    def submit_argv(self, script: str, n: int, tag: str) -> list[str]:
        sub = f"{script[:-3]}.sub"
        with open(sub, "w") as fh:
            fh.write(self.submit_description(script, n))
        return ["condor_submit", sub]

    def task_id(self, job_id: str, index: int, n: int) -> str:
        return f"{job_id}.{index}"

    def status_argv(self) -> list[str]:
        return ["condor_q", "-allusers", "-constraint", f'ClustermgrTag == "{self.tag}"',
                "-af:j", "JobStatus", "HoldReason"]

    def parse_status(self, text: str) -> dict[str, tuple[str, str]]:
        table = {}
        for line in text.splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2 and parts[1] in JOB_STATUS:
                reason = parts[2] if len(parts) == 3 and parts[2] != "undefined" else ""
                table[parts[0]] = (JOB_STATUS[parts[1]], reason)
        return table

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["condor_rm", *job_ids]

    def _update(self, h: BatchHandle, table: dict[str, tuple[str, str]]) -> None:
        word, reason = table.get(h.job_id, ("", ""))
        if word == "Held":  # held jobs stay in the queue forever: remove, report why
            self._give_up(h, f"was held by HTCondor: {reason or 'no HoldReason'}")
        else:
            super()._update(h, table)

    def exit_info(self, handle: BatchHandle) -> str:
        try:
            out = run_command(["condor_history", handle.job_id, "-limit", "1", "-af",
                               "ExitCode", "ExitSignal", "RemoveReason"], timeout=30)
        except Exception:  # noqa: BLE001 - accounting is best effort, the death stands
            return ""
        code, signal, remove = (out.strip().split(None, 2) + ["", "", ""])[:3]
        said = [f"exit code {code}" if code != "undefined" else "",
                f"signal {signal}" if signal not in ("undefined", "") else "",
                f"removed {remove}" if remove not in ("undefined", "") else ""]
        return "; ".join(s for s in said if s)

    def log_path(self, handle: WorkerHandle) -> str:
        return os.path.join(self.log_dir, f"worker-{getattr(handle, 'job_id', '')}.log")


def shared_runtime(dest: str) -> str:
    """Copy clustermgr and the modules a worker imports (cloudpickle, pyzmq, psutil) into
    *dest*, readable by every user; returns the PYTHONPATH to give the workers.

    For pools whose jobs run as another user that cannot read this environment: pass
    ``python=`` an interpreter of the same minor version that user can run and
    ``env={"PYTHONPATH": shared_runtime("/shared/cm")}`` to ``addprocs``.
    """
    import shutil
    from pathlib import Path

    import cloudpickle
    import psutil
    import zmq

    import clustermgr

    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    for pkg in (clustermgr, cloudpickle, psutil, zmq):
        src = Path(pkg.__file__).parent  # type: ignore[arg-type]
        shutil.copytree(src, root / src.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    libs = Path(zmq.__file__).parents[1] / "pyzmq.libs"  # the wheel's bundled libzmq
    if libs.exists():
        shutil.copytree(libs, root / libs.name, dirs_exist_ok=True)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return str(root)


def _seconds(walltime: str) -> int:
    """'1:30:00' or '90:00' or '5400' -> seconds."""
    if not re.fullmatch(r"\d+(:\d+){0,2}", walltime):
        raise ValueError(f"walltime {walltime!r}: write it as H:MM:SS, MM:SS or seconds")
    total = 0
    for part in walltime.split(":"):
        total = total * 60 + int(part)
    return total


def addprocs_htc(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(HTCManager(np, ...))`` in one call, as in ClusterManagers.jl."""
    return addprocs_with(HTCManager, np, **kwargs)



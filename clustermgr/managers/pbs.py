"""PBSManager: Torque and PBS Pro, one job per worker (or ``-t``/``-J`` arrays).

The two dialects differ in the array flag (Torque ``-t``, PBS Pro ``-J``), the resource
syntax (``-l nodes=1:ppn=C`` vs ``-l select=1:ncpus=C:mem=M``) and the array index variable
(``PBS_ARRAYID`` vs ``PBS_ARRAY_INDEX``).  The dialect is detected from ``qstat --version``
(PBS Pro prints ``pbs_version = ...``) unless given.  One job per worker is the default:
it works the same on every PBS, including Slurm's Torque wrappers, whose array tasks get
unrelated job ids.
"""

from __future__ import annotations

import getpass
import os
import re
import subprocess
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import WorkerHandle
from .batch import BatchHandle, BatchManager, JobState, SchedulerCommandError, addprocs_with, run_command

DIALECTS = ("torque", "pro")


def detect_dialect() -> str:
    """'pro' when ``qstat --version`` says ``pbs_version``, else 'torque'."""
    try:
        out = subprocess.run(["qstat", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "torque"
    return "pro" if "pbs_version" in out.stdout + out.stderr else "torque"


def short_id(job_id: str) -> str:
    """'123[4].server' -> '123[4]': the part every PBS prints the same way."""
    match = re.match(r"\d+(\[\d*\])?", job_id.strip())
    return match.group(0) if match else job_id.strip()


class PBSManager(BatchManager):
    """``PBSManager(np, qsub_flags=["-l", "nodes=1:ppn=2"], dialect=None)``."""

    scheduler = "PBS"
    directive = "#PBS"
    job_id_regexp = r"^\s*(?P<job_id>\d+(?:\[\d*\])?(?:\.\S+)?)"
    arrays_by_default = False
    cancel_many = False  # Slurm's Torque qdel takes one id
    resource_templates: ClassVar[dict[str, str]] = {
        "walltime": "-l walltime={}", "queue": "-q {}", "account": "-A {}"}
    states: ClassVar[dict[str, JobState]] = {
        **{s: JobState.PENDING for s in "QHWTSU"},
        **{s: JobState.RUNNING for s in "REB"},
        **{s: JobState.DONE for s in "CFX"},
    }

    def __init__(self, np: int, *, qsub_flags: Sequence[str] = (), dialect: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(np, **kwargs)
        if dialect is not None and dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS} (or None: detect), not {dialect!r}")
        self.dialect = dialect or detect_dialect()
        self.qsub_flags = list(qsub_flags)
        self.array_index_var = "PBS_ARRAYID" if self.dialect == "torque" else "PBS_ARRAY_INDEX"

    def resource_directives(self) -> list[str]:
        d = [f"-N {self.job_name}"]
        if self.dialect == "torque":
            d.append(f"-l nodes=1:ppn={self.cores or 1}")
            if self.memory:
                d.append(f"-l mem={self.memory}")
            if self.gpus:
                d.append(f"-l gpus={self.gpus}")
        else:
            select = f"select=1:ncpus={self.cores or 1}"
            select += f":mem={self.memory}" if self.memory else ""
            select += f":ngpus={self.gpus}" if self.gpus else ""
            d.append(f"-l {select}")
        return d + self.templated_directives()

    def submit_argv(self, script: str, n: int, tag: str) -> list[str]:
        # -V exports the submitter's environment (the secret travels there, not in argv);
        # -o/-e on the command line because some qsubs ignore them as directives
        log = os.path.join(self.log_dir, f"worker-{tag}.log")
        array = ([("-t" if self.dialect == "torque" else "-J"), f"0-{n - 1}"]
                 if n > 1 or self.use_array else [])
        return ["qsub", "-V", "-j", "oe", "-o", log, *array, *self.qsub_flags, script]

    def status_argv(self) -> list[str]:
        return ["qstat", *(["-t"] if self.use_array else [])]

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", *job_ids]

    def parse_status(self, text: str) -> dict[str, tuple[str, str]]:
        """Default ``qstat`` format: Job id, Name, User, Time Use, S, Queue."""
        user = getpass.getuser()
        table = {}
        for line in text.splitlines():
            cols = line.split()
            if len(cols) >= 6 and cols[0][:1].isdigit() and cols[2] in (user, user[:15]):
                table[short_id(cols[0])] = (cols[4], "")
        return table

    def task_id(self, job_id: str, index: int, n: int) -> str:
        if not self.use_array:
            return short_id(job_id)
        return f"{short_id(job_id).split('[')[0]}[{index}]"

    def exit_info(self, handle: BatchHandle) -> str:
        """PBS Pro keeps finished jobs in its history: ``qstat -x -f`` has Exit_status
        (above 256: killed by signal N-256, as qdel does with SIGTERM)."""
        if self.dialect != "pro":
            return ""
        try:
            out = run_command(["qstat", "-x", "-f", handle.job_id], timeout=30)
        except SchedulerCommandError:
            return ""
        match = re.search(r"Exit_status = (-?\d+)", out)
        if not match:
            return ""
        code = int(match.group(1))
        return f"Exit_status {code}" + (f": killed by signal {code - 256} (qdel sends SIGTERM)"
                                        if code > 256 else "")

    def log_path(self, handle: WorkerHandle) -> str:
        return os.path.join(self.log_dir, f"worker-{handle.launch_id}.log")


def addprocs_pbs(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(PBSManager(np, ...))`` in one call, as in ClusterManagers.jl."""
    return addprocs_with(PBSManager, np, **kwargs)

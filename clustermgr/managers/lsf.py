"""LSFManager: workers as the elements of one LSF job array, as ClusterManagers.jl's
LSF manager does (``bsub_flags``, ``ssh_cmd``, ``retry_delays``, ``throttle``).

The script goes to ``bsub`` on stdin, so its ``#BSUB`` lines apply.  With ``ssh_cmd``
(``["ssh", "login1"]``) every LSF command runs on another host; the secret then travels
on the ssh channel's stdin, read by a small ``sh`` preamble before ``bsub`` reads the
script, never on the remote command line.
"""

from __future__ import annotations

import getpass
import os
import shlex
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import WorkerHandle
from .batch import BatchManager, JobState, addprocs_with, run_command


def exponential_backoff(n: int = 6, first: float = 1.0, factor: float = 2.0,
                        maximum: float = 512.0) -> list[float]:
    """Delays ``first, first*factor, ...`` (at most *maximum*), *n* of them."""
    return [min(first * factor ** i, maximum) for i in range(n)]


#: the variables a worker needs, sent through the submit command's environment
_SUBMIT_VARS = ("CLUSTERMGR_MASTER", "CLUSTERMGR_ENCRYPT", "PYTHONUNBUFFERED")


class LSFManager(BatchManager):
    """``LSFManager(np, bsub_flags=["-q", "short", "-W", "60"], ssh_cmd=["ssh", "login1"])``.

    One array ``-J "name[1-np]"`` by default (``use_array=False``: one job each, at most
    ``throttle`` submissions in flight).  A failed ``bsub`` is retried after each of
    ``retry_delays`` (exponential back-off by default).
    """

    walltime_unit = 60.0  # bsub -W 30 is thirty minutes; -W 1:30 an hour and a half
    walltime_pair = (3600.0, 60.0)

    scheduler = "LSF"
    directive = "#BSUB"
    job_id_regexp = r"Job <(?P<job_id>\d+)> is submitted"
    array_index_var = "LSB_JOBINDEX"
    fatal_submit_errors = r"illegal option|No such queue|Usage:"
    states: ClassVar[dict[str, JobState]] = {
        "PEND": JobState.PENDING, "PROV": JobState.PENDING, "WAIT": JobState.PENDING,
        "PSUSP": JobState.PENDING, "USUSP": JobState.PENDING, "SSUSP": JobState.PENDING,
        "RUN": JobState.RUNNING, "DONE": JobState.DONE, "EXIT": JobState.FAILED,
        "ZOMBI": JobState.FAILED, "UNKWN": JobState.FAILED}
    resource_templates: ClassVar[dict[str, str]] = {
        "cores": "-n {}", "memory": "-M {}", "walltime": "-W {}", "queue": "-q {}",
        "account": "-P {}", "gpus": '-gpu "num={}"'}

    def __init__(self, np: int, *, bsub_flags: Sequence[str] = (), ssh_cmd: Sequence[str] = (),
                 retry_delays: Sequence[float] | None = None, throttle: int = 4,
                 **kwargs: Any) -> None:
        super().__init__(np, retry_delays=exponential_backoff() if retry_delays is None else retry_delays,
                         throttle=throttle, **kwargs)
        self.bsub_flags, self.ssh_cmd = list(bsub_flags), list(ssh_cmd)

    def index_expression(self) -> str:
        return "$(( ${LSB_JOBINDEX:-1} - 1 ))"  # LSF counts elements from 1

    def submit_argv(self, script: str, n: int, tag: str) -> list[str]:
        name = f"{self.job_name}[1-{n}]" if self.use_array else self.job_name
        out = f"{self.log_dir}/worker-%J.%I.log" if self.use_array else f"{self.log_dir}/worker-{tag}.log"
        cwd = self._spec.dir if self._spec else os.getcwd()
        return ["bsub", "-J", name, "-o", out, "-cwd", cwd, *self.bsub_flags]

    def run_submit(self, argv: list[str], script: str, env: dict[str, str], cwd: str) -> str:
        with open(script) as fh:
            text = fh.read()
        if not self.ssh_cmd:
            return run_command(argv, env=env, cwd=cwd, input=text)
        user = sorted(self._spec.env) if self._spec else []
        exports = {k: env[k] for k in (*_SUBMIT_VARS, *user, "CLUSTERMGR_LAUNCH_ID") if k in env}
        preamble = ("IFS= read -r CLUSTERMGR_COOKIE && export CLUSTERMGR_COOKIE "
                    + " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items())
                    + " && exec " + shlex.join(argv))
        return run_command([*self.ssh_cmd, "sh", "-c", shlex.quote(preamble)],
                           input=env["CLUSTERMGR_COOKIE"] + "\n" + text)

    def run(self, argv: list[str], timeout: float = 30.0) -> str:
        if not self.ssh_cmd:
            return run_command(argv, timeout=timeout)
        return run_command([*self.ssh_cmd, shlex.join(argv)], timeout=timeout)

    def task_id(self, job_id: str, index: int, n: int) -> str:
        return f"{job_id}[{index + 1}]" if self.use_array else job_id

    def status_argv(self) -> list[str]:
        return ["bjobs", "-u", getpass.getuser(), "-noheader", "-a", "-o",
                "jobid jobindex stat exit_code pend_reason delimiter='|'"]

    def parse_status(self, text: str) -> dict[str, tuple[str, str]]:
        table = {}
        for line in text.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 5 or not parts[0].isdigit():
                continue
            job, index, stat, code, reason = parts
            key = f"{job}[{index}]" if index not in ("0", "-") else job
            note = reason if reason != "-" else (f"exit code {code}" if code != "-" else "")
            table[key] = (stat, note)
        return table

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["bkill", *job_ids]

    def log_path(self, handle: WorkerHandle) -> str:
        job_id = getattr(handle, "job_id", "")
        if not self.use_array:
            return os.path.join(self.log_dir, f"worker-{handle.launch_id}.log")
        job, _, index = job_id.partition("[")
        return os.path.join(self.log_dir, f"worker-{job}.{index.rstrip(']')}.log")


def addprocs_lsf(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(LSFManager(np, ...))`` in one call, as in ClusterManagers.jl."""
    return addprocs_with(LSFManager, np, **kwargs)

"""SlurmManager: workers as the tasks of one Slurm array job, or as ``srun`` steps inside
an existing allocation (``SLURM_JOB_ID`` set: detected automatically)."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from .base import LaunchSpec, WorkerHandle
from .batch import BatchManager, JobState, addprocs_with, flag
from .local import LocalManager


class SlurmManager(BatchManager):
    """``SlurmManager(np, partition="debug", t="00:5:00", mem_per_cpu=100, exclusive="")``.

    Keywords other than the common ``BatchManager`` options become sbatch/srun flags by
    ClusterManagers.jl's rule (see ``batch.flag``).  ``allocation=None`` detects whether this
    process runs inside a Slurm allocation (then workers are ``srun`` steps in it);
    ``True``/``False`` force one way.  ``preempt_signal="USR1", preempt_warning=120``: Slurm
    signals the worker (the batch shell, which is the worker: the script ``exec``s it) 120 s
    before its end or at preemption (``--signal=B:USR1@120``), and it drains.
    """

    scheduler = "Slurm"
    directive = "#SBATCH"
    job_id_regexp = r"^(?P<job_id>\d+)"
    array_index_var = "SLURM_ARRAY_TASK_ID"
    #: sbatch's usage errors and refusals no retry can fix (a busy controller is retried)
    fatal_submit_errors = (r"unrecognized option|invalid option|option '--[\w-]+' requires|"
                           r"Invalid (partition|account|qos|generic resource|feature|job array)|"
                           r"Requested node configuration is not available|invalid partition")
    states: ClassVar[dict[str, JobState]] = {
        **{s: JobState.PENDING for s in ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD",
                                         "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "RESIZING")},
        **{s: JobState.RUNNING for s in ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING")},
        "COMPLETED": JobState.DONE,
        **{s: JobState.FAILED for s in ("CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                                        "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED",
                                        "SPECIAL_EXIT", "STOPPED")},
    }

    walltime_unit = 60.0  # sbatch --time=5 is five minutes, --time=5:30 five and a half
    walltime_pair = (60.0, 1.0)

    def __init__(self, np: int, *, allocation: bool | None = None, preempt_warning: int | None = None,
                 **kwargs: Any) -> None:
        if "partition" in kwargs and "queue" not in kwargs:
            kwargs["queue"] = kwargs.pop("partition")
        super().__init__(np, **kwargs)
        if preempt_warning is not None:  # Slurm sends the signal that long before the end
            if not self.preempt_signal:
                raise ValueError("preempt_warning= needs preempt_signal= (the signal Slurm sends)")
            sig = str(self.preempt_signal).upper().removeprefix("SIG")
            self.directives.append(f"--signal=B:{sig}@{int(preempt_warning)}")
        self.allocation = bool(os.environ.get("SLURM_JOB_ID")) if allocation is None else allocation
        self._steps: _SrunSteps | None = None
        self._end_times: dict[str, float] = {}  # job id -> Slurm's EndTime of a running job

    resource_templates: ClassVar[dict[str, str]] = {
        "job_name": "--job-name={}", "cores": "--cpus-per-task={}", "memory": "--mem={}",
        "walltime": "--time={}", "queue": "--partition={}", "account": "--account={}",
        "gpus": "--gpus-per-task={}"}

    def resource_directives(self) -> list[str]:
        d = self.templated_directives()
        d.insert(1, f"--output={self.log_dir}/worker-%A_%a.log")  # after the job name
        return d + [" ".join(f) for f in (flag(key, value) for key, value in self.flags.items()) if f]

    def validate(self, python: str | None = None, dir: str | None = None) -> None:
        """Ask Slurm whether it would take this manager's job (``sbatch --test-only``),
        without submitting anything or making ``log_dir``; ``ValueError`` with sbatch's own
        words (a misspelt flag, an unknown partition or account) when it would not."""
        import subprocess
        import tempfile

        with tempfile.NamedTemporaryFile("w", prefix="clustermgr-test-", suffix=".sh") as fh:
            fh.write(self.job_script(python, dir or os.getcwd()))
            fh.flush()
            array = [f"--array=0-{self.np - 1}"] if self.use_array else []
            done = subprocess.run(["sbatch", "--test-only", *array, fh.name], capture_output=True,
                                  text=True, timeout=60)
        said = (done.stderr + done.stdout).strip()
        if done.returncode != 0 or "error" in said.lower() and "to start at" not in said:
            raise ValueError(f"Slurm would not take this job: {said}")

    def submit_argv(self, script: str, n: int, tag: str) -> list[str]:
        array = [f"--array=0-{n - 1}"] if self.use_array else []
        output = [] if self.use_array else [f"--output={self.log_dir}/worker-{tag}.log"]
        return ["sbatch", "--parsable", *array, *output, script]

    def log_path(self, handle: WorkerHandle) -> str:
        if self.use_array:
            return os.path.join(self.log_dir, f"worker-{getattr(handle, 'job_id', '')}.log")
        return os.path.join(self.log_dir, f"worker-{handle.launch_id}.log")

    def status_argv(self) -> list[str]:
        return ["squeue", "--noheader", "--array", "--states=all", f"--user={getpass.getuser()}",
                "--format=%i|%T|%r|%e"]

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["scancel", *job_ids]

    def parse_status(self, text: str) -> dict[str, tuple[str, str]]:
        table = {}
        for line in text.splitlines():
            parts = line.strip().split("|")
            if len(parts) in (3, 4):
                table[parts[0]] = (parts[1], "" if parts[2] == "None" else parts[2])
            if len(parts) == 4 and parts[1] == "RUNNING":
                end = _slurm_time(parts[3])
                if end is not None:
                    self._end_times[parts[0]] = end
        return table

    def end_time(self, handle: Any) -> float | None:
        """Slurm's own EndTime for the running job (squeue ``%e``): it knows of time
        limits changed by an admin, or a deadline."""
        return self._end_times.get(getattr(handle, "job_id", ""))

    def task_id(self, job_id: str, index: int, n: int) -> str:
        return f"{job_id}_{index}" if self.use_array else job_id

    def array_parent(self, task_id: str) -> str:
        return task_id.split("_", 1)[0]

    # --- inside an allocation: srun steps ----------------------------------------------

    def launch(self, spec: LaunchSpec) -> Iterator[Any]:
        if not self.allocation:
            return super().launch(spec)
        self._steps = _SrunSteps(self)
        return self._steps.launch(spec)

    def kill(self, handle: WorkerHandle, grace: float = 5.0) -> None:
        if self._steps is not None and not hasattr(handle, "job_id"):
            self._steps.kill(handle, grace)
        else:
            super().kill(handle, grace)

    def close(self) -> None:
        if self._steps is not None:
            self._steps.close()
        super().close()


class _SrunSteps(LocalManager):
    """Inside an allocation: one ``srun`` per worker, the srun process being the handle
    (its end is the worker's end, seen at once like a local process)."""

    def __init__(self, slurm: SlurmManager) -> None:
        super().__init__(slurm.np)
        self.slurm = slurm

    def worker_command(self, spec: LaunchSpec, index: int) -> list[str]:
        flags = [f for name, value in self.slurm.flags.items() for f in flag(name, value)]
        cores = [f"--cpus-per-task={self.slurm.cores}"] if self.slurm.cores else []
        return ["srun", "--ntasks=1", "--nodes=1", "--exact", *cores, *flags, *spec.argv()]


def _slurm_time(text: str) -> float | None:
    """squeue's ``2026-12-05T01:02:03`` (local time) as ``time.time()`` seconds."""
    import time

    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:  # N/A, Unknown, NONE
        return None


def addprocs_slurm(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(SlurmManager(np, ...))`` in one call, as in ClusterManagers.jl."""
    return addprocs_with(SlurmManager, np, **kwargs)

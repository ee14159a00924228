"""Grid Engine: ``SGEManager`` (one ``qsub -t`` array) and ``QRSHManager`` (one
``qrsh -now no`` per worker, the qrsh process being the worker's handle)."""

from __future__ import annotations

import getpass
import re
import shlex
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from .base import LaunchSpec
from .batch import BatchHandle, BatchManager, JobState, SchedulerCommandError, addprocs_with, run_command
from .local import LocalManager


class SGEManager(BatchManager):
    """``SGEManager(np, qsub_flags=["-pe", "smp", "2"], wd="/scratch")``: one array job."""

    scheduler = "SGE"
    directive = "#$"
    job_id_regexp = r"^(?P<job_id>\d+)"  # -terse: '13' or '13.1-4:1'
    array_index_var = "SGE_TASK_ID"
    states: ClassVar[dict[str, JobState]] = {}  # letter combinations: see classify()

    def __init__(self, np: int, *, qsub_flags: Sequence[str] = (), wd: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(np, **kwargs)
        self.qsub_flags = list(qsub_flags)
        self.wd = wd

    resource_templates: ClassVar[dict[str, str]] = {
        "job_name": "-N {}", "memory": "-l h_vmem={}", "walltime": "-l h_rt={}", "queue": "-q {}",
        "account": "-A {}"}

    def resource_directives(self) -> list[str]:
        pe = [f"-pe smp {self.cores}"] if self.cores and self.cores > 1 else []
        return ["-S /bin/bash", *pe, *self.templated_directives()]

    def index_expression(self) -> str:
        return "$(( ${SGE_TASK_ID:-1} - 1 ))"  # SGE counts tasks from 1

    def pending_detail(self, handle: Any) -> str:
        """The "scheduling info" of ``qstat -j`` (Grid Engine reports it when the scheduler
        configuration has ``schedd_job_info true``)."""
        job = str(getattr(handle, "job_id", "")).split(".")[0]
        try:
            out = self.run(["qstat", "-j", job])
        except Exception as exc:  # noqa: BLE001 - an explanation must not fail
            return f"(qstat -j {job} failed: {exc})"
        info, keep = [], False
        for line in out.splitlines():
            if line.startswith("scheduling info:"):
                keep = True
                line = line.split(":", 1)[1]
            elif keep and line and not line[0].isspace():
                break
            if keep and line.strip():
                info.append(line.strip())
        return "\n".join(info)

    def working_dir(self, dir: str | None) -> str | None:
        """``wd=`` (also given to qsub as ``-wd``) when set: one working folder, not two."""
        return self.wd or super().working_dir(dir)

    def submit_argv(self, script: str, n: int, tag: str) -> list[str]:
        log = f"{self.log_dir}/worker-$JOB_ID.$TASK_ID.log"  # SGE expands these itself
        wd = ["-wd", self.wd] if self.wd else []
        return ["qsub", "-terse", "-V", "-t", f"1-{n}", "-j", "y", "-o", log, *wd,
                *self.qsub_flags, script]

    def status_argv(self) -> list[str]:
        return ["qstat", "-g", "d", "-u", getpass.getuser()]

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", *job_ids]

    def parse_status(self, text: str) -> dict[str, tuple[str, str]]:
        """``qstat -g d``: one line per array task; the task id is the last column."""
        table = {}
        for line in text.splitlines():
            cols = line.split()
            if len(cols) >= 8 and cols[0].isdigit():
                table[f"{cols[0]}.{cols[-1]}"] = (cols[4], "")
        return table

    def classify(self, word: str) -> JobState | None:
        if "E" in word:
            return JobState.FAILED       # Eqw: the job is in error
        if "r" in word or "t" in word or "d" in word:
            return JobState.RUNNING      # r, t (transferring), Rr, dr (being deleted)
        return JobState.PENDING          # qw, hqw, s, S, T ...

    def task_id(self, job_id: str, index: int, n: int) -> str:
        return f"{job_id}.{index + 1}"

    def exit_info(self, handle: BatchHandle) -> str:
        job, _, task = handle.job_id.partition(".")
        return qacct_verdict(["-j", job, "-t", task])

    def log_path(self, handle: Any) -> str:
        return f"{self.log_dir}/worker-{getattr(handle, 'job_id', '')}.log"


def qacct_verdict(selector: list[str]) -> str:
    """qacct's 'failed' and 'exit_status' of a finished job ("" if it has none yet).
    Accounting is written about a second after the job ends, hence the retries."""
    for _ in range(3):
        try:
            out = run_command(["qacct", *selector], timeout=30)
        except SchedulerCommandError:
            time.sleep(1.0)  # not in the accounting file yet: no event to wait for
            continue
        fields = re.findall(r"^(failed|exit_status)\s+(.+?)\s*$", out, re.M)
        return "; ".join(f"qacct: {k} " + " ".join(v.split()) for k, v in fields[-2:])
    return ""


class QRSHManager(LocalManager):
    """``QRSHManager(np, qsub_flags=[...])``: each worker is one ``qrsh -now no`` whose
    process is the handle (its end is the worker's end, seen at once).  The environment,
    secret included, travels with ``-V``, not argv.  A worker whose job still waits for a
    slot does not count against the join timeout until Grid Engine runs it."""

    def __init__(self, np: int, *, qsub_flags: Sequence[str] = (), poll_interval: float = 1.0) -> None:
        import secrets

        if isinstance(np, bool) or not isinstance(np, int) or not 1 <= np <= 1000:
            raise ValueError(f"QRSHManager needs 1..1000 workers, not {np!r}")
        super().__init__(np)
        self.qsub_flags = list(qsub_flags)
        self.poll_interval = poll_interval
        self.token = secrets.token_hex(3)[:5]
        self._spec: LaunchSpec | None = None
        self._waiting: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"QRSHManager({self.np})"

    def name(self, index: int) -> str:
        """A job name of 10 characters (what qstat shows) unique to this worker."""
        return f"q{self.token}{index:03d}"

    def worker_command(self, spec: LaunchSpec, index: int) -> list[str]:
        # qrsh joins its arguments into one sh -c string: pass one pre-quoted string
        return ["qrsh", "-now", "no", "-V", "-cwd", "-N", self.name(index), *self.qsub_flags,
                shlex.join(spec.argv())]

    def launch(self, spec: LaunchSpec) -> Any:
        self._spec = spec
        for handle in super().launch(spec):
            handle.queued = True
            self._waiting[self.name(handle.index)] = handle
            yield handle
        threading.Thread(target=self._poll_until_running, daemon=True,
                         name="clustermgr-qrsh-poll").start()

    def _poll_until_running(self) -> None:
        user = getpass.getuser()
        while self._waiting:
            try:
                out = run_command(["qstat", "-u", user], timeout=30)
            except SchedulerCommandError:
                out = ""
            for line in out.splitlines():
                cols = line.split()
                if len(cols) >= 5 and cols[2] in self._waiting and "r" in cols[4]:
                    handle = self._waiting.pop(cols[2])
                    handle.queued = False
                    self._spec.on_running(handle)  # type: ignore[union-attr]
            for name, handle in list(self._waiting.items()):
                if handle.proc.poll() is not None:  # ended before running
                    self._waiting.pop(name, None)
            time.sleep(self.poll_interval)  # qstat has no event to wait for

    def exit_cause(self, handle: Any, code: int) -> str:
        verdict = qacct_verdict(["-j", self.name(handle.index)])
        return f"qrsh exited with code {code}" + (f" ({verdict})" if verdict else "")

    def kill(self, handle: Any, grace: float = 5.0) -> None:
        """End the qrsh client (which ends its job), then make sure the job left the queue."""
        super().kill(handle, grace)
        name = self.name(handle.index)
        for _ in range(150):
            try:
                run_command(["qstat", "-j", name], timeout=30)
            except SchedulerCommandError:
                return  # qstat -j exits 1 once the job is gone
            try:
                run_command(["qdel", name], timeout=30)
            except SchedulerCommandError:
                pass
            time.sleep(0.1)  # the queue has no event to wait for


def addprocs_sge(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(SGEManager(np, ...))`` in one call, as in ClusterManagers.jl."""
    return addprocs_with(SGEManager, np, **kwargs)


def addprocs_qrsh(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(QRSHManager(np, ...))`` in one call, as in ClusterManagers.jl."""
    return addprocs_with(QRSHManager, np, **kwargs)

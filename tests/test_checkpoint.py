"""Preemption: a worker that gets its scheduler's warning signal drains, hands back what it
has not started, checkpoints the running task when the task offers it, and leaves; the
task resumes from its checkpoint elsewhere without using a retry (pmap, the executor,
sessions).  Local workers told by CLUSTERMGR_PREEMPT_SIGNAL, as a batch manager's
``preempt_signal`` tells them; the same with Slurm's own signal is in test_slurm.py."""

from __future__ import annotations

import os
import signal
import time

import pytest
from procs import until

import clustermgr as cm
from clustermgr.checkpoint import preempt_signals
from clustermgr.master import WorkerInfo

WARNED = {"CLUSTERMGR_PREEMPT_SIGNAL": "USR1"}


class Steps(cm.Checkpointable):
    """Counts *n* steps; on its first worker, after *warn_at* steps, its process gets the
    preemption warning (as from the scheduler).  Returns (steps, workers it ran on)."""

    def __init__(self, warn_at: int = 5) -> None:
        self.done, self.where, self.warn_at = 0, [], warn_at

    def __call__(self, n: int) -> tuple[int, list[int]]:
        self.where.append(cm.myid())
        while self.done < n:
            if len(self.where) == 1 and self.done == self.warn_at:
                os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)
            self.done += 1
        return self.done, self.where


def warned_run(n: int = 20, warn_at: int = 5) -> tuple[int, list[int]]:
    """The same without a checkpoint: it runs to its end on the worker that was warned."""
    return Steps.__call__(Steps(warn_at), n)


@pytest.fixture
def two(fresh):
    return cm.addprocs(2, env=WARNED)


def test_pmap_resumes_a_preempted_task_from_its_checkpoint_elsewhere(two):
    [(steps, where)] = cm.pmap(Steps(warn_at=5), [20], retry_delays=())
    assert steps == 20 and len(where) == 2 and where[0] != where[1]  # 5 there, 15 here
    until(lambda: where[0] not in cm.workers())  # the warned worker left once idle
    assert cm.cluster.master().dead[where[0]].infrastructure == "it was preempted (SIGUSR1)"


def test_the_executor_resumes_from_the_checkpoint(two):
    with cm.ClusterExecutor(workers=two) as ex:
        steps, where = ex.submit(Steps(warn_at=3), 10).result(timeout=60)
    assert steps == 10 and len(where) == 2


def test_a_task_without_checkpoint_finishes_where_it_runs_and_the_queued_ones_move(two):
    a, b = two
    first = cm.remotecall(warned_run, a, 40, 5)
    queued = [cm.remotecall(cm.myid, a) for _ in range(3)]  # behind it on a
    assert first.fetch(60) == (40, [a])  # allowed to finish
    for fut in queued:  # handed back unstarted: the caller hears CallRevoked
        with pytest.raises(cm.ClusterError):
            fut.fetch(60)
    until(lambda: a not in cm.workers())
    assert cm.pmap(lambda x: cm.myid(), range(4)) == [b] * 4


def test_a_session_stores_the_checkpoint_and_resumes_from_it(fresh, tmp_path, monkeypatch):
    from clustermgr.session import start_session

    monkeypatch.setenv("CLUSTERMGR_HOME", str(tmp_path / "home"))
    s = start_session(nworkers=2, env=WARNED)
    try:
        task = s.submit(Steps(warn_at=5), 20)
        steps, where = s.result(task, timeout=120)
        assert steps == 20 and len(where) == 2
        assert f"task {task}: completed, 1 attempt(s)" in s.explain(task)  # the preemption cost none
    finally:
        s.end()


def test_preemption_seen_in_the_scheduler_state_is_the_infrastructure(fresh):
    cm.addprocs(1)
    m = cm.cluster.master()
    w = WorkerInfo(99, b"x", "h", 1, None, 0.0)
    assert m.infrastructure_loss(w, "Slurm job 7_1 ended in state PREEMPTED") == "it was preempted"
    assert m.infrastructure_loss(w, "Slurm job 7_1 ended in state NODE_FAIL") == "its node failed"
    assert m.infrastructure_loss(w, "Slurm job 7_1 ended in state FAILED") == ""


def test_signal_names():
    assert preempt_signals("USR1") == [signal.SIGUSR1]
    assert preempt_signals("SIGUSR2, term") == [signal.SIGUSR2, signal.SIGTERM]
    with pytest.raises(ValueError, match="names no signal"):
        from clustermgr.managers.slurm import SlurmManager

        SlurmManager(1, preempt_signal="USR9")

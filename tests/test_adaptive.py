"""adapt: growing and shrinking a manager's workers with the work waiting, draining and
replacing workers before their walltime, infrastructure losses re-queued without charge.

Local workers here (fast, every rule); the same against the real Slurm and Grid Engine
are in test_slurm.py and test_sge.py.  Counts and states are polled (an adapt acts on
its own clock), through ``procs.until``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest
from procs import until

import clustermgr as cm
from clustermgr import ProcessExitedError
from clustermgr.adaptive import Adaptive
from clustermgr.managers.local import LocalManager

FAST = dict(interval=0.1, wait=0.2, submit_interval=0.1)


def nap(seconds):
    time.sleep(seconds)
    return cm.myid()


class WalltimeManager(LocalManager):
    """Local workers with a walltime, as a scheduler gives them: each is sent SIGTERM
    *walltime* seconds after it started, and ``ends_at`` says when."""

    def __init__(self, walltime: float) -> None:
        super().__init__(1, fork_server=False)  # Popen handles: a signal to a reaped one is a no-op
        self.walltime_seconds = walltime
        self.started: dict[str, float] = {}
        self.timers: list[threading.Timer] = []

    def launch(self, spec):
        for handle in super().launch(spec):
            self.started[handle.launch_id] = time.time()
            timer = threading.Timer(self.walltime_seconds, handle.proc.send_signal, (signal.SIGTERM,))
            timer.daemon = True
            timer.start()
            self.timers.append(timer)
            yield handle

    def ends_at(self, handle):
        return self.started[handle.launch_id] + self.walltime_seconds

    def close(self):
        for timer in self.timers:
            timer.cancel()
        super().close()


def test_grows_from_zero_with_the_work_and_shrinks_back_when_idle(fresh):
    a = cm.adapt(LocalManager(1), 0, 3, idle_timeout=1.0, **FAST)
    assert cm.workers() == [1]  # nothing before there is work
    where = cm.pmap(nap, [0.3] * 12)
    assert 1 not in where  # with an adapt that starts workers, pmap waits for them
    assert a.stats.submissions == 1 and a.stats.workers_requested == 3  # one launch of 3
    assert a.stats.joined == 3
    until(lambda: cm.workers() == [1], timeout=30)
    assert a.stats.retired == 3 and a.stats.cancelled == 0
    a.stop()


def test_minimum_equal_maximum_keeps_that_many_and_replaces_the_dead(fresh):
    a = cm.adapt(LocalManager(1), 2, 2, **FAST)
    until(lambda: len(a.workers()) == 2)
    first = a.workers()
    os.kill(cm.remotecall_fetch(os.getpid, first[0]), signal.SIGKILL)
    until(lambda: len(a.workers()) == 2 and first[0] not in a.workers())
    assert first[1] in a.workers() and a.stats.submissions == 2
    a.stop()
    assert len(cm.workers()) == 2  # stopping adapting leaves the workers


def test_bursts_shorter_than_the_idle_timeout_do_not_thrash(fresh):
    a = cm.adapt(LocalManager(1), 0, 2, idle_timeout=5.0, **FAST)
    for _ in range(4):  # four bursts, with gaps well below idle_timeout
        assert len(cm.pmap(nap, [0.2] * 8)) == 8
        time.sleep(0.5)  # the gap between bursts is the load under test
    assert a.stats.submissions == 1 and a.stats.workers_requested == 2
    assert a.stats.retired == 0 and a.stats.cancelled == 0
    a.stop()


def test_a_long_task_keeps_its_worker_while_the_others_are_retired(fresh):
    a = cm.adapt(LocalManager(1), 0, 2, idle_timeout=0.5, **FAST)
    until_two = cm.pmap(nap, [0.3] * 6)
    assert len(set(until_two)) == 2
    wid = until_two[0]
    fut = cm.remotecall(nap, wid, 3.0)
    until(lambda: a.stats.retired == 1)  # the other one, idle
    assert wid in cm.workers()
    assert fut.fetch(30) == wid  # the busy one finished its task
    until(lambda: cm.workers() == [1])
    a.stop()


def test_workers_that_die_at_once_pause_submitting_and_say_why(fresh, tmp_path):
    bad = tmp_path / "python"
    bad.write_text("#!/bin/sh\necho 'no such module: numpy' >&2\nexit 3\n")
    bad.chmod(0o755)
    a = cm.adapt(LocalManager(1), 1, 1, max_failures=3, failure_pause=600, python=str(bad), **FAST)
    until(lambda: a.paused, timeout=30)
    assert a.stats.submissions == 3 and a.stats.failures == 3
    assert "3 submissions in a row failed" in a.paused and "exited with code 3" in a.paused
    assert "paused" in a.explain()
    time.sleep(1.0)  # a second of ticks: none submits while paused
    assert a.stats.submissions == 3
    a.stop()


def test_max_pending_bounds_the_launches_in_flight(fresh, tmp_path):
    slow = tmp_path / "python"  # a worker that takes 2 s to start
    slow.write_text(f"#!/bin/sh\nsleep 2\nexec {sys.executable} \"$@\"\n")
    slow.chmod(0o755)
    a = cm.adapt(LocalManager(1), 0, 6, max_pending=2, python=str(slow), **FAST)
    fut = threading.Thread(target=cm.pmap, args=(nap, [0.1] * 30), daemon=True)
    fut.start()
    until(lambda: a.pending() == 2)
    assert a.stats.workers_requested == 2  # 6 wanted, 2 at a time
    fut.join(60)
    a.stop()


def test_adapt_refuses_what_it_cannot_do(fresh):
    from clustermgr.managers.affinity import LocalAffinityManager

    with pytest.raises(TypeError, match="maximum="):
        cm.adapt(LocalManager(1))
    with pytest.raises(ValueError, match="maximum .* >= minimum"):
        cm.adapt(LocalManager(1), 3, 2)
    with pytest.raises(TypeError, match="cannot"):
        cm.adapt(LocalAffinityManager(1), 0, 2)
    with pytest.raises(ValueError, match="drain"):
        cm.adapt(WalltimeManager(10), 0, 2, drain=10)
    with pytest.raises(TypeError, match="unknown keyword"):
        cm.adapt(LocalManager(1), 0, 2, walltime=3)


def test_workers_are_drained_and_replaced_before_their_walltime(fresh):
    # 6 s walltimes, 32 s of work: every worker reaches its end during the map; none is
    # running a task when it does, and no retry is needed (retry_delays=() would raise)
    m = WalltimeManager(6.0)
    a = cm.adapt(m, 2, 2, drain=1.5, stagger=0.5, lead=2.0, **FAST)
    until(lambda: len(a.workers()) == 2)
    where = cm.pmap(nap, [0.2] * 160, retry_delays=())
    assert len(where) == 160
    assert a.stats.drained >= 4 and len(set(where)) >= 6  # the map outlived two generations
    a.stop()


def test_a_task_lost_to_the_walltime_runs_again_without_using_a_retry(fresh):
    # no drain: the worker is ended under its task (as when a task outlives the drain)
    m = WalltimeManager(4.0)
    a = cm.adapt(m, 1, 1, drain=0.0, stagger=0.0, lead=0.0, **FAST)
    until(lambda: len(a.workers()) == 1)
    first = a.workers()[0]
    cm.remotecall_fetch(nap, first, 2.0)  # it has 2 s left, its next task needs 3
    assert cm.pmap(nap, [3.0], retry_delays=()) != [first]
    a.stop()


def test_what_ended_a_worker_is_in_its_error(fresh):
    m = WalltimeManager(2.0)
    a = cm.adapt(m, 1, 1, drain=0.0, stagger=0.0, lead=0.0, **FAST)
    until(lambda: len(a.workers()) == 1)
    fut = cm.remotecall(nap, a.workers()[0], 30)
    with pytest.raises(ProcessExitedError) as info:
        fut.fetch(30)
    assert info.value.infrastructure == "its walltime ran out"
    assert "lost to the infrastructure: its walltime ran out" in str(info.value)
    # a code's own crash is not the infrastructure's
    until(lambda: len(a.workers()) == 1)
    fut = cm.remotecall(os._exit, a.workers()[0], 1)
    with pytest.raises(ProcessExitedError) as info:
        fut.fetch(30)
    assert info.value.infrastructure == ""
    a.stop()


def test_infra_retries_bound_the_requeues(fresh):
    m = WalltimeManager(1.5)
    a = cm.adapt(m, 1, 1, drain=0.0, stagger=0.0, lead=0.0, **FAST)
    with pytest.raises(ProcessExitedError, match="lost to the infrastructure 2 times"):
        cm.pmap(nap, [30.0], infra_retries=1)
    a.stop()


def test_expected_duration_places_tasks_only_where_there_is_time(fresh):
    m = WalltimeManager(60.0)
    a = cm.adapt(m, 1, 2, drain=5, stagger=0, **FAST)
    until(lambda: len(a.workers()) == 1)
    assert set(cm.pmap(nap, [0.01] * 4, expected_duration=30)) <= set(a.workers())
    with pytest.raises(ValueError, match="no worker can run a task of expected_duration=100"):
        cm.pmap(nap, [0.01], expected_duration=100)
    a.stop()
    cm.shutdown()
    cm.addprocs(1)
    assert len(cm.pmap(nap, [0.01], expected_duration=10**6)) == 1  # no walltime: any length


def test_an_adaptive_executor_starts_from_nothing_and_lets_workers_go(fresh):
    with cm.ClusterExecutor(manager=LocalManager(1),
                            adaptive=dict(minimum=0, maximum=2, idle_timeout=0.5, **FAST)) as ex:
        a = ex._adaptive
        assert isinstance(a, Adaptive) and cm.workers() == [1]
        assert set(ex.map(nap, [0.2] * 10)) <= set(a.workers()) and len(a.workers()) == 2
        until(lambda: cm.workers() == [1])  # retired idle, and gone
        assert a.stats.retired == 2
        assert len(list(ex.map(nap, [0.1] * 2))) == 2  # it grows again
        assert a.stats.submissions == 2
    assert cm.workers() == [1]


def test_a_worker_retired_idle_is_taken_back_when_work_comes_before_it_left(fresh):
    a = cm.adapt(LocalManager(1), 0, 1, idle_timeout=0.3, interval=2.0, wait=0.0, submit_interval=0.0)
    until(lambda: a.stats.retired == 0 and len(cm.pmap(nap, [0.01])) == 1 and a.stats.joined == 1)
    wid = a.workers()[0]
    until(lambda: wid in cm.cluster.master().draining)  # marked; it leaves at the next tick
    assert cm.pmap(nap, [0.01] * 3) == [wid] * 3  # work came first: it stays
    assert wid not in cm.cluster.master().draining and a.stats.submissions == 1
    a.stop()


def test_shutdown_stops_adapting(fresh):
    a = cm.adapt(LocalManager(1), 1, 1, **FAST)
    until(lambda: len(a.workers()) == 1)
    cm.shutdown()
    assert not a.running and cm.workers() == [1]

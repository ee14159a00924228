"""'Why is it pending? Why did it die?': manager.explain() and `clustermgr explain`, against
the real Slurm and Grid Engine of the test kit."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from backends import start
from procs import until

import clustermgr as cm
from clustermgr.managers.sge import SGEManager
from clustermgr.managers.slurm import SlurmManager
from clustermgr.session import attach_session, list_sessions, start_session

CLI = str(Path(sys.executable).with_name("clustermgr"))


def launch_in_background(manager):
    """addprocs in a thread (a job that pends keeps it waiting); the test ends it with shutdown."""
    thread = threading.Thread(target=lambda: _quiet(cm.addprocs, manager, min_workers=1), daemon=True)
    thread.start()
    return thread


def _quiet(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except cm.LaunchError:
        pass  # shutdown cancelled the job it waited for


def test_slurm_explains_a_job_that_asks_for_more_than_the_node_has_free(fresh, tmp_path):
    start("slurm")
    m = SlurmManager(2, cores=6, poll_interval=0.2, log_dir=str(tmp_path))  # 8 CPUs: one fits
    thread = launch_in_background(m)
    until(lambda: "reason: Resources" in m.explain() and "joined" in m.explain())
    text = m.explain()
    assert "RUNNING, worker 2 joined" in text  # the job that fits; the other pends
    assert f"job script: {tmp_path}/job-" in text
    cm.shutdown()
    thread.join(60)
    text = m.explain()
    assert text.count("ended - Slurm job") == 2 or "left the queue" in text


def test_a_job_that_dies_is_explained_with_its_log(fresh, tmp_path):
    start("slurm")
    m = SlurmManager(1, poll_interval=0.2, log_dir=str(tmp_path))
    thread = threading.Thread(target=_quiet, args=(cm.addprocs, m),
                              kwargs={"python": "/bin/false", "timeout": 30}, daemon=True)
    thread.start()
    until(lambda: "ended" in m.explain())
    thread.join(60)
    assert "ended - Slurm job" in m.explain()


def test_grid_engine_says_why_a_job_pends(fresh, tmp_path):
    env = start("sge")
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k != "GLIBC_TUNABLES"})
    try:
        m = SGEManager(2, cores=6, poll_interval=0.2, log_dir=str(tmp_path))  # 8 slots: one fits
        thread = launch_in_background(m)
        until(lambda: "SGE says" in m.explain())
        text = m.explain()
        assert "reason" in text and "smp" in text  # the parallel environment's slots are taken
        cm.shutdown()
        thread.join(60)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _fails():
    raise ValueError("bad input 42")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERMGR_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    for s in list_sessions():
        if s["state"] in ("running", "starting"):
            attach_session(s["id"]).end()


def test_a_session_explains_its_pending_jobs_and_a_failed_task(home, tmp_path):
    start("slurm")
    factory = functools.partial(SlurmManager, cores=6, poll_interval=0.2, log_dir=str(tmp_path))
    s = start_session(manager=factory, nworkers=2, nowait=True)
    try:
        s.wait_for_workers(1, timeout=120)
        until(lambda: "reason: Resources" in s.explain())
        assert "workers: 1 joined" in s.explain()
        task = s.submit(_fails)
        until(lambda: s.status().failed == 1)
        text = s.explain(task)
        assert text.startswith(f"task {task}: failed, 1 attempt(s)") and "ValueError: bad input 42" in text
        done = subprocess.run([CLI, "explain", s.id, str(task)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "CLUSTERMGR_HOME": str(home)})
        assert done.returncode == 0 and "bad input 42" in done.stdout
        done = subprocess.run([CLI, "explain", s.id], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "CLUSTERMGR_HOME": str(home)})
        assert done.returncode == 0 and "reason: Resources" in done.stdout
    finally:
        s.end()


def test_the_local_manager_explains_what_it_runs(fresh):
    cm.addprocs(1)
    (manager,) = cm.cluster._managers
    assert manager.explain().startswith(f"{manager!r}: {{") and "'running': 1" in manager.explain()

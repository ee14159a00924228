"""HTCManager: units, then the real personal HTCondor pool of the test kit, tests/clusters/htcondor.

The pool runs every job as the unprivileged user ``htcjob``: the workers use the system's
``/usr/bin/python3`` with ``shared_runtime()``'s copy of clustermgr and its dependencies,
and a work folder that user can write, as the module docstring tells users to set up.
"""

import getpass
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from backends import sourced, start

import clustermgr as cm
from clustermgr import LaunchError, ProcessExitedError
from clustermgr.managers.batch import JobState
from clustermgr.managers.htcondor import HTCManager, addprocs_htc, shared_runtime


def test_submit_description_holds_resources_and_no_secret(tmp_path):
    m = HTCManager(3, cores=2, memory="1GB", walltime="0:10:00", job_name="run7",
                   log_dir=str(tmp_path), requirements='OpSys == "LINUX"')
    text = m.submit_description("/x/job.sh", 3)
    for line in ["executable = /x/job.sh", "request_cpus = 2", "request_memory = 1GB",
                 "batch_name = run7", 'requirements = OpSys == "LINUX"', "getenv = CLUSTERMGR_*",
                 'environment = "CLUSTERMGR_TASK=$(Process)"', f'+ClustermgrTag = "{m.tag}"',
                 "queue 3"]:
        assert line in text.splitlines()
    assert "> 600)" in text and "COOKIE" not in text
    assert "${CLUSTERMGR_TASK:-0}" in m.job_script(python="/py", dir="/w")
    with pytest.raises(ValueError, match="H:MM:SS"):
        HTCManager(1, walltime="ten minutes")


def test_status_parsing():
    m = HTCManager(1)
    table = m.parse_status("12.0 2 undefined\n12.1 1 undefined\n12.2 5 Error from slot1: no such file\n")
    assert table == {"12.0": ("Running", ""), "12.1": ("Idle", ""),
                     "12.2": ("Held", "Error from slot1: no such file")}
    assert [m.classify(w) for w in ("Idle", "Running", "Completed", "Removed")] == [
        JobState.PENDING, JobState.RUNNING, JobState.DONE, JobState.FAILED]
    assert m.task_id("12", 2, 3) == "12.2"


@pytest.fixture(scope="module")
def htcondor():
    info = start("htcondor")
    env = sourced(info["HTCONDOR_ENV"])
    saved = dict(os.environ)
    os.environ.update(env)
    work = Path(tempfile.mkdtemp(prefix="cm-", dir=info["HTCONDOR_SCRATCH"]))
    work.chmod(0o777)  # jobs run as htcjob and write their logs here
    runtime = shared_runtime(str(work / "site"))
    yield {"work": str(work), "user": info["HTCONDOR_JOB_USER"],
           "kw": dict(python="/usr/bin/python3", dir=str(work), env={"PYTHONPATH": runtime})}
    left = subprocess.run(["condor_q", "-allusers", "-af:j", "JobStatus"], capture_output=True,
                          text=True).stdout
    os.environ.clear()
    os.environ.update(saved)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    assert not left.strip(), f"jobs left in the HTCondor queue:\n{left}"


def test_three_workers_pmap_and_condor_rm(fresh, htcondor):
    m = HTCManager(3, log_dir=htcondor["work"], poll_interval=0.3)
    t0 = time.monotonic()
    ids = cm.addprocs(m, **htcondor["kw"])
    print(f"addprocs of 3 HTCondor workers: {time.monotonic() - t0:.2f} s")
    assert cm.everywhere(getpass.getuser) == [htcondor["user"]] * 3
    assert cm.pmap(lambda x: x * 2, range(12)) == [x * 2 for x in range(12)]
    victim = ids[1]
    handle = m.handles[int(cm.remotecall_fetch(lambda: os.environ["CLUSTERMGR_TASK"], victim))]
    fut = cm.remotecall(time.sleep, victim, 120)
    subprocess.run(["condor_rm", handle.job_id], check=True, capture_output=True)
    cause = rf"HTCondor job {handle.job_id} .*(Removed|condor_rm)"
    with pytest.raises(ProcessExitedError, match=cause) as info:
        fut.fetch(60)
    assert info.value.worker_id == victim
    assert cm.pmap(abs, [-1, -2]) == [1, 2] and victim not in cm.workers()
    cm.rmprocs(cm.workers())
    assert all(h.ended for h in m.handles)


def test_bad_submit_option_shows_condor_submit_error(fresh, htcondor):
    m = HTCManager(1, log_dir=htcondor["work"], retry_delays=(), requirements="((")
    with pytest.raises(LaunchError, match="condor_submit") as info:
        cm.addprocs(m, **htcondor["kw"])
    assert "ERROR" in str(info.value)


def test_held_job_is_removed_and_reported(fresh, htcondor):
    m = HTCManager(1, log_dir=htcondor["work"], poll_interval=0.3, retry_delays=())
    private = Path(htcondor["work"]) / "private"
    private.mkdir(mode=0o700)  # the job's user cannot enter its initialdir: HTCondor holds it
    kw = dict(htcondor["kw"], dir=str(private))
    with pytest.raises(LaunchError, match="held by HTCondor"):
        cm.addprocs(m, **kw)


def test_function_form(fresh, htcondor):
    ids = addprocs_htc(1, log_dir=htcondor["work"], poll_interval=0.3, timeout=60, **htcondor["kw"])
    assert cm.remotecall_fetch(getpass.getuser, ids[0]) == htcondor["user"]
    cm.rmprocs(ids)

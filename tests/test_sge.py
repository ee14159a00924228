"""SGEManager and QRSHManager: units, then the real Grid Engine of the test kit, tests/clusters/sge."""

import getpass
import os
import subprocess
import time
from pathlib import Path

import pytest
from backends import start
from procs import until

import clustermgr as cm
from clustermgr import LaunchError, ProcessExitedError
from clustermgr.managers.batch import JobState
from clustermgr.managers.sge import QRSHManager, SGEManager

RECORDED = (Path(__file__).parent / "data" / "sge_outputs.txt").read_text()


def test_job_script_and_submit_command(tmp_path):
    m = SGEManager(3, cores=2, memory="1G", walltime="1:00:00", queue="all.q",
                   qsub_flags=["-P", "proj"], wd="/scratch", log_dir=str(tmp_path))
    lines = m.job_script(python="/py", dir="/w").splitlines()
    launch = 'export CLUSTERMGR_LAUNCH_ID="${CLUSTERMGR_LAUNCH_ID:-LAUNCH-$(( ${SGE_TASK_ID:-1} - 1 ))}"'
    for line in ["#$ -N clustermgr", "#$ -S /bin/bash", "#$ -pe smp 2", "#$ -l h_vmem=1G",
                 "#$ -l h_rt=1:00:00", "#$ -q all.q", launch]:
        assert line in lines
    argv = m.submit_argv("job.sh", 3, "tag")
    assert argv[:6] == ["qsub", "-terse", "-V", "-t", "1-3", "-j"]
    assert argv[-5:] == ["-wd", "/scratch", "-P", "proj", "job.sh"]
    assert "cd /scratch" in lines and "cd /w" not in lines  # one working folder: the wd= given
    assert "cd /w" in SGEManager(1).job_script(python="/py", dir="/w").splitlines()
    assert "COOKIE" not in "\n".join(lines)


def test_recorded_outputs():
    import re

    assert re.search(SGEManager.job_id_regexp, "1.1-10:1").group("job_id") == "1"
    assert re.search(SGEManager.job_id_regexp, "12").group("job_id") == "12"
    m = SGEManager(1)
    table = m.parse_status(RECORDED.split("root (8 slots):\n")[1])
    assert table == {"1.1": ("r", ""), "1.8": ("r", ""), "1.9": ("qw", ""), "1.10": ("qw", "")}
    assert m.task_id("1", 0, 10) == "1.1"
    assert [m.classify(w) for w in ("qw", "hqw", "r", "t", "dr", "Eqw")] == [
        JobState.PENDING, JobState.PENDING, JobState.RUNNING, JobState.RUNNING,
        JobState.RUNNING, JobState.FAILED]


def test_qrsh_command_is_one_quoted_string():
    from clustermgr.managers.base import LaunchSpec

    q = QRSHManager(2, qsub_flags=["-l", "h_vmem=1G"])
    spec = LaunchSpec("tcp://127.0.0.1:1", b"s", "/w", {}, "/my py", [], False, lambda *a: None)
    argv = q.worker_command(spec, 1)
    assert argv[:5] == ["qrsh", "-now", "no", "-V", "-cwd"] and len(q.name(1)) <= 10
    assert argv[-1] == "'/my py' -m clustermgr.worker" and argv[-3:-1] == ["-l", "h_vmem=1G"]
    with pytest.raises(ValueError):
        QRSHManager(0)


@pytest.fixture(scope="module")
def sge():
    env = start("sge")
    saved = dict(os.environ)
    os.environ.update(env)
    yield env
    left = subprocess.run(["qstat", "-u", getpass.getuser()], capture_output=True, text=True).stdout
    os.environ.clear()
    os.environ.update(saved)
    assert not left.strip(), f"jobs left in the Grid Engine queue:\n{left}"


def free_slots():
    out = subprocess.run(["qstat", "-g", "c"], capture_output=True, text=True, check=True).stdout
    row = next(line.split() for line in out.splitlines() if line.startswith("all.q"))
    return int(row[4])  # CLUSTER QUEUE, CQLOAD, USED, RES, AVAIL, TOTAL, ...


def job_of(wid, task=True):
    env = cm.remotecall_fetch(lambda: dict(os.environ), wid)
    return f"{env['JOB_ID']}.{env['SGE_TASK_ID']}" if task else env["JOB_ID"]


@pytest.mark.parametrize("make", [lambda n, **kw: SGEManager(n, poll_interval=0.5, **kw),
                                  lambda n, **kw: QRSHManager(n, poll_interval=0.5)],
                         ids=["qsub", "qrsh"])
def test_four_workers_pmap_and_qdel(fresh, sge, make):
    m = make(4)
    ids = cm.addprocs(m)
    jobs = cm.everywhere(lambda: os.environ["JOB_ID"])
    assert len(jobs) == 4 and all(j.isdigit() for j in jobs)
    assert cm.pmap(lambda x: x + 1, range(10)) == list(range(1, 11))
    victim = ids[0]
    job = job_of(victim, task=isinstance(m, SGEManager))  # ask before the worker gets busy
    fut = cm.remotecall(time.sleep, victim, 120)
    subprocess.run(["qdel", job], check=True, capture_output=True)
    with pytest.raises(ProcessExitedError, match="qacct: failed 100 : assumedly after job") as info:
        fut.fetch(60)
    assert info.value.worker_id == victim
    assert cm.pmap(abs, [-1, -2]) == [1, 2] and victim not in cm.workers()
    cm.rmprocs(cm.workers())


def test_more_workers_than_slots_wait_without_tripping_the_join_timeout(fresh, sge):
    slots = free_slots()
    m = SGEManager(slots + 2, queue_timeout=6, poll_interval=0.5)
    with pytest.raises(LaunchError) as info:
        cm.addprocs(m, timeout=2)
    assert str(info.value).count("still qw after queue_timeout=6 s") == 2
    assert "did not join" not in str(info.value) and len(info.value.joined) == slots
    cm.rmprocs(info.value.joined)


def test_qrsh_workers_waiting_for_a_slot_do_not_trip_the_join_timeout(fresh, sge):
    import threading

    slots = free_slots()
    blockers = cm.addprocs(SGEManager(slots, poll_interval=0.5))  # the queue is now full
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("ids", cm.addprocs(
        QRSHManager(1, poll_interval=0.3), timeout=2)))
    t.start()
    t.join(5)  # well past the 2 s join timeout: the qrsh job is still waiting for a slot
    assert t.is_alive()
    cm.rmprocs(blockers[0])  # a slot frees: the waiting worker runs and joins
    t.join(60)
    assert len(got["ids"]) == 1
    cm.rmprocs(cm.workers())


def test_bad_native_option_shows_the_qsub_error(fresh, sge):
    with pytest.raises(LaunchError, match="qsub"):
        cm.addprocs(SGEManager(1, qsub_flags=["-l", "nosuchresource=1"], retry_delays=()))


def test_function_forms(fresh, sge):
    from clustermgr.managers.sge import addprocs_qrsh, addprocs_sge

    ids = addprocs_sge(1, timeout=60, poll_interval=0.5) + addprocs_qrsh(1, timeout=60)
    assert len(ids) == 2 and all(j.isdigit() for j in cm.everywhere(lambda: os.environ["JOB_ID"]))
    cm.rmprocs(ids)


# --- adapt on the real Grid Engine (the rules themselves: test_adaptive.py) -----------------

def nap(seconds):
    time.sleep(seconds)
    return cm.myid()


def test_adapt_grows_from_zero_with_the_load_and_back_when_idle(fresh, sge):
    a = cm.adapt(SGEManager(1, poll_interval=0.5), 0, 2, idle_timeout=3, wait=0.5, interval=0.5)
    where = cm.pmap(nap, [0.5] * 16)
    assert 1 not in where and a.stats.joined == 2
    assert a.stats.submissions == 1 and a.stats.workers_requested == 2  # one array of 2
    until(lambda: a.workers() == [] and not our_jobs(), timeout=60)
    assert a.stats.retired == 2 and a.stats.cancelled == 0
    a.stop()


def test_adapt_drains_and_replaces_workers_before_their_h_rt(fresh, sge):
    # h_rt of one minute (the manager's walltime), a map of 80 s of work on 2 workers, no
    # retry_delays: each worker is drained before its end and replaced in time
    m = SGEManager(1, walltime="0:1:0", poll_interval=0.5)
    assert m.walltime_seconds == 60
    a = cm.adapt(m, 2, 2, drain=15, interval=0.5)
    until(lambda: len(a.workers()) == 2, timeout=60)
    first = a.workers()
    where = cm.pmap(nap, [1.0] * 160, retry_delays=())
    assert len(where) == 160
    draining = cm.cluster.master().draining
    assert a.stats.drained >= 2 and all(w not in a.workers() or w in draining for w in first)
    a.stop()
    cm.shutdown()
    until(lambda: not our_jobs(), timeout=60)


def our_jobs():
    return subprocess.run(["qstat", "-u", getpass.getuser()], capture_output=True, text=True).stdout.strip()

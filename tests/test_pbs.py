"""PBSManager: units, then the real Slurm's Torque qsub/qstat/qdel wrappers (Torque dialect)."""

import getpass
import os
import subprocess
import time
from pathlib import Path

import pytest
from backends import start

import clustermgr as cm
from clustermgr import ProcessExitedError
from clustermgr.managers.batch import JobState
from clustermgr.managers.pbs import PBSManager, short_id

RECORDED = (Path(__file__).parent / "data" / "pbs_outputs.txt").read_text()


def test_job_scripts_per_dialect(tmp_path):
    torque = PBSManager(2, dialect="torque", cores=4, memory="2gb", walltime="01:00:00",
                        queue="batch", account="proj", log_dir=str(tmp_path))
    lines = torque.job_script(python="/py", dir="/w").splitlines()
    for line in ["#PBS -N clustermgr", "#PBS -l nodes=1:ppn=4", "#PBS -l mem=2gb",
                 "#PBS -l walltime=01:00:00", "#PBS -q batch", "#PBS -A proj",
                 'export CLUSTERMGR_LAUNCH_ID="${CLUSTERMGR_LAUNCH_ID:-LAUNCH-${PBS_ARRAYID:-0}}"']:
        assert line in lines
    pro = PBSManager(2, dialect="pro", cores=4, memory="2gb", gpus=1, use_array=True)
    text = pro.job_script()
    assert "#PBS -l select=1:ncpus=4:mem=2gb:ngpus=1" in text and "PBS_ARRAY_INDEX" in text
    assert pro.submit_argv("s.sh", 2, "t")[-3:] == ["-J", "0-1", "s.sh"]
    assert torque.submit_argv("s.sh", 1, "t")[:5] == ["qsub", "-V", "-j", "oe", "-o"]
    with pytest.raises(ValueError, match="dialect"):
        PBSManager(1, dialect="lsf")


def test_ids_and_states_from_recorded_outputs():
    import re

    assert re.search(PBSManager.job_id_regexp, "274").group("job_id") == "274"
    assert re.search(PBSManager.job_id_regexp, "123.server.example").group("job_id") == "123.server.example"
    assert re.search(PBSManager.job_id_regexp, "123[].pbs01").group("job_id") == "123[].pbs01"
    assert short_id("123[4].server") == "123[4]" and short_id("274") == "274"
    m = PBSManager(1, dialect="torque")
    table = m.parse_status(RECORDED.replace("root", getpass.getuser()))
    assert table["275"] == ("R", "") and table["274"] in {("R", ""), ("C", "")}
    assert PBSManager.states["Q"] is JobState.PENDING and PBSManager.states["C"] is JobState.DONE


@pytest.fixture(scope="module")
def torque():
    info = start("slurm")
    saved = os.environ["PATH"]
    os.environ["PATH"] = f"{info['SLURM_TORQUE_BIN']}:{saved}"
    yield
    os.environ["PATH"] = saved
    left = subprocess.run(["squeue", "--noheader", f"--user={getpass.getuser()}", "--name=clustermgr"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert not left, f"jobs left in the queue: {left}"


def test_four_workers_through_qsub(fresh, torque):
    m = PBSManager(4, poll_interval=0.5)
    assert m.dialect == "torque"
    ids = cm.addprocs(m)
    jobs = cm.everywhere(lambda: os.environ.get("PBS_JOBID"))
    assert len(set(jobs)) == 4 and all(j.isdigit() for j in jobs)
    assert sorted(jobs) == sorted(h.job_id for h in m.handles)
    assert cm.pmap(lambda x: -x, range(8)) == [-x for x in range(8)]
    cm.rmprocs(ids)


def test_qdel_fails_the_outstanding_call(fresh, torque):
    m = PBSManager(2, poll_interval=0.5)
    a, b = cm.addprocs(m)
    job = cm.remotecall_fetch(lambda: os.environ["PBS_JOBID"], a)
    fut = cm.remotecall(time.sleep, a, 120)
    subprocess.run(["qdel", job], check=True)
    with pytest.raises(ProcessExitedError, match=f"PBS job {job} ended in state C") as info:
        fut.fetch(60)
    assert "CANCELLED" in info.value.log_tail  # the scheduler's own notice in the job's log
    assert cm.remotecall_fetch(cm.myid, b) == b
    cm.rmprocs(b)


def test_more_workers_than_slots_wait_in_the_queue(fresh, torque):
    idle = int(subprocess.run(["sinfo", "--noheader", "--format=%C"], capture_output=True,
                              text=True, check=True).stdout.split("/")[1])
    m = PBSManager(idle + 1, queue_timeout=6, poll_interval=0.5)
    with pytest.raises(cm.LaunchError, match=r"still Q after queue_timeout=6 s") as info:
        cm.addprocs(m, timeout=2)
    assert "did not join" not in str(info.value) and len(info.value.joined) == idle
    cm.rmprocs(info.value.joined)


def test_submit_error_shows_qsub_text(fresh, torque):
    with pytest.raises(cm.LaunchError, match="qsub.*exited with code"):
        cm.addprocs(PBSManager(1, qsub_flags=["-k", "oe"], retry_delays=()))


# --- PBS Pro dialect, against the fake CLI kit in tests/fakes/pbspro (NOT a real PBS Pro) ----

FAKE_BIN = Path(__file__).parent / "fakes" / "pbspro" / "bin"


@pytest.fixture
def pbspro(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PBS_HOME", str(tmp_path / "fakepbs"))
    yield
    left = subprocess.run(["qstat"], capture_output=True, text=True).stdout
    assert not left.strip(), f"jobs left in the fake PBS Pro queue:\n{left}"


@pytest.mark.parametrize("use_array", [True, False], ids=["array", "jobs"])
def test_pbspro_workers_pmap_and_qdel(fresh, pbspro, use_array):
    m = PBSManager(3, use_array=use_array, poll_interval=0.3)
    assert m.dialect == "pro"  # detected from qstat --version
    ids = cm.addprocs(m)
    env = cm.everywhere(lambda: (os.environ["PBS_JOBID"], os.environ.get("PBS_ARRAY_INDEX")))
    if use_array:
        assert sorted(i for _, i in env) == ["0", "1", "2"] and all("[" in j for j, _ in env)
    assert cm.pmap(lambda x: x * 10, range(6)) == [0, 10, 20, 30, 40, 50]
    victim = ids[0]
    job = cm.remotecall_fetch(lambda: os.environ["PBS_JOBID"], victim)
    fut = cm.remotecall(time.sleep, victim, 120)
    subprocess.run(["qdel", job], check=True)
    with pytest.raises(ProcessExitedError, match="Exit_status 271: killed by signal 15"):
        fut.fetch(60)
    assert victim not in cm.workers() and cm.pmap(abs, [-4]) == [4]
    cm.rmprocs(cm.workers())


def test_pbspro_queue_limit_and_bad_option(fresh, pbspro, monkeypatch):
    monkeypatch.setenv("FAKE_PBS_SLOTS", "2")
    with pytest.raises(cm.LaunchError, match="still Q after queue_timeout=3 s") as info:
        cm.addprocs(PBSManager(3, use_array=True, queue_timeout=3, poll_interval=0.3), timeout=1)
    assert len(info.value.joined) == 2
    cm.rmprocs(info.value.joined)
    with pytest.raises(cm.LaunchError, match="Unknown resource Resource_List.foo"):
        cm.addprocs(PBSManager(1, qsub_flags=["-l", "foo=1"], retry_delays=()))


def test_function_form(fresh, torque):
    from clustermgr.managers.pbs import addprocs_pbs

    ids = addprocs_pbs(1, timeout=60, poll_interval=0.5)
    assert cm.everywhere(lambda: os.environ["PBS_JOBID"].isdigit()) == [True]
    cm.rmprocs(ids)

"""LSFManager against the fake LSF command line kit in tests/fakes/lsf (NOT a real LSF:
no LSF installs here; the fake prints LSF 10.1's formats and exit codes, see its docstring).
``ssh_cmd`` goes through the real sshd of the test kit, tests/clusters/ssh."""

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
from backends import start

import clustermgr as cm
from clustermgr import LaunchError, ProcessExitedError
from clustermgr.managers.batch import JobState
from clustermgr.managers.lsf import LSFManager, addprocs_lsf, exponential_backoff

FAKE_BIN = Path(__file__).parent / "fakes" / "lsf" / "bin"


def test_script_submit_command_and_defaults(tmp_path):
    m = LSFManager(3, cores=2, memory="4G", walltime="30", queue="short", bsub_flags=["-R", "span[hosts=1]"],
                   log_dir=str(tmp_path))
    lines = m.job_script(python="/py", dir="/w").splitlines()
    for line in ["#BSUB -n 2", "#BSUB -M 4G", "#BSUB -W 30", "#BSUB -q short",
                 'export CLUSTERMGR_LAUNCH_ID='
                 '"${CLUSTERMGR_LAUNCH_ID:-LAUNCH-$(( ${LSB_JOBINDEX:-1} - 1 ))}"']:
        assert line in lines
    argv = m.submit_argv("job.sh", 3, "tag")
    assert argv[:3] == ["bsub", "-J", "clustermgr[1-3]"] and argv[-2:] == ["-R", "span[hosts=1]"]
    assert m.retry_delays == exponential_backoff() == [1, 2, 4, 8, 16, 32]
    assert m.task_id("77", 0, 3) == "77[1]"


def test_status_parsing():
    m = LSFManager(1)
    table = m.parse_status("77|1|RUN|-|-\n77|2|PEND|-|Job slot limit reached\n"
                           "77|3|EXIT|143|-\n78|0|DONE|-|-\n")
    assert table == {"77[1]": ("RUN", ""), "77[2]": ("PEND", "Job slot limit reached"),
                     "77[3]": ("EXIT", "exit code 143"), "78": ("DONE", "")}
    assert [m.classify(w) for w in ("PEND", "RUN", "DONE", "EXIT", "SSUSP")] == [
        JobState.PENDING, JobState.RUNNING, JobState.DONE, JobState.FAILED, JobState.PENDING]


@pytest.fixture
def lsf(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LSF_HOME", str(tmp_path / "fakelsf"))
    yield tmp_path / "fakelsf"
    left = subprocess.run(["bjobs"], capture_output=True, text=True)
    assert not left.stdout.strip(), f"jobs left in the fake LSF:\n{left.stdout}"


@pytest.mark.parametrize("use_array", [True, False], ids=["array", "jobs"])
def test_three_workers_pmap_and_bkill(fresh, lsf, use_array):
    m = LSFManager(3, use_array=use_array, throttle=2, poll_interval=0.3)
    ids = cm.addprocs(m)
    env = cm.everywhere(lambda: (os.environ["LSB_JOBID"], os.environ["LSB_JOBINDEX"]))
    assert sorted(i for _, i in env) == (["1", "2", "3"] if use_array else ["0", "0", "0"])
    assert cm.pmap(lambda x: x - 1, range(9)) == list(range(-1, 8))
    victim = ids[2]
    job, index = cm.remotecall_fetch(lambda: (os.environ["LSB_JOBID"], os.environ["LSB_JOBINDEX"]), victim)
    fut = cm.remotecall(time.sleep, victim, 120)
    target = f"{job}[{index}]" if use_array else job
    subprocess.run(["bkill", target], check=True, capture_output=True)
    cause = rf"LSF job {job}.* ended in state EXIT \(exit code 1[34]\d\)"
    with pytest.raises(ProcessExitedError, match=cause) as info:
        fut.fetch(60)
    assert info.value.worker_id == victim
    assert victim not in cm.workers() and cm.pmap(abs, [-3]) == [3]
    cm.rmprocs(cm.workers())


def test_bad_option_fails_at_once_with_the_bsub_error(fresh, lsf, caplog):
    caplog.set_level(logging.WARNING, logger="clustermgr")
    with pytest.raises(LaunchError, match="nosuchqueue: No such queue. Job not submitted."):
        cm.addprocs(LSFManager(1, bsub_flags=["-q", "nosuchqueue"]))
    with pytest.raises(LaunchError, match="bsub: illegal option -- k"):
        cm.addprocs(LSFManager(1, bsub_flags=["-k"]))
    assert not any("retrying" in r.message for r in caplog.records)  # no retry can fix those


def test_submission_retries_with_back_off_while_lsf_is_down(fresh, lsf, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="clustermgr")
    monkeypatch.setenv("FAKE_LSF_DOWN_FOR", "3")  # down for longer than the two retries
    with pytest.raises(LaunchError, match="LIM is down"):
        cm.addprocs(LSFManager(1, retry_delays=(0.01, 0.01)))
    (lsf / "down").unlink()
    monkeypatch.setenv("FAKE_LSF_DOWN_FOR", "2")
    caplog.clear()
    ids = cm.addprocs(LSFManager(1, retry_delays=exponential_backoff(3, first=0.05), poll_interval=0.3))
    retries = [r.message for r in caplog.records if "LSF submit failed, retrying" in r.message]
    assert len(retries) == 2 and "in 0.05 s" in retries[0] and "in 0.1 s" in retries[1]
    assert "LIM is down" in retries[0]
    cm.rmprocs(ids)


def test_ssh_cmd_submits_from_another_host_without_the_secret_in_argv(fresh, lsf, monkeypatch):
    ssh = start("ssh")
    spy = lsf.parent / "argv.log"
    ssh_cmd = ["ssh", "-p", ssh["SSH_PORT"], "-i", ssh["SSH_KEY"], "-o", "BatchMode=yes",
               "-o", f"UserKnownHostsFile={ssh['SSH_KNOWN_HOSTS']}", f"{ssh['SSH_USER']}@{ssh['SSH_HOST']}",
               "env", f"PATH={FAKE_BIN}:/usr/bin:/bin", f"FAKE_LSF_HOME={lsf}"]
    # a local `ssh` that records its argv, then runs the real one
    wrapper = lsf.parent / "bin"
    wrapper.mkdir()
    (wrapper / "ssh").write_text(f'#!/bin/sh\necho "$@" >> {spy}\nexec /usr/bin/ssh "$@"\n')
    (wrapper / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper}:{os.environ['PATH']}")
    monkeypatch.delenv("FAKE_LSF_HOME")  # only the remote side knows where the fake spool is
    m = LSFManager(2, ssh_cmd=ssh_cmd, poll_interval=0.3)
    ids = cm.addprocs(m, timeout=60)
    assert cm.pmap(lambda x: x * 3, [1, 2]) == [3, 6]
    cm.rmprocs(ids)
    from clustermgr.cluster import master

    assert master().secret.hex() not in spy.read_text()
    assert "bsub" in spy.read_text() and "bjobs" in spy.read_text()
    monkeypatch.setenv("FAKE_LSF_HOME", str(lsf))  # for the fixture's leak check


def test_function_form(fresh, lsf):
    ids = addprocs_lsf(2, timeout=60, poll_interval=0.3)
    assert sorted(cm.everywhere(lambda: os.environ["LSB_JOBINDEX"])) == ["1", "2"]
    cm.rmprocs(ids)

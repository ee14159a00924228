"""SlurmManager: units against recorded outputs, then the real Slurm of the test kit, tests/clusters/slurm."""

import getpass
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from backends import start

import clustermgr as cm
from clustermgr import LaunchError, ProcessExitedError
from clustermgr.managers.batch import JobState, SchedulerCommandError, flag, run_command
from clustermgr.managers.slurm import SlurmManager

RECORDED = (Path(__file__).parent / "data" / "slurm_outputs.txt").read_text()


# --- units ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, expected", [
    ("t", "00:5:00", ["-t", "00:5:00"]),            # one letter: -k value
    ("partition", "debug", ["--partition=debug"]),  # longer: --name=value
    ("exclusive", "", ["--exclusive"]),              # "" : bare flag
    ("x", "", ["-x"]),
    ("mem_per_cpu", 100, ["--mem-per-cpu=100"]),     # _ becomes -
    ("exclusive", True, ["--exclusive"]),            # True: bare flag, not --exclusive=True
    ("exclusive", False, []),                        # False / None: no flag
    ("requeue", None, []),
])
def test_keyword_translation(name, value, expected):
    assert flag(name, value) == expected


def test_job_script_renders_options_and_no_secret(tmp_path):
    m = SlurmManager(4, partition="debug", t="00:5:00", mem_per_cpu=100, exclusive="",
                     cores=2, memory="1G", account="proj", gpus=1, log_dir=str(tmp_path),
                     env={"MY_VAR": "a b"})
    script = m.job_script(python="/opt/py/bin/python", dir="/scratch")
    assert script.startswith("#!/bin/bash\n")
    for line in ["#SBATCH --job-name=clustermgr", f"#SBATCH --output={tmp_path}/worker-%A_%a.log",
                 "#SBATCH --cpus-per-task=2", "#SBATCH --mem=1G", "#SBATCH --partition=debug",
                 "#SBATCH --account=proj", "#SBATCH --gpus-per-task=1", "#SBATCH -t 00:5:00",
                 "#SBATCH --mem-per-cpu=100", "#SBATCH --exclusive", "export MY_VAR='a b'",
                 'export CLUSTERMGR_LAUNCH_ID="${CLUSTERMGR_LAUNCH_ID:-LAUNCH-${SLURM_ARRAY_TASK_ID:-0}}"',
                 "cd /scratch",
                 "exec /opt/py/bin/python -m clustermgr.worker"]:
        assert line in script.splitlines()
    assert "COOKIE" not in script
    assert m.submit_argv("job.sh", 4, "tag") == ["sbatch", "--parsable", "--array=0-3", "job.sh"]


def test_a_manager_only_constructed_makes_nothing_and_says_where_logs_go(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERMGR_LOG_DIR", str(tmp_path / "logs"))
    m = SlurmManager(2, exclusive=True, requeue=False)
    script = m.job_script(python="/py", dir="/w")
    assert m.log_dir.startswith(str(tmp_path / "logs") + "/slurm-")
    assert f"# worker logs: {m.log_dir}" in script and "compute nodes" in script
    assert "#SBATCH --exclusive" in script.splitlines()
    assert "requeue" not in script and "True" not in script
    assert not (tmp_path / "logs").exists()  # a dry run leaves nothing behind
    monkeypatch.delenv("CLUSTERMGR_LOG_DIR")
    home = SlurmManager(1).log_dir
    assert home.startswith(os.path.expanduser("~/.cache/clustermgr/jobs/slurm-")) and not os.path.exists(home)


def test_job_ids_from_recorded_outputs():
    import re

    lines = [ln for ln in RECORDED.splitlines() if not ln.startswith("#")]
    assert re.search(SlurmManager.job_id_regexp, "2").group("job_id") == "2"
    assert re.search(SlurmManager.job_id_regexp, "2;cluster").group("job_id") == "2"
    assert "Submitted batch job 1" in lines  # what --parsable avoids having to parse


def test_status_parsing_from_recorded_output():
    m = SlurmManager(1)
    text = RECORDED.split("# squeue")[1].split("\n", 1)[1].split("# after")[0]
    table = m.parse_status(text)
    assert table["2_7"] == ("PENDING", "Resources") and table["1"] == ("RUNNING", "")
    assert SlurmManager.states["PENDING"] is JobState.PENDING
    after = m.parse_status(RECORDED.split("parent id:\n")[1])
    # a cancelled pending task is listed under its array's id
    assert m.array_parent("2_8") == "2" and after["2"][0] == "CANCELLED"
    assert SlurmManager.states["CANCELLED"] is JobState.FAILED


def test_scheduler_command_error_carries_everything():
    with pytest.raises(SchedulerCommandError) as info:
        run_command([sys.executable, "-c", "import sys; print('out'); sys.exit('bad things')"])
    err = info.value
    assert err.returncode == 1 and err.stdout.strip() == "out" and "bad things" in err.stderr
    assert "bad things" in str(err)
    with pytest.raises(SchedulerCommandError, match="command not found"):
        run_command(["no-such-sbatch"])


def test_bad_counts():
    with pytest.raises(ValueError):
        SlurmManager(0)


# --- the real Slurm ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm():
    info = start("slurm")
    yield info
    left = our_jobs()
    assert not left, f"jobs left in the Slurm queue: {left}"


def our_jobs():
    out = subprocess.run(["squeue", "--noheader", f"--user={getpass.getuser()}", "--name=clustermgr",
                          "--format=%i %T"], capture_output=True, text=True, check=True).stdout
    return out.split()


def test_four_workers(fresh, slurm):
    m = SlurmManager(4, partition="debug", t="00:10:00")
    ids = cm.addprocs(m)
    assert len(ids) == 4
    jobs = cm.everywhere(lambda: (os.environ["SLURM_JOB_ID"], os.environ["SLURM_ARRAY_TASK_ID"]))
    assert len({j for j, _ in jobs}) == 4 and sorted(int(t) for _, t in jobs) == [0, 1, 2, 3]
    assert cm.pmap(lambda x: x * x, range(12)) == [x * x for x in range(12)]
    cm.rmprocs(ids)
    assert our_jobs() == []


def test_scancel_fails_the_outstanding_call(fresh, slurm):
    m = SlurmManager(3, poll_interval=0.5)
    a, b, c = cm.addprocs(m)
    env = cm.remotecall_fetch(lambda: dict(os.environ), a)
    job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    fut = cm.remotecall(time.sleep, a, 120)
    subprocess.run(["scancel", job], check=True)
    with pytest.raises(ProcessExitedError, match=f"Slurm job {job} ended in state CANCELLED") as info:
        fut.fetch(60)
    assert info.value.worker_id == a
    assert cm.pmap(abs, [-1, -2, -3]) == [1, 2, 3] and cm.workers() == [b, c]
    cm.rmprocs(b, c)


def idle_cpus():
    allocated, idle, other, total = subprocess.run(
        ["sinfo", "--noheader", "--format=%C"], capture_output=True, text=True, check=True
    ).stdout.split("/")
    return int(idle)


def test_more_workers_than_slots_pend_without_tripping_the_join_timeout(fresh, slurm):
    # two one-CPU workers more than the node has free slots must wait in the queue
    slots = idle_cpus()
    m = SlurmManager(slots + 2, queue_timeout=8, poll_interval=0.5)
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        cm.addprocs(m, timeout=2)
    assert time.monotonic() - t0 > 6  # not the 2 s join timeout: the queue limit ended them
    assert str(info.value).count("still PENDING after queue_timeout=8 s (reason: Resources)") == 2
    assert "did not join" not in str(info.value)
    assert len(info.value.joined) == slots
    cm.rmprocs(info.value.joined)


def test_min_workers_returns_what_made_it(fresh, slurm):
    slots = idle_cpus()
    m = SlurmManager(slots + 2, queue_timeout=3, poll_interval=0.5)
    ids = cm.addprocs(m, min_workers=slots)
    assert len(ids) == slots
    cm.rmprocs(ids)


def test_bad_option_shows_slurm_error(fresh, slurm):
    with pytest.raises(LaunchError, match="invalid partition|Invalid partition"):
        cm.addprocs(SlurmManager(1, partition="nosuchpartition", retry_delays=()))


def test_a_misspelt_flag_is_reported_as_sbatch_says_before_any_worker_is_expected(fresh, slurm, tmp_path,
                                                                                   caplog):
    with pytest.raises(ValueError, match="unrecognized option '--partitoin=debug'"):
        SlurmManager(1, partitoin="debug").validate()  # asks sbatch --test-only, submits nothing
    SlurmManager(2, partition="debug", exclusive=True).validate()
    with pytest.raises(LaunchError, match="unrecognized option '--partitoin=debug'"):
        cm.addprocs(SlurmManager(1, partitoin="debug", log_dir=str(tmp_path)))  # default retries
    assert "retrying" not in caplog.text  # a usage error is not submitted again


INSIDE = textwrap.dedent("""
    import os, sys, clustermgr as cm
    from clustermgr.managers.slurm import SlurmManager
    ids = cm.addprocs(SlurmManager(2))
    steps = cm.everywhere(lambda: os.environ.get("SLURM_STEP_ID"))
    print(os.environ["SLURM_JOB_ID"], len(ids), *steps, flush=True)
""")


def test_inside_an_allocation_workers_are_srun_steps(slurm, tmp_path):
    script = tmp_path / "master.py"
    script.write_text(INSIDE)
    out = tmp_path / "out.txt"
    subprocess.run(["sbatch", "--wait", "--job-name=clustermgr", "-n", "3", f"--output={out}",
                    "--wrap", f"{sys.executable} {script}"], check=True, timeout=120,
                   capture_output=True)
    job, n, *steps = out.read_text().split()[-4:]
    assert n == "2" and all(s.isdigit() for s in steps) and len(set(steps)) == 2


def test_function_form(fresh, slurm):
    from clustermgr.managers.slurm import addprocs_slurm

    ids = addprocs_slurm(2, partition="debug", t="00:05:00", timeout=60, poll_interval=0.5)
    assert len(ids) == 2 and cm.everywhere(lambda: "SLURM_JOB_ID" in os.environ) == [True, True]
    cm.rmprocs(ids)


def test_submit_from_a_missing_folder_says_so(tmp_path):
    from clustermgr.managers.batch import run_command

    with pytest.raises(LaunchError, match="working folder .*/gone does not exist"):
        run_command(["true"], cwd=str(tmp_path / "gone"))

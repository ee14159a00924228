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
from procs import until

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


# --- adapt on the real Slurm (the rules themselves: test_adaptive.py) -----------------------

def nap(seconds):
    time.sleep(seconds)
    return cm.myid()


def test_walltime_parsing_as_slurm_reads_it():
    m = SlurmManager(1)
    assert [m.parse_walltime(t) for t in ("5", "5:30", "1:00:00", "2-3", "1-00:00:10", None)] == \
        [300, 330, 3600, 2 * 86400 + 3 * 3600, 86410, None]
    assert SlurmManager(1, walltime="00:10:00").walltime_seconds == 600


def test_adapt_grows_from_zero_with_the_load_and_back_when_idle(fresh, slurm, tmp_path):
    m = SlurmManager(1, poll_interval=0.5, log_dir=str(tmp_path))
    a = cm.adapt(m, 0, 3, idle_timeout=3, wait=0.5, interval=0.5)
    where = cm.pmap(nap, [0.5] * 24)
    assert 1 not in where and a.stats.joined == 3
    assert a.stats.submissions == 1 and a.stats.workers_requested == 3  # one array of 3
    until(lambda: a.workers() == [] and our_jobs() == [], timeout=60)
    assert a.stats.retired == 3 and a.stats.cancelled == 0
    a.stop()


def test_adapt_cancels_a_job_still_pending_when_the_work_is_done(fresh, slurm, tmp_path):
    # two 6-CPU workers on an 8-CPU node: one runs, the other pends (Resources) until the
    # burst is over; then it is cancelled, not left in the queue
    m = SlurmManager(1, cores=6, poll_interval=0.5, log_dir=str(tmp_path))
    a = cm.adapt(m, 0, 2, idle_timeout=3, wait=0.5, interval=0.5)
    assert len(cm.pmap(nap, [0.5] * 12)) == 12
    assert a.stats.submissions == 1 and a.stats.workers_requested == 2 and a.stats.joined == 1
    until(lambda: our_jobs() == [], timeout=60)
    assert a.stats.cancelled == 1 and a.stats.retired == 1
    a.stop()


def test_adapt_drains_and_replaces_workers_before_their_walltime(fresh, slurm, tmp_path):
    # 1-minute jobs, a map of 80 s of work on 2 workers, no retry_delays: every worker is
    # drained before Slurm's end time and replaced in time; no result is lost, no retry used
    m = SlurmManager(1, walltime="1", poll_interval=0.5, log_dir=str(tmp_path))
    a = cm.adapt(m, 2, 2, drain=15, interval=0.5)
    until(lambda: len(a.workers()) == 2, timeout=60)
    first = a.workers()
    assert all(0 < cm.cluster.master().time_left(w) <= 60 for w in first)  # Slurm's EndTime
    where = cm.pmap(nap, [1.0] * 160, retry_delays=())
    assert len(where) == 160
    draining = cm.cluster.master().draining
    assert a.stats.drained >= 2 and all(w not in a.workers() or w in draining for w in first)
    a.stop()
    cm.shutdown()
    until(lambda: our_jobs() == [], timeout=60)


class Marked(cm.Checkpointable):
    """Counts *n* steps of 50 ms, keeping its progress on itself; writes which worker it
    started on to *path* (so the test knows whom to signal)."""

    def __init__(self, path):
        self.path, self.done, self.where = str(path), 0, []

    def __call__(self, n):
        self.where.append(cm.myid())
        if len(self.where) == 1:
            Path(self.path).write_text(str(cm.myid()))
        while self.done < n:
            time.sleep(0.05)
            self.done += 1
        return self.done, self.where


def test_scancel_signal_drains_the_worker_and_its_task_resumes_from_its_checkpoint(fresh, slurm, tmp_path):
    import threading

    m = SlurmManager(2, preempt_signal="USR1", preempt_warning=60, poll_interval=0.5,
                     log_dir=str(tmp_path / "logs"))
    assert "#SBATCH --signal=B:USR1@60" in m.job_script()
    ids = cm.addprocs(m)
    jobs = dict(zip(ids, cm.everywhere(lambda: "{SLURM_ARRAY_JOB_ID}_{SLURM_ARRAY_TASK_ID}".format(
        **os.environ)), strict=True))  # asked now: a worker running a task answers after it
    out = []
    runner = threading.Thread(target=lambda: out.extend(cm.pmap(Marked(tmp_path / "started"), [200],
                                                                 retry_delays=())))
    runner.start()
    until(lambda: (tmp_path / "started").exists())
    first = int((tmp_path / "started").read_text())
    subprocess.run(["scancel", "--batch", "--signal=USR1", jobs[first]], check=True)
    runner.join(60)
    [(steps, where)] = out
    assert steps == 200 and where[0] == first and len(where) == 2  # resumed, not restarted
    until(lambda: first not in cm.workers())  # it left once its task was handed over
    assert cm.cluster.master().dead[first].infrastructure == "it was preempted (SIGUSR1)"
    cm.shutdown()
    until(lambda: our_jobs() == [], timeout=60)


"""The clustermgr command, run as a user runs it."""

import os
import shutil
import subprocess
import sys

CLI = shutil.which("clustermgr", path=os.path.dirname(sys.executable)) or "clustermgr"


def run(*args, timeout=120):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_demo_runs_a_real_job():
    done = run("demo", "-n", "2", "--limit", "50000", "--chunk", "5000")
    assert done.returncode == 0, done.stderr
    assert "started 2 local workers" in done.stdout
    assert "5133 primes below 50,000" in done.stdout
    assert done.stdout.count("worker ") >= 2 and "what ran where" in done.stdout
    assert "100%" in done.stderr  # the progress bar


def test_help_and_worker_help():
    assert run("--help").returncode == 0
    done = run("worker", "--help")
    assert done.returncode == 0 and "--connect" in done.stdout and "--cookie-file" in done.stdout


def test_worker_subcommand_needs_a_secret():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERMGR_")}
    done = subprocess.run([CLI, "worker", "--connect", "127.0.0.1:9"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 2 and "CLUSTERMGR_COOKIE" in done.stderr

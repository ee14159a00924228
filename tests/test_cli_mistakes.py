"""A newcomer's mistakes with sessions and the command line, through real subprocesses:
each gets one line that says what to do, the right exit code, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import clustermgr as cm
from clustermgr.session import SessionError, attach_session, list_sessions, resume_session, start_session

CLI = str(Path(sys.executable).with_name("clustermgr"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    root = tmp_path / "home"
    monkeypatch.setenv("CLUSTERMGR_HOME", str(root))
    yield root
    alive = [s["id"] for s in list_sessions() if s["state"] in ("running", "starting")]
    for sid in alive:
        attach_session(sid).end()
    assert not alive, f"sessions left running: {alive}"


def cli(home: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "CLUSTERMGR_HOME": str(home), **env})


def one_line(done: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


def sessions(home: Path) -> list[str]:
    folder = home / "sessions"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("argv, words", [
    (["run", "-r", "mem=4g", "-c", "pass"], ["scheduler manager"]),
    (["run", "--manager", "nosuch", "-c", "pass"], ["unknown manager 'nosuch'", "slurm"]),
    (["run", "nosuch_script.py"], ["no script", "nosuch_script.py"]),
    (["run", "-n", "0", "-c", "pass"], ["-n must be at least 1"]),
    (["run", "-r", "mem4g", "-c", "pass"], ["KEY=VALUE", "walltime"]),
    (["run", "--manager", "slurm", "-r", "cpu=four", "-c", "pass"], ["whole number"]),
    (["run"], ["exactly one of"]),
])
def test_a_run_that_cannot_start_is_a_usage_error_and_leaves_no_session(home, argv, words):
    one_line(cli(home, *argv), 2, *words)
    assert sessions(home) == []
    assert cli(home, "ps", "--all").stdout.strip().count("\n") == 0  # the header only


def test_start_session_checks_everything_before_creating_anything(home, tmp_path):
    with pytest.raises(ValueError, match="unknown manager"):
        start_session(manager="nosuch")
    with pytest.raises(ValueError, match="need a scheduler manager"):
        start_session(resources={"mem": "4g"})
    with pytest.raises(ValueError, match="cannot read"):
        start_session(files=[str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="nworkers"):
        start_session(nworkers=-1)
    assert sessions(home) == []


def test_whatever_ps_lists_rm_removes_and_resume_refuses_a_broken_folder(home):
    ghost = home / "sessions" / "20260101-000000-abcdef"
    ghost.mkdir(parents=True)
    (ghost / "name").write_text("ghost")
    listed = cli(home, "ps")
    assert "20260101-000000-abcdef" in listed.stdout and "broken" in listed.stdout
    assert "None" not in listed.stdout
    one_line(cli(home, "session", "resume", "ghost"), 1, "never started", "clustermgr rm")
    assert not ghost.with_name("x").exists()
    done = cli(home, "rm", "ghost")
    assert done.returncode == 0, done.stderr
    assert sessions(home) == []


def test_two_live_sessions_cannot_share_a_name_and_a_name_means_the_live_one(home):
    first = start_session(name="job", nworkers=1)
    with pytest.raises(SessionError, match=f"a session named 'job' is running \\({first.id}\\)"):
        start_session(name="job", nworkers=1)
    done = cli(home, "run", "--name", "job", "-c", "pass")
    one_line(done, 1, "a session named 'job' is running")
    first.end()
    second = start_session(name="job", nworkers=1)  # the name is free once the first ended
    try:
        assert attach_session("job").id == second.id
        assert cli(home, "status", "job").stdout.startswith(f"session job ({second.id}) running")
    finally:
        second.end()
    one_line(cli(home, "status", "job"), 1, "matches several sessions")  # two ended: say which


def test_status_shows_the_workers_there_are(home):
    s = start_session(nworkers=2)
    assert ", 2 workers:" in cli(home, "status", s.id).stdout
    s.scale(1)
    deadline = time.monotonic() + 60
    while ", 1 workers:" not in cli(home, "status", s.id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)  # the daemon removes the worker in the background
    s.end()
    assert ", 0 workers:" in cli(home, "status", s.id).stdout
    dead = start_session(nworkers=1)
    psutil.Process(int(json.loads((dead.dir / "credential").read_text())["pid"])).kill()
    deadline = time.monotonic() + 30
    while "dead" not in cli(home, "status", dead.id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)  # the daemon's exit is another process's
    assert ", 0 workers:" in cli(home, "status", dead.id).stdout
    dead.end()  # marks it ended; its workers leave on their own (master_grace)


def test_an_unwritable_home_is_one_line(tmp_path):
    # /sys refuses new folders even to root: an unwritable CLUSTERMGR_HOME whoever runs the test
    done = subprocess.run([CLI, "ps"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CLUSTERMGR_HOME": "/sys/clustermgr-test-home"})
    one_line(done, 1, "cannot use '/sys/clustermgr-test-home'", "CLUSTERMGR_HOME at a folder you can write")


def test_logs_program_shows_what_the_program_printed(home):
    done = cli(home, "run", "--rm", "-n", "1", "-c", "print('hello from the program')")
    assert done.returncode == 0, done.stderr
    sid = list_sessions()[0]["id"]
    assert "hello from the program" in cli(home, "logs", sid, "--program").stdout
    assert "--program" in cli(home, "logs", "--help").stdout


def test_usage_errors_exit_2_and_version(home):
    s = start_session(nworkers=1)
    try:
        one_line(cli(home, "extend", s.id, "0"), 2, "positive number of seconds")
        one_line(cli(home, "extend", s.id, "-5"), 2, "positive number of seconds")
        one_line(cli(home, "scale", s.id, "-1"), 2, "0 or more")
    finally:
        s.end()
    done = cli(home, "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"clustermgr {cm.__version__}"
    one_line(cli(home, "demo", "-n", "-2"), 2, "-n must be at least 1")


def test_environment_problems_are_one_line(home, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    one_line(cli(home, "ps", CLUSTERMGR_HOME=str(not_a_folder)), 1, "is not a folder", "CLUSTERMGR_HOME")
    done = subprocess.run([CLI, "worker", "--connect", "127.0.0.1"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "CLUSTERMGR_COOKIE": "ab" * 32})
    one_line(done, 2, "has no port", "HOST:PORT")
    debug = cli(home, "--debug", "ps", CLUSTERMGR_HOME=str(not_a_folder))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_logs_follow_of_a_removed_session_ends_with_one_line(home):
    s = start_session(nworkers=1)
    daemon = psutil.Process(int(json.loads((s.dir / "credential").read_text())["pid"]))
    follow = subprocess.Popen([CLI, "logs", s.id, "-f"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "CLUSTERMGR_HOME": str(home)})
    try:
        assert follow.stdout.readline()  # it follows
        shutil.rmtree(s.dir)  # removed under it while the daemon still runs
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
        daemon.terminate()  # SIGTERM: the daemon ends its workers and leaves
        daemon.wait(60)
    assert follow.returncode == 1 and "Traceback" not in err, (out[-500:], err)
    said = f"clustermgr logs: session {s.id} was removed while its log was followed"
    assert err.strip().splitlines() == [said]


def _run_and_interrupt(home: Path, *flags: str, twice: bool = False) -> tuple[subprocess.Popen, str]:
    argv = [CLI, "run", "-n", "1", *flags, "--exec", "echo started; exec sleep 300"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "CLUSTERMGR_HOME": str(home)})
    assert p.stdout.readline().strip() == "started"  # the program runs
    p.send_signal(signal.SIGINT)
    if twice:
        time.sleep(0.03)
        p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=90)
    return p, err


def _sleepers(home: Path) -> list[psutil.Process]:
    """The `sleep 300` of this test's session (its environment names the test's home)."""
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            ours = proc.info["cmdline"] == ["sleep", "300"]
            if ours and proc.environ().get("CLUSTERMGR_HOME") == str(home):
                out.append(proc)
        except psutil.Error:
            pass
    return out


def test_ctrl_c_on_run_detaches_and_says_how_to_follow(home):
    p, err = _run_and_interrupt(home)
    assert p.returncode == 130 and "Traceback" not in err
    (s,) = list_sessions()
    assert s["state"] == "running"
    for hint in (f"clustermgr logs {s['id']} --program -f", f"clustermgr attach {s['id']}",
                 f"clustermgr rm {s['id']}"):
        assert hint in err
    assert _sleepers(home)  # the program goes on
    assert cli(home, "rm", s["id"]).returncode == 0
    psutil.wait_procs(_sleepers(home), timeout=30)
    assert not _sleepers(home)  # and rm stopped it


@pytest.mark.parametrize("twice", [False, True])
def test_ctrl_c_on_run_rm_stops_the_program_and_ends_the_session(home, twice):
    p, err = _run_and_interrupt(home, "--rm", twice=twice)
    assert p.returncode == 130 and "Traceback" not in err
    assert "ended" in err.strip().splitlines()[-1]
    (s,) = list_sessions()
    assert s["state"] == "ended"
    psutil.wait_procs(_sleepers(home), timeout=30)
    assert not _sleepers(home)


def test_resume_of_a_session_that_ended_or_runs_is_refused(home):
    s = start_session(nworkers=1)
    with pytest.raises(SessionError, match="is running; nothing to resume"):
        resume_session(s.id)
    s.end()
    with pytest.raises(SessionError, match="has ended"):
        resume_session(s.id)

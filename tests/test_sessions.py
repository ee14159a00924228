"""Sessions: detached daemons, durable tasks, resume after kill -9, and the CLI, each
through real processes (the client in a subprocess where the issue says so)."""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import psutil
import pytest
from procs import until

import clustermgr as cm
from clustermgr.session import SessionError, TaskFailure, attach_session, list_sessions, start_session
from clustermgr.session.client import daemon_alive

CLI = str(Path(sys.executable).with_name("clustermgr"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private CLUSTERMGR_HOME; every session left running at the end is a failure."""
    monkeypatch.setenv("CLUSTERMGR_HOME", str(tmp_path / "home"))
    yield tmp_path / "home"
    alive = [s["id"] for s in list_sessions() if s["state"] in ("running", "starting")]
    for sid in alive:
        attach_session(sid).end()
    assert not alive, f"sessions left running: {alive}"


def python(code: str, env_home: Path, timeout: float = 180) -> str:
    """Run *code* in a new Python process (a client that comes and goes)."""
    env = {**os.environ, "CLUSTERMGR_HOME": str(env_home)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def cli(home: Path, *args: str, timeout: float = 180,
        input: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLUSTERMGR_HOME": str(home)}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=timeout, input=input)


def daemon_pid(s) -> int:
    return int(json.loads((s.dir / "credential").read_text())["pid"])


def wait_gone(pids, timeout=60):
    deadline = time.monotonic() + timeout
    for pid in pids:
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"process {pid} still running"
            time.sleep(0.05)


def slow_square(x):
    import time as t

    t.sleep(0.02)
    return x * x


def test_detached_session_survives_its_client_and_is_collected_elsewhere(home):
    out = python("""
        import clustermgr as cm, time
        def sq(x):
            time.sleep(0.01)
            return x * x
        s = cm.start_session(name="detached", nworkers=2)
        ids = s.map(sq, range(200))
        print(s.id, ids[0], ids[-1])
    """, home)  # the client process exits here
    sid, first, last = out.split()
    s = attach_session("detached")
    assert s.id == sid and s.status().total == 200
    results = s.collect(wait=True, timeout=120)
    assert [results[i] for i in range(int(first), int(last) + 1)] == [x * x for x in range(200)]
    st = s.status()
    assert (st.completed, st.failed, st.progress) == (200, 0, 100.0) and "200/200" in str(st)
    kinds = [e["kind"] for e in s.events()]
    assert kinds[:2] == ["created", "started"] and kinds.count("worker joined") == 2
    pid = daemon_pid(s)
    s.end()
    wait_gone([pid])
    assert s.state() == "ended" and len(s.collect()) == 200  # results stay after the end
    s.cleanup()
    assert not s.dir.exists()


def test_kill_9_of_the_daemon_then_resume_loses_and_duplicates_nothing(home):
    s = start_session(name="durable", nworkers=2)
    ids = s.map(slow_square, range(150))
    deadline = time.monotonic() + 60
    while s.status().completed < 30:
        assert time.monotonic() < deadline and s.status().failed == 0, s.collect()
        time.sleep(0.05)
    pid = daemon_pid(s)
    workers = [p.pid for p in psutil.Process(pid).children(recursive=True)]
    os.kill(pid, signal.SIGKILL)
    wait_gone([pid])
    assert s.state() == "dead"
    with pytest.raises(SessionError, match="resume"):
        attach_session("durable")
    t0 = time.monotonic()
    s2 = attach_session("durable", resume=True)
    resumed = time.monotonic() - t0
    results = s2.collect(wait=True, timeout=180)
    assert sorted(results) == ids and [results[i] for i in ids] == [x * x for x in range(150)]
    st = s2.status()
    assert st.completed == 150 and st.total == 150  # each result stored once
    assert "resumed" in [e["kind"] for e in s2.events()]
    print(f"daemon kill to resumed session: {resumed:.2f} s")
    s2.end()
    wait_gone(workers)  # the old daemon's workers left within their grace period


def test_worker_killed_mid_task_is_retried_and_a_raising_task_reports_its_error(home):
    s = start_session(nworkers=1)
    marker = home / "marker"

    def die_once(path):
        import os as o

        if not o.path.exists(path):
            open(path, "w").close()
            o.kill(o.getpid(), 9)
        return "second try"

    task = s.submit(die_once, str(marker))
    bad = s.submit(lambda: 1 / 0)
    assert s.result(task, timeout=120) == "second try"
    out = s.collect(wait=True, timeout=60)
    assert isinstance(out[bad], TaskFailure) and out[bad].type == "ZeroDivisionError"
    assert "1 / 0" in out[bad].traceback or "division by zero" in out[bad].message
    kinds = [e["kind"] for e in s.events()]
    assert "worker lost" in kinds and "task failed" in kinds
    with pytest.raises(cm.session.TaskFailedError, match="ZeroDivisionError"):
        s.result(bad)
    s.end()


def _square_or_die(x):
    import os as o

    if x == 250:
        o.kill(o.getpid(), 9)  # every time: a task that kills whatever worker runs it
    return x * x


def test_batched_tiny_tasks_are_stored_once_and_a_killer_is_isolated(home):
    # tiny tasks go in batches; when the killer takes its batch down, the batch's other
    # tasks are not charged: they run one per batch next, and only the killer fails
    s = start_session(nworkers=2, max_attempts=2)
    ids = s.map(_square_or_die, range(600))
    out = s.collect(wait=True, timeout=300)
    assert sorted(out) == ids
    killer = ids[250]
    assert isinstance(out[killer], TaskFailure) and out[killer].type == "ProcessExitedError"
    assert all(out[t] == i * i for i, t in enumerate(ids) if t != killer)
    st = s.status()
    assert st.completed == 599 and st.failed == 1 and st.total == 600
    s.end()


def test_map_pickles_the_function_once_and_items_that_need_cloudpickle_still_work(home):
    from clustermgr.session.client import _payload
    from clustermgr.session.daemon import PickledFunction, run_payload

    k = 5
    fn = lambda x: x() if callable(x) else x + k  # noqa: E731 - by value, with a closure
    call = PickledFunction(cloudpickle.dumps(fn))
    plain = _payload(fn, call, 1)
    assert pickle.loads(plain)[0].blob == call.blob  # the function's bytes, pickled once
    needs_cloudpickle = _payload(fn, call, lambda: 7)  # an item the C pickler refuses
    assert [pickle.loads(run_payload(p)[1]) for p in (plain, needs_cloudpickle)] == [6, 7]
    s = start_session(nworkers=1)
    ids = s.map(fn, [1, 2, lambda: 9])
    out = s.collect(wait=True, timeout=120)
    assert [out[i] for i in ids] == [6, 7, 9]
    s.end()


def test_scale_up_and_down_while_tasks_run(home):
    s = start_session(nworkers=1)
    ids = s.map(slow_square, range(120))
    s.scale(3)
    s.wait_for_workers(3, timeout=120)
    s.scale(1)
    results = s.collect(wait=True, timeout=180)
    assert [results[i] for i in ids] == [x * x for x in range(120)]
    scaled = [e for e in s.events() if e["kind"] == "scaled"]
    assert [e["workers"] for e in scaled] == [3, 1]
    assert len(s._request("ping")["workers"]) == 1
    s.end()


def test_idle_workers_are_released_and_come_back_for_new_work(home):
    s = start_session(nworkers=2, release_after=1.0)
    assert s.result(s.submit(abs, -1), timeout=60) == 1
    deadline = time.monotonic() + 60
    while "released" not in [e["kind"] for e in s.events()]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    while s._request("ping")["workers"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert s.result(s.submit(abs, -2), timeout=120) == 2  # workers start again
    s.end()


def test_an_adaptive_session_grows_with_its_tasks_and_lets_idle_workers_go(home):
    s = start_session(adaptive=dict(minimum=0, maximum=2, idle_timeout=1.0, wait=0.2, interval=0.1))
    assert s._request("ping")["workers"] == []  # no task, no worker
    ids = s.map(slow_square, range(200))
    results = s.collect(wait=True, timeout=120)
    assert [results[i] for i in ids] == [x * x for x in range(200)]
    until(lambda: s._request("ping")["workers"] == [], timeout=60)  # idle: retired
    kinds = [e["kind"] for e in s.events()]
    assert "adapting" in kinds and kinds.count("worker joined") == 2
    with pytest.raises(Exception, match="adapts its workers"):
        s.scale(3)
    assert s.result(s.submit(abs, -2), timeout=120) == 2  # it grows again
    s.end()


def test_wrong_credential_or_other_users_cannot_attach(home):
    s = start_session(nworkers=0)
    cred = json.loads((s.dir / "credential").read_text())
    assert oct((s.dir / "credential").stat().st_mode & 0o777) == "0o600"
    assert oct(s.dir.stat().st_mode & 0o777) == "0o700" and oct(home.stat().st_mode & 0o777) == "0o700"
    from clustermgr.session.control import Client

    with pytest.raises(SessionError, match="could not prove|refused"):
        Client(cred["address"], b"\0" * 32, timeout=5)
    out = subprocess.run(  # another (unprivileged) user cannot even read the session's folder
        ["runuser", "-u", "nobody", "--", "ls", str(s.dir)], capture_output=True, text=True)
    assert out.returncode != 0 and "Permission denied" in out.stderr
    s.end()


def test_session_timeouts_and_extend(home):
    s = start_session(nworkers=0, session_timeout=1.5)
    s.extend(2)
    t0 = time.monotonic()
    while s.state() == "running":
        assert time.monotonic() - t0 < 30
        time.sleep(0.1)
    assert time.monotonic() - t0 > 2.5  # 1.5 s idle + 2 s extension
    reasons = [e.get("reason") for e in s.events() if e["kind"] == "ended"]
    assert "session_timeout" in reasons[0]


def test_files_code_files_and_env_reach_the_workers(home, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("payload")
    code = tmp_path / "setup.py"
    code.write_text("GREETING = 'hello from code_files'\n")
    s = start_session(nworkers=1, files=[str(data)], code_files=[str(code)], env={"MY_VAR": "42"})
    tid = s.submit(lambda: (open("data.txt").read(), __import__("__main__").GREETING,
                            __import__("os").environ["MY_VAR"]))
    assert s.result(tid, timeout=60) == ("payload", "hello from code_files", "42")
    s.end()


# --- the command line, through real subprocesses ----------------------------------------

def test_cli_end_to_end(home, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import sys, clustermgr as cm
        print("workers:", len(cm.workers()), "args:", sys.argv[1:])
        print("sum:", sum(cm.pmap(lambda x: x * x, range(10))))
    """))
    done = cli(home, "run", "--rm", "-n", "2", "--name", "clijob", str(script), "a", "b")
    assert done.returncode == 0, done.stderr
    assert "workers: 2 args: ['a', 'b']" in done.stdout and "sum: 285" in done.stdout
    assert cli(home, "run", "--rm", "-c", "raise SystemExit(7)").returncode == 7

    sid = cli(home, "run", "--enqueue-only", "-n", "1", "--name", "bg", "-c", "print('hi')").stdout.strip()
    ps = json.loads(cli(home, "ps", "--json").stdout)
    assert [p["id"] for p in ps] == [sid] and ps[0]["state"] == "running"
    assert "bg" in cli(home, "ps").stdout
    st = json.loads(cli(home, "status", sid, "--json").stdout)
    assert st["id"] == sid and st["state"] == "running"
    assert cli(home, "scale", sid, "2").returncode == 0
    assert cli(home, "extend", sid, "60", "--json").returncode == 0
    session = attach_session(sid)
    session.wait_for_workers(2, timeout=120)
    events = cli(home, "events", sid).stdout
    assert "scaled" in events and "extended" in events and "worker joined" in events
    assert "session daemon" in cli(home, "logs", sid, "-n", "100").stdout
    done = cli(home, "attach", sid, input="print('ATTACHED', session.status().state)\n")
    assert done.returncode == 0 and "ATTACHED running" in done.stdout
    assert cli(home, "status", "nosuch").returncode == 3
    assert "--max-wait" in cli(home, "run", "--help").stdout
    assert cli(home, "rm", sid).returncode == 0
    left = json.loads(cli(home, "ps", "--all", "--json").stdout)
    assert sid not in [p["id"] for p in left]  # removed; the two --rm runs are ended, not removed
    assert sorted(p["state"] for p in left) == ["ended", "ended"]


def test_cli_resume_and_dead_listing(home):
    s = start_session(name="tokill", nworkers=0)
    pid = daemon_pid(s)
    os.kill(pid, signal.SIGKILL)
    wait_gone([pid])
    assert cli(home, "ps", "--dead").stdout.count("tokill") == 1
    assert cli(home, "scale", "tokill", "1").returncode == 4  # its daemon is not running
    done = cli(home, "session", "resume", "tokill", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["seconds"] < 30
    assert daemon_alive(s.dir)
    attach_session("tokill").end()


def test_cli_exec_max_wait_and_following(home):
    done = cli(home, "run", "--rm", "-n", "1", "--exec", "echo from-a-shell; exit 3")
    assert done.returncode == 3 and "from-a-shell" in done.stdout
    env_no_scheduler = "PATH=/usr/bin:/bin"  # no qsub here: the workers cannot start
    done = subprocess.run(["env", env_no_scheduler, f"CLUSTERMGR_HOME={home}", CLI, "run", "--rm",
                           "--manager", "sge", "-n", "1", "--max-wait", "2", "-c", "print('never')"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 5 and "--max-wait=2.0" in done.stderr and "never" not in done.stdout

    s = start_session(name="follow", nworkers=1)
    env = {**os.environ, "CLUSTERMGR_HOME": str(home)}
    logs = subprocess.Popen([CLI, "logs", s.id, "-f", "-n", "5"], stdout=subprocess.PIPE, text=True, env=env)
    events = subprocess.Popen([CLI, "events", s.id, "-f"], stdout=subprocess.PIPE, text=True, env=env)
    assert "session daemon" in logs.stdout.readline()
    assert "created" in events.stdout.readline()
    s.end()  # both follow until the session ends, then exit 0
    assert logs.wait(30) == 0 and events.wait(30) == 0
    assert "ended" in events.stdout.read()

"""DRMAAManager against the real Grid Engine's libdrmaa (the test kit, tests/clusters/sge).

libdrmaa links jemalloc, which needs GLIBC_TUNABLES at process start, so each scenario runs
as a master in a subprocess started with Grid Engine's environment, as a user would run it.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from backends import start

from clustermgr import LaunchError
from clustermgr.managers.drmaa import DRMAAManager, _import_drmaa


@pytest.fixture(scope="module")
def sge_env():
    env = {**os.environ, **start("sge")}
    yield env
    left = subprocess.run(["qstat", "-u", "*"], capture_output=True, text=True, env=env).stdout
    assert not left.strip(), f"jobs left in the Grid Engine queue:\n{left}"


def run_master(code: str, env: dict[str, str], timeout: float = 240) -> dict:
    """Run *code* (which prints one JSON line last) as a master process; its result."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=os.getcwd())
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_resources_belong_in_the_native_specification():
    with pytest.raises(ValueError, match="native_specification"):
        DRMAAManager(2, memory="1G")


def test_missing_library_is_a_clear_launch_error(monkeypatch):
    monkeypatch.delenv("DRMAA_LIBRARY_PATH", raising=False)
    with pytest.raises(LaunchError, match="DRMAA_LIBRARY_PATH"):
        _import_drmaa()


def test_missing_static_tls_tunable_is_explained(sge_env):
    env = {k: v for k, v in sge_env.items() if k != "GLIBC_TUNABLES"}
    out = run_master("""
        import json
        from clustermgr.managers.drmaa import _import_drmaa
        try:
            _import_drmaa()
            print(json.dumps({"error": ""}))
        except Exception as exc:
            print(json.dumps({"error": str(exc)}))
    """, env)
    assert "Start Python with GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096" in out["error"]


def test_three_workers_pmap_terminate_and_bad_native_spec(sge_env):
    out = run_master("""
        import json, os, time
        import clustermgr as cm
        from clustermgr.managers.drmaa import DRMAAManager
        out = {}
        m = DRMAAManager(3, poll_interval=0.3)
        t0 = time.monotonic()
        ids = cm.addprocs(m, env={"MY_SETTING": "on"})
        out["addprocs_s"] = time.monotonic() - t0
        out["tasks"] = sorted(cm.everywhere(lambda: os.environ["SGE_TASK_ID"]))
        out["setting"] = cm.everywhere(lambda: os.environ.get("MY_SETTING"))
        out["pmap"] = cm.pmap(lambda x: x * x, range(10))
        victim = ids[0]
        task = int(cm.remotecall_fetch(lambda: os.environ["SGE_TASK_ID"], victim))
        fut = cm.remotecall(time.sleep, victim, 120)
        m.cancel([m.handles[task - 1].job_id])  # DRMAA's control(TERMINATE)
        try:
            fut.fetch(60)
        except cm.ProcessExitedError as exc:
            out["death"], out["death_wid"] = str(exc), exc.worker_id
        out["victim"] = victim
        out["after"] = cm.pmap(abs, [-1, -2])
        cm.rmprocs(cm.workers())
        out["ended"] = all(h.ended for h in m.handles)
        try:
            cm.addprocs(DRMAAManager(1, native_specification="-l nosuchresource=1", retry_delays=()))
        except cm.LaunchError as exc:
            out["bad"] = str(exc)
        print(json.dumps(out))
    """, sge_env)
    print(f"addprocs of 3 DRMAA workers: {out['addprocs_s']:.2f} s")
    assert out["tasks"] == ["1", "2", "3"] and out["setting"] == ["on"] * 3
    assert out["pmap"] == [x * x for x in range(10)] and out["after"] == [1, 2]
    assert out["death_wid"] == out["victim"]
    assert "DRMAA job" in out["death"] and "ended in state failed" in out["death"]
    assert out["ended"], out
    print(out["death"])
    assert 'unknown resource "nosuchresource"' in out["bad"]

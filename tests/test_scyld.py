"""ScyldManager against the fake Scyld ClusterWare kit in tests/fakes/scyld (NOT a real
Scyld cluster: no BProc here; the fake runs ``bpsh`` commands on this machine)."""

import os
import subprocess
import time
from pathlib import Path

import pytest

import clustermgr as cm
from clustermgr import LaunchError, ProcessExitedError
from clustermgr.managers.scyld import ScyldManager, addprocs_scyld

FAKE_BIN = Path(__file__).parent / "fakes" / "scyld" / "bin"


@pytest.fixture
def scyld(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SCYLD_HOME", str(tmp_path / "fakescyld"))
    monkeypatch.setenv("FAKE_SCYLD_NODES", "3")


def test_worker_command_runs_through_bpsh():
    from clustermgr.managers.base import LaunchSpec

    m = ScyldManager(2)
    m.nodes = ["4", "7"]
    spec = LaunchSpec("tcp://127.0.0.1:1", b"s", "/w d", {}, "/py", [], False, lambda *a: None)
    assert m.worker_command(spec, 1) == ["bpsh", "7", "sh", "-c",
                                         "cd '/w d' && exec /py -m clustermgr.worker"]
    with pytest.raises(ValueError):
        ScyldManager(0)


def test_three_workers_on_three_nodes_pmap_and_node_down(fresh, scyld):
    m = ScyldManager(3)
    ids = cm.addprocs(m)
    assert sorted(m.nodes) == ["0", "1", "2"]
    assert cm.pmap(lambda x: -x, range(5)) == [0, -1, -2, -3, -4]
    victim = ids[0]
    pid = cm.remotecall_fetch(os.getpid, victim)  # bpsh became the worker (exec)
    node = m.nodes[next(h.index for h in m._handles if h.proc.pid == pid)]
    fut = cm.remotecall(time.sleep, victim, 120)
    subprocess.run(["bpctl", "-S", node, "-s", "down"], check=True)  # the node is taken out
    with pytest.raises(ProcessExitedError, match=rf"bpsh on node {node} killed by signal SIGKILL .*"
                       rf"\(node {node} is down\)") as info:
        fut.fetch(60)
    assert info.value.worker_id == victim and cm.pmap(abs, [-2]) == [2]
    pids = [h.proc.pid for h in m._handles]
    cm.rmprocs(cm.workers())
    assert all(not Path(f"/proc/{p}").exists() or open(f"/proc/{p}/stat").read().split()[2] == "Z"
               for p in pids)


def test_no_node_up_is_a_launch_error_with_beomap_text(fresh, scyld):
    for node in "012":
        subprocess.run(["bpctl", "-S", node, "-s", "down"], check=True)
    with pytest.raises(LaunchError, match="beomap: no nodes are available"):
        cm.addprocs(ScyldManager(1))


def test_function_form(fresh, scyld):
    ids = addprocs_scyld(2, timeout=60)
    assert len(ids) == 2
    cm.rmprocs(ids)

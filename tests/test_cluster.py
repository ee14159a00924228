"""addprocs / rmprocs / topology / launch failures."""

import contextlib
import os
import signal
import sys
import threading

import psutil
import pytest
from procs import watch

import clustermgr as cm
from clustermgr import LaunchError, TopologyError
from clustermgr.managers import LocalManager


def test_no_workers_means_the_master_works(fresh):
    assert cm.workers() == [1] and cm.nworkers() == 1 and cm.procs() == [1]
    assert cm.pmap(lambda x: x + 1, [1, 2]) == [2, 3]


def test_addprocs_and_rmprocs(fresh):
    ids = cm.addprocs(2)
    assert ids == [2, 3] and cm.workers() == ids
    more = cm.addprocs(1)
    assert more == [4]
    cm.rmprocs(3)
    assert cm.workers() == [2, 4]
    with pytest.raises(cm.ProcessExitedError, match="worker 3 exited: removed by rmprocs"):
        cm.remotecall(abs, 3, 1)
    cm.rmprocs([2, 4])
    assert cm.workers() == [1]


def test_unknown_keyword_lists_valid_ones(fresh):
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['nthreads'\].*'topology'"):
        cm.addprocs(1, nthreads=2)


@pytest.mark.parametrize("kwargs, match", [
    ({"topology": "ring"}, "topology must be one of"),
    ({"timeout": 0}, "timeout must be a positive"),
])
def test_bad_keyword_values(fresh, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cm.addprocs(1, **kwargs)


def test_missing_dir(fresh):
    with pytest.raises(LaunchError, match="is not a directory"):
        cm.addprocs(1, dir="/no/such/dir")


def test_bad_counts(fresh):
    with pytest.raises(TypeError, match="number of workers or a ClusterManager"):
        cm.addprocs("two")
    with pytest.raises(ValueError, match=">= 0"):
        cm.addprocs(-1)


def test_rmprocs_bad_ids(fresh):
    cm.addprocs(1)
    with pytest.raises(ValueError, match="master"):
        cm.rmprocs(1)
    with pytest.raises(ValueError, match="no worker 77"):
        cm.rmprocs(77)


def test_worker_options(fresh, tmp_path):
    (tmp_path / "helper_mod_for_test.py").write_text("VALUE = 17\n")
    sys.path.insert(0, str(tmp_path))
    try:
        [w] = cm.addprocs(1, dir=str(tmp_path), env={"CM_TEST_VAR": "hello"},
                          exeflags="-X utf8", python=sys.executable)
        got = cm.remotecall_fetch(lambda: (
            os.getcwd(), os.environ.get("CM_TEST_VAR"), sys.flags.utf8_mode,
            os.environ.get("OMP_NUM_THREADS"), __import__("helper_mod_for_test").VALUE,
            "CLUSTERMGR_COOKIE" in os.environ), w)
        assert got == (str(tmp_path), "hello", 1, "1", 17, False)
    finally:
        sys.path.remove(str(tmp_path))


def test_threaded_blas_opt_in(fresh):
    [w] = cm.addprocs(1, enable_threaded_blas=True)
    assert cm.remotecall_fetch(lambda: os.environ.get("OMP_NUM_THREADS"), w) != "1"


def test_secret_not_in_worker_argv(fresh):
    import psutil

    from clustermgr.cluster import master

    [w] = cm.addprocs(1)
    pid = cm.remotecall_fetch(os.getpid, w)
    argv = " ".join(psutil.Process(pid).cmdline())
    assert master().secret.hex() not in argv


def test_master_worker_topology(fresh):
    cm.addprocs(2, topology="master_worker")
    with pytest.raises(cm.RemoteError, match="TopologyError.*master_worker"):
        cm.remotecall_fetch(lambda: cm.remotecall_fetch(cm.myid, 3), 2)
    assert cm.remotecall_fetch(lambda: cm.remotecall_fetch(cm.myid, 1), 2) == 1
    with pytest.raises(ValueError, match="already runs with topology 'master_worker'"):
        cm.addprocs(1, topology="all_to_all")


def test_custom_topology(fresh):
    from clustermgr.cluster import master

    ids = cm.addprocs(LocalManager(3, peers={0: {1}}), topology="custom")
    by_index = {master().workers[w].launch.handle.index: w for w in ids}  # join order varies
    a, b, c = by_index[0], by_index[1], by_index[2]
    assert cm.remotecall_fetch(lambda: cm.remotecall_fetch(cm.myid, b), a) == b
    with pytest.raises(cm.RemoteError, match="does not connect worker"):
        cm.remotecall_fetch(lambda: cm.remotecall_fetch(cm.myid, c), a)


def test_eager_routes(fresh):
    assert cm.addprocs(3, lazy=False) == [2, 3, 4]


def test_every_worker_knows_the_cluster_addprocs_returns(fresh):
    # addprocs returns once every worker has been told of the new ones: a call sent
    # next (on the caller's thread, straight to the socket) cannot overtake that news
    for _ in range(3):
        ids = cm.addprocs(2, topology="all_to_all")
        everyone = cm.workers()
        assert set(ids) <= set(everyone)
        for w in everyone:
            assert cm.remotecall_fetch(cm.workers, w) == everyone
            newest = ids[-1]
            assert cm.remotecall_fetch(lambda n=newest: cm.remotecall_fetch(cm.myid, n), w) == newest


def test_addprocs_in_background_thread_gives_early_workers(fresh):
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("ids", cm.addprocs(3)))
    t.start()
    first = cm.pmap(lambda x: x, range(3))  # runs wherever workers already are
    t.join(60)
    assert first == [0, 1, 2] and result["ids"] == [2, 3, 4]


def test_launch_error_bad_python(fresh):
    with pytest.raises(LaunchError, match="exited with code 1 before joining"):
        cm.addprocs(2, python=sys.executable, exeflags=["-c", "import sys; print('boom'); sys.exit(1)"])
    assert cm.workers() == [1]


def test_launch_error_missing_interpreter(fresh):
    with pytest.raises(LaunchError, match="failed to launch workers"):
        cm.addprocs(1, python="/no/such/python")


def test_join_timeout_kills_the_straggler(fresh):
    with pytest.raises(LaunchError, match="did not join within timeout=1.0 s") as info:
        cm.addprocs(1, python=sys.executable, exeflags=["-c", "import time; time.sleep(600)"],
                    timeout=1.0)
    assert info.value.joined == []


def test_topology_error_type():
    assert issubclass(TopologyError, cm.ClusterError)


def test_removed_worker_takes_its_process_tree(fresh):

    [a, b] = cm.addprocs(2)
    start = lambda: __import__("subprocess").Popen(["sleep", "600"], start_new_session=True).pid  # noqa: E731
    detached = [cm.remotecall_fetch(start, a), cm.remotecall_fetch(start, b)]
    with watch(detached) as children:  # not our children
        os.kill(cm.remotecall_fetch(os.getpid, b), signal.SIGSTOP)  # b cannot leave by itself
        cm.rmprocs(a, b, waitfor=1.0)  # a leaves when asked; b is killed, tree and all
        assert children.all_gone(15), "a worker's child outlived it"


EXIT_SCRIPT = """
import os, clustermgr as cm
ids = cm.addprocs(2)
print(*[cm.remotecall_fetch(os.getpid, w) for w in ids], flush=True)
"""


def test_master_exit_removes_its_workers():
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", EXIT_SCRIPT], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    try:
        with watch(pids) as workers:
            assert proc.wait(30) == 0
            assert workers.all_gone(10)  # gone when the master has exited, or very soon after
    finally:
        proc.stdout.close()


def test_worker_leaves_even_with_a_lingering_thread(fresh):
    import time

    from clustermgr.cluster import master

    [w] = cm.addprocs(1)
    cm.remotecall_fetch(lambda: threading.Thread(target=time.sleep, args=(600,)).start(), w)
    cm.rmprocs(w, waitfor=20)
    proc = master().workers[w].launch.handle.proc
    assert proc.wait(10) == 0  # it left by itself, not killed by a signal


def test_the_exit_watcher_owns_its_pipe(fresh):
    """stop() twice, and watch() after stop(), write to no closed (or reused) descriptor."""
    from clustermgr.managers.local import LocalManager

    manager = LocalManager(1)
    cm.addprocs(manager)
    watcher = manager._watcher
    cm.shutdown()
    assert watcher.stopped and not watcher.thread.is_alive()
    watcher.stop()  # again: a no-op, nothing written
    watcher.watch(type("H", (), {"proc": psutil.Process()})())  # after stop: not registered
    assert watcher.by_fd == {}


@pytest.mark.parametrize("n", [1, 2])  # 1: a plain subprocess; 2: forked by the fork server
def test_a_killed_workers_detached_child_goes_too(fresh, n):
    """kill -9 leaves the worker no chance to end its tree: the manager finds what its
    tasks started by the mark in their environment (managers/local.py)."""
    w = cm.addprocs(n)[0]
    start = lambda: __import__("subprocess").Popen(["sleep", "600"], start_new_session=True).pid  # noqa: E731
    child = cm.remotecall_fetch(start, w)
    pid = cm.remotecall_fetch(os.getpid, w)
    with watch([child]) as orphan:
        try:
            os.kill(pid, signal.SIGKILL)
            assert orphan.all_gone(15), "a killed worker's child outlived it"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)

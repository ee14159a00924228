"""Large buffers through same-host shared memory (clustermgr/shm.py): used when detected,
zero-copy on receipt, written once for many tasks, private to each task, and never left
in /dev/shm, whoever is killed."""

import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest
from conftest import pid_of

import clustermgr as cm
from clustermgr import serialize, shm
from clustermgr.managers import ElasticManager

BIG = 2 * shm.MIN_BYTES  # bytes: above the threshold
COOKIE = "7a" * 32


def ours(pid: int) -> list[str]:
    """Names in /dev/shm created by process *pid*."""
    return [n for n in os.listdir(shm.DIR) if n.startswith(f"{shm.PREFIX}{pid}-")]


def mapped(arr: np.ndarray) -> bool:
    """Is *arr*'s memory a shared-memory mapping (not a received frame or a copy)?"""
    base = arr
    while getattr(base, "base", None) is not None:
        base = base.base
    return isinstance(getattr(base, "obj", base), __import__("mmap").mmap)


def identity(x):
    return x


KEPT: dict = {}  # what a worker holds between calls


def keep(name, value):
    KEPT[name] = value


def kept_sum(name):
    return float(KEPT[name].sum())


def unkeep(name):
    KEPT.pop(name, None)


def test_a_large_array_travels_through_shared_memory_both_ways(cluster):
    w = cluster[0]
    assert shm.shares(w)
    a = np.random.default_rng(1).random(BIG // 8)
    before = shm.stats().get("links", 0)
    back = cm.remotecall_fetch(identity, w, a)
    assert np.array_equal(back, a) and back is not a
    assert mapped(back) and back.flags.writeable  # zero-copy, and writable as a pickle's
    assert shm.stats()["links"] == before + 1  # the argument; the reply: the worker's own
    assert cm.remotecall_fetch(shm.stats, w)["links"] >= 1
    assert cm.remotecall_fetch(lambda x: mapped(x), w, a)  # zero-copy on the worker too


def test_small_buffers_and_bytes_stay_on_the_link(cluster):
    w = cluster[0]
    small = np.ones(1000)
    assert not shm.names_in(serialize.dumps(small, w))
    assert not mapped(cm.remotecall_fetch(identity, w, small))


def test_one_argument_for_many_tasks_is_written_once_per_host(cluster):
    a = np.arange(BIG // 8, dtype=np.float64)
    before = shm.stats()
    sums = cm.pmap(lambda x, i: float(x.sum()) + i, [a] * 8, range(8))
    assert sums == [float(a.sum()) + i for i in range(8)]
    after = shm.stats()
    assert after["segments"] - before.get("segments", 0) == 1  # one copy for both workers
    assert after["reused"] - before.get("reused", 0) == 7


def test_a_task_writing_into_its_argument_changes_only_its_own_copy(cluster):
    a = np.ones(BIG // 8)

    def zero(x):
        x[:] = 0
        return float(x.sum())

    assert cm.remotecall_fetch(zero, cluster[0], a) == 0.0
    assert cm.remotecall_fetch(lambda x: float(x.sum()), cluster[1], a) == a.size  # same segment
    assert a.sum() == a.size  # and the master's array is untouched


def test_an_array_changed_between_sends_is_sent_anew(cluster):
    a = np.zeros(BIG // 8)
    assert cm.remotecall_fetch(lambda x: float(x[-1]), cluster[0], a) == 0.0
    a[-1] = 42.0
    assert cm.remotecall_fetch(lambda x: float(x[-1]), cluster[0], a) == 42.0
    a[0] = 1.0  # same object, same address, other bytes: compared, not trusted
    assert cm.remotecall_fetch(lambda x: float(x[0] + x[-1]), cluster[1], a) == 43.0


def test_a_segment_goes_with_the_last_reference(cluster):
    w = cluster[0]
    a = np.full(BIG // 8, 3.0)
    cm.remotecall_fetch(keep, w, "a", a)
    assert ours(os.getpid())  # the master keeps it for reuse while `a` lives
    del a
    gc.collect()
    assert not ours(os.getpid())  # gone from /dev/shm; the worker still maps its pages
    assert cm.remotecall_fetch(kept_sum, w, "a") == 3.0 * BIG // 8
    cm.remotecall_fetch(unkeep, w, "a")
    assert not ours(pid_of(w)) and not ours(os.getpid())


def test_a_vanished_segment_fails_that_call_with_a_clear_error():
    shm.enable(99)  # a peer that never reads: we unlink what we sent it
    try:
        frames = serialize.dumps(np.ones(BIG // 8), 99)
        [name] = shm.names_in(frames)
        os.unlink(os.path.join(shm.DIR, name))
        adopted = shm.adopt([b"header", *frames])
        with pytest.raises(cm.ClusterError, match="shared-memory buffer .* could not be read"):
            serialize.loads(adopted[1:])
    finally:
        shm.forget(99)
    assert not shm.shares(99)


def test_nothing_is_left_after_kill_9_of_a_worker(fresh):
    cm.addprocs(1)
    [w] = cm.workers()
    pid = pid_of(w)
    # the worker writes a segment for the master that nobody will ever take
    cm.remotecall_fetch(lambda: keep("unsent", serialize.dumps(np.ones(BIG // 8), 1)), w)
    assert ours(pid)
    running = cm.remotecall(__import__("time").sleep, w, 60)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(cm.ProcessExitedError):
        running.fetch(30)
    assert not ours(pid)


MASTER = textwrap.dedent("""
    import os, sys, numpy as np, clustermgr as cm
    cm.configure(heartbeat_interval=0.2, master_grace=1.5)
    cm.addprocs(1)
    [w] = cm.workers()
    a = np.ones(%d)
    keep = lambda name, x: __import__("builtins").__dict__.__setitem__(name, x)
    cm.remotecall_fetch(keep, w, "kept", a)  # the master keeps a segment for reuse
    cm.remotecall_fetch(lambda: keep("unsent",  # and the worker one nobody takes
        __import__("clustermgr").serialize.dumps(np.ones(%d), 1)), w)
    print(cm.remotecall_fetch(os.getpid, w), flush=True)
    sys.stdin.readline()
""")


def test_nothing_is_left_after_kill_9_of_the_master():
    n = BIG // 8
    master = subprocess.Popen([sys.executable, "-c", MASTER % (n, n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        worker = psutil.Process(int(master.stdout.readline()))
        assert ours(master.pid) and ours(worker.pid)
        master.kill()
        master.wait(10)
        worker.wait(30)  # it leaves after master_grace, and cleans up as it goes
        assert not ours(master.pid) and not ours(worker.pid)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
        master.stdin.close()
        master.stdout.close()


def test_a_crashed_run_is_swept_and_live_processes_are_not():
    dead = subprocess.Popen([sys.executable, "-c", "from clustermgr import shm; print(shm._stamp())"],
                            stdout=subprocess.PIPE, text=True)
    tag = dead.communicate()[0].strip()
    stale = os.path.join(shm.DIR, f"{shm.PREFIX}{tag}-0")
    mine = os.path.join(shm.DIR, f"{shm.PREFIX}{shm._tag}-999999")
    for path in (stale, mine):
        with open(path, "wb") as f:
            f.write(b"x")
    try:
        assert os.path.basename(stale) in shm.leftovers()
        assert shm.sweep() >= 1
        assert not os.path.exists(stale) and os.path.exists(mine)
    finally:
        for path in (stale, mine):
            if os.path.exists(path):
                os.unlink(path)


def test_shared_memory_can_be_turned_off(fresh):
    cm.configure(shared_memory=False)
    try:
        [w] = cm.addprocs(1)
        assert not shm.shares(w)
        assert not mapped(cm.remotecall_fetch(identity, w, np.ones(BIG // 8)))
    finally:
        cm.configure(shared_memory=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root and unshare(1) to give a worker a /dev/shm of its own")
def test_a_worker_with_its_own_dev_shm_uses_the_link(fresh):
    """Another host, or a container without the host's /dev/shm: the probe fails."""
    em = ElasticManager(cookie=COOKIE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERMGR_")}
    env["CLUSTERMGR_COOKIE"] = COOKIE
    cli = os.path.join(os.path.dirname(sys.executable), "clustermgr")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             f"mount -t tmpfs tmpfs {shm.DIR} && exec {cli} worker --connect "
                             f"{em.address.removeprefix('tcp://')}"],
                            env=env, stdout=subprocess.DEVNULL)
    try:
        [w] = em.wait(1, timeout=60)
        assert not shm.shares(w)
        a = np.arange(BIG // 8, dtype=np.float64)
        back = cm.remotecall_fetch(identity, w, a)
        assert np.array_equal(back, a) and not mapped(back)
        assert cm.remotecall_fetch(lambda: __import__("clustermgr").shm.shares(1), w) is False
        cm.rmprocs([w])
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- np.memmap by reference, and joblib's memmapping ---------------------------------------

def fill(out, i):
    out[i] = i + 1.0
    return float(out[i])


def is_readonly_memmap(x):
    return isinstance(x, np.memmap) and not x.flags.writeable, float(x.sum())


def test_writes_into_a_memmap_argument_are_seen_by_everyone(cluster, tmp_path):
    out = np.memmap(tmp_path / "out.mmap", dtype=np.float64, mode="w+", shape=(8,))
    assert cm.pmap(fill, [out] * 8, range(8)) == [i + 1.0 for i in range(8)]
    assert list(out) == [i + 1.0 for i in range(8)]  # the workers wrote into the file
    window = out[2:6]  # a view into the middle maps the same bytes
    assert cm.remotecall_fetch(lambda v: (v.fill(-1.0), str(v.filename))[1], cluster[0], window) == \
        str(tmp_path / "out.mmap")
    assert list(out[:2]) == [1.0, 2.0] and list(out[2:6]) == [-1.0] * 4 and list(out[6:]) == [7.0, 8.0]


def test_a_memmap_for_another_file_system_is_refused_with_advice(cluster, tmp_path):
    m = np.memmap(tmp_path / "m.mmap", dtype=np.uint8, mode="w+", shape=(16,))
    frames = serialize.dumps(m, cluster[0])
    os.unlink(tmp_path / "m.mmap")
    (tmp_path / "m.mmap").write_bytes(bytes(16))  # same name, another file
    with pytest.raises(cm.ClusterError, match=r"not the file .* pass np.asarray\(m\)"):
        serialize.loads(frames)


def test_joblib_documented_pattern_writing_into_a_shared_memmap(cluster, tmp_path):
    import joblib

    import clustermgr.joblib_backend  # noqa: F401

    out = np.memmap(tmp_path / "out.mmap", dtype=np.float64, mode="w+", shape=(10,))
    with joblib.parallel_config(backend="clustermgr", n_jobs=2):
        joblib.Parallel()(joblib.delayed(fill)(out, i) for i in range(10))
    assert list(out) == [i + 1.0 for i in range(10)]


def test_joblib_max_nbytes_and_mmap_mode_are_honoured(cluster, tmp_path):
    import joblib

    import clustermgr.joblib_backend  # noqa: F401

    big, small = np.ones(200_000), np.ones(10)
    with joblib.parallel_config(backend="clustermgr", n_jobs=2, temp_folder=str(tmp_path)):
        got = joblib.Parallel()(joblib.delayed(is_readonly_memmap)(x) for x in [big, small, big])
        assert got == [(True, 200_000.0), (False, 10.0), (True, 200_000.0)]
        assert not os.listdir(tmp_path)  # the call's folder went with the call
        with joblib.Parallel(max_nbytes=50) as p:  # a managed context keeps it to its end
            assert p(joblib.delayed(is_readonly_memmap)(x) for x in [small])[0][0]
            assert os.listdir(tmp_path)
        assert not os.listdir(tmp_path)
        zeros = np.zeros(200_000)
        copy_on_write = joblib.Parallel(mmap_mode="c")(joblib.delayed(fill)(x, 0) for x in [zeros])
        assert copy_on_write == [1.0] and zeros[0] == 0.0  # writable, and private to the task
        plain = joblib.Parallel(max_nbytes=None)(joblib.delayed(is_readonly_memmap)(x) for x in [big])
        assert plain == [(False, 200_000.0)]
        with pytest.raises(ValueError, match="mmap_mode='rw': joblib takes one of"):
            joblib.Parallel(mmap_mode="rw")(joblib.delayed(abs)(1) for _ in range(2))


def big_result(i):
    return np.full(BIG // 8, float(i))


def test_a_result_sent_just_before_its_worker_leaves_arrives(fresh):
    """A worker recycled after each task sends its last result through shared memory and
    leaves at once: the master must still read it (the worker leaves its links to it)."""
    with cm.ClusterExecutor(2, max_tasks_per_child=1) as ex:
        sums = [float(r.sum()) for r in ex.map(big_result, range(6))]
    assert sums == [float(i) * (BIG // 8) for i in range(6)]


def slow_big_result():
    import time

    time.sleep(0.3)
    return np.full(BIG // 8, 5.0)


def test_a_result_sent_as_its_worker_is_removed_arrives(fresh):
    [w] = cm.addprocs(1)
    fut = cm.remotecall(slow_big_result, w)
    cm.rmprocs([w], waitfor=30)  # asked to leave mid-task: it finishes, replies, leaves
    assert float(fut.fetch(30).sum()) == 5.0 * (BIG // 8)


def test_leaving_while_the_master_lives_keeps_the_links_it_sent():
    """What a worker does when asked to leave: its last message may still be unread."""
    shm.enable(98)
    try:
        a = np.ones(BIG // 8)
        frames = serialize.dumps(a, 98)
        shm.release(sent=False)  # cached segments go; the message's own name stays
        back = serialize.loads(shm.adopt([b"header", *frames])[1:])
        assert np.array_equal(back, a) and mapped(back)
    finally:
        shm.forget(98)
    assert not ours(os.getpid())


def test_a_memmap_is_never_copied_into_the_pickle(cluster, tmp_path, monkeypatch):
    """numpy pickles a np.memmap whole and in-band: for a worker on this host not even a
    first try may do that (it once cost 3 s for 8 tasks on a 200 MB memmap)."""
    m = np.memmap(tmp_path / "big.mmap", dtype=np.uint8, mode="w+", shape=(BIG,))
    traced: list[int] = []
    real = serialize.pickle.dumps

    def spy(*args, **kwargs):
        data = real(*args, **kwargs)
        traced.append(len(data))
        return data

    monkeypatch.setattr(serialize.pickle, "dumps", spy)
    frames = serialize.dumps((abs, (m,), {}), cluster[0])
    assert len(frames) == 1 and len(frames[0]) < 4096 and all(n < 4096 for n in traced)

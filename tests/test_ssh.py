"""SSHManager against the real sshd of the test kit, tests/clusters/ssh (127.0.0.1:2222)."""

import os
import signal
import sys

import psutil
import pytest
from backends import start
from procs import watch

import clustermgr as cm
from clustermgr import LaunchError
from clustermgr.cluster import master
from clustermgr.managers.ssh import Machine, SSHManager, parse_machine


@pytest.fixture(scope="session")
def sshd():
    return start("ssh")


@pytest.fixture
def ssh_kw(sshd):
    return {"key_filename": sshd["SSH_KEY"], "known_hosts": sshd["SSH_KNOWN_HOSTS"],
            "ssh_config": False, "python": sys.executable}


def host(sshd, count=1):
    return (f"{sshd['SSH_USER']}@{sshd['SSH_HOST']}:{sshd['SSH_PORT']}", count)


def remote_pid(w):
    return cm.remotecall_fetch(os.getpid, w)


def wait_gone(pids, timeout=15):
    with watch(pids) as remote:
        assert remote.all_gone(timeout), "a remote worker survived"


def test_machine_specs():
    assert parse_machine("h") == Machine("h", None, None, 1)
    assert parse_machine("u@h:2222") == Machine("h", "u", 2222, 1)
    assert parse_machine(("h", 4)).count == 4 and parse_machine(("h", "auto")).count == "auto"
    for bad in ["", ("h", 0), ("h", "many"), "h:port"]:
        with pytest.raises(ValueError):
            parse_machine(bad)


def test_workers_over_ssh(fresh, sshd, ssh_kw):
    ids = cm.addprocs([host(sshd, 3)], env={"CM_SSH_TEST": "yes"}, **ssh_kw)
    assert len(ids) == 3
    assert cm.everywhere(lambda: os.environ.get("CM_SSH_TEST")) == ["yes"] * 3
    assert sorted(cm.pmap(lambda x: x * 2, range(6))) == [0, 2, 4, 6, 8, 10]
    pids = [remote_pid(w) for w in ids]
    for pid in pids:  # started by sshd, not by us, and with no secret in argv
        proc = psutil.Process(pid)
        assert "sshd" in proc.parent().name() or "sshd" in " ".join(proc.parent().cmdline())
        assert master().secret.hex() not in " ".join(proc.cmdline())
    cm.rmprocs(ids)
    wait_gone(pids)


def test_auto_count_and_max_parallel(fresh, sshd, ssh_kw):
    ids = cm.addprocs([host(sshd, "auto")], max_parallel=1, **ssh_kw)
    assert len(ids) == len(os.sched_getaffinity(0))


def test_tunnel(fresh, sshd, ssh_kw):
    [w] = cm.addprocs([host(sshd)], tunnel=True, **ssh_kw)
    seen = cm.remotecall_fetch(lambda: os.environ["CLUSTERMGR_MASTER"], w)
    assert seen.startswith("tcp://127.0.0.1:") and seen != master().address  # the forward
    assert cm.remotecall_fetch(lambda x: x + 1, w, 1) == 2


def test_interrupt_and_kill_reach_the_remote_process(fresh, sshd, ssh_kw):
    [a, b] = cm.addprocs([host(sshd, 2)], **ssh_kw)
    started = cm.RemoteChannel()
    fut = cm.remotecall(lambda c: (c.put(1), __import__("time").sleep(60)), a, started)
    started.take(timeout=30)
    cm.interrupt(a)
    with pytest.raises(cm.RemoteError, match="KeyboardInterrupt"):
        fut.fetch(30)
    pids = [remote_pid(a), remote_pid(b)]
    os.kill(pids[1], signal.SIGSTOP)  # b cannot leave by itself: kill must reach it
    cm.rmprocs(a, b, waitfor=1.0)
    wait_gone(pids)


def test_worker_dies_with_its_ssh_connection(fresh, sshd, ssh_kw):
    manager = SSHManager([host(sshd, 2)], key_filename=ssh_kw["key_filename"],
                         known_hosts=ssh_kw["known_hosts"], ssh_config=False)
    ids = cm.addprocs(manager, python=sys.executable)
    pids = [remote_pid(w) for w in ids]
    for client in manager._clients.values():
        client.close()  # the connection drops (as when the master's host goes away)
    wait_gone(pids)
    with pytest.raises(cm.ProcessExitedError):
        cm.remotecall(abs, ids[0], 1).fetch(30)


def test_wrong_key_is_a_clear_launch_error(fresh, sshd, ssh_kw, tmp_path):
    key = tmp_path / "other_key"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {key}")
    with pytest.raises(LaunchError, match="SSH authentication failed"):
        cm.addprocs([host(sshd)], **dict(ssh_kw, key_filename=str(key)))
    assert cm.workers() == [1]


def test_unknown_host_key_is_refused_unless_accepted(fresh, sshd, ssh_kw, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(LaunchError, match="unknown host key.*accept_unknown_hosts=True"):
        cm.addprocs([host(sshd)], **dict(ssh_kw, known_hosts=str(empty)))
    ids = cm.addprocs([host(sshd)], accept_unknown_hosts=True, **dict(ssh_kw, known_hosts=str(empty)))
    assert len(ids) == 1


def test_mismatched_host_key_is_refused(fresh, sshd, ssh_kw, tmp_path):
    other = tmp_path / "hostkey"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {other}")
    lying = tmp_path / "known_hosts"
    key_type, key_data = open(f"{other}.pub").read().split()[:2]
    lying.write_text(f"[{sshd['SSH_HOST']}]:{sshd['SSH_PORT']} {key_type} {key_data}\n")
    with pytest.raises(LaunchError, match="does not match known_hosts"):
        cm.addprocs([host(sshd)], **dict(ssh_kw, known_hosts=str(lying)))


def test_bad_remote_python_or_dir(fresh, sshd, ssh_kw):
    with pytest.raises(LaunchError, match="before joining"):
        cm.addprocs([host(sshd)], **dict(ssh_kw, python="/no/such/python"))
    with pytest.raises(LaunchError, match="before joining"):
        cm.addprocs([host(sshd)], dir="/no/such/dir", **ssh_kw)


def test_unknown_keywords_listed(fresh, sshd):
    with pytest.raises(TypeError, match="tunnel"):
        cm.addprocs(["somehost"], tunel=True)


def test_unreachable_master_address_is_explained(fresh, sshd, ssh_kw):
    with pytest.raises(LaunchError, match="bind='0.0.0.0'.*tunnel=True"):
        cm.addprocs([("root@compute.invalid", 1)], **ssh_kw)


def test_ssh_config_alias(fresh, sshd, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(f"Host cm-test-alias\n  HostName {sshd['SSH_HOST']}\n  Port {sshd['SSH_PORT']}\n"
                      f"  User {sshd['SSH_USER']}\n  IdentityFile {sshd['SSH_KEY']}\n")
    # the alias resolves to loopback, so the master's 127.0.0.1 address is reachable: tunnel
    ids = cm.addprocs([("cm-test-alias", 2)], ssh_config=str(config), tunnel=True,
                      known_hosts=sshd["SSH_KNOWN_HOSTS"], python=sys.executable)
    assert len(ids) == 2 and cm.pmap(abs, [-1, -2]) == [1, 2]

"""DockerManager against the private dockerd of the test kit, tests/clusters/docker (offline images).

The workers run in ``local/hostfs:latest`` (an empty image) with the host's /usr, /etc,
Python and this checkout mounted read-only, and the host network: what a user does with
an image of their own that has Python and clustermgr installed.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from backends import start

import clustermgr as cm
from clustermgr import LaunchError, ProcessExitedError
from clustermgr.managers.docker import DockerManager, addprocs_docker

REPO = str(Path(cm.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def dockerd():
    env = start("docker")
    saved = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = env["DOCKER_HOST"]
    python_home = str(Path(os.path.realpath(sys.executable)).parents[1])
    volumes = {p: {"bind": p, "mode": "ro"} for p in ("/usr", "/etc", python_home, REPO)}
    yield {"image": "local/hostfs:latest", "volumes": volumes}
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=clustermgr"], capture_output=True,
                          text=True, env={**os.environ}).stdout
    if saved is None:
        os.environ.pop("DOCKER_HOST")
    else:
        os.environ["DOCKER_HOST"] = saved
    assert not left.strip(), f"containers left behind: {left}"


def docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def test_three_workers_pmap_docker_kill_and_removal(fresh, dockerd):
    m = DockerManager(3, **dockerd)
    t0 = time.monotonic()
    ids = cm.addprocs(m, dir=REPO)
    print(f"addprocs of 3 docker workers: {time.monotonic() - t0:.2f} s")
    hostnames = cm.everywhere(lambda: open("/proc/1/cgroup").read())
    assert all("docker" in h for h in hostnames)  # each worker runs inside its container
    assert cm.pmap(lambda x: x + 100, range(6)) == list(range(100, 106))
    inspect = docker("inspect", m.handles[0].name)
    assert cm.cluster.master().secret.hex() not in inspect  # nor in the command, nor the env
    victim = ids[1]
    handle = next(h for h in m.handles if h.worker_id == victim)
    fut = cm.remotecall(time.sleep, victim, 120)
    docker("kill", handle.name)
    with pytest.raises(ProcessExitedError, match=rf"container {handle.name} exited with code 137 "
                       r"\(its process was killed by signal SIGKILL") as info:
        fut.fetch(60)
    assert info.value.worker_id == victim and cm.pmap(abs, [-5]) == [5]
    cm.rmprocs(cm.workers())
    assert not docker("ps", "-aq", "--filter", f"label=clustermgr={m.tag}").strip()


def test_container_output_is_delivered_as_worker_output(fresh, dockerd):
    got = []
    cm.configure(output=lambda wid, line, stream: got.append((wid, line, stream)))
    [wid] = cm.addprocs(DockerManager(1, **dockerd), dir=REPO)
    cm.remotecall_fetch(lambda: os.system("echo below-python"), wid)  # not through sys.stdout
    deadline = time.monotonic() + 10
    while (wid, "below-python", "container") not in got and time.monotonic() < deadline:
        time.sleep(0.05)  # the container log stream has no event to wait on from here
    assert (wid, "below-python", "container") in got
    cm.rmprocs(wid)


def test_missing_image_and_bad_option_are_clear_launch_errors(fresh, dockerd):
    with pytest.raises(LaunchError, match=r"image 'nosuch/image:1' is not on the docker host; "
                       r"build it \(docker build -t nosuch/image:1 \.\) or pull it"):
        cm.addprocs(DockerManager(1, image="nosuch/image:1"))
    with pytest.raises(LaunchError, match="docker could not start .*(invalid|mem)"):
        cm.addprocs(DockerManager(1, mem_limit="lots", **dockerd), dir=REPO)
    with pytest.raises(ValueError, match="sets 'environment' itself"):
        DockerManager(1, image="x", environment={"A": "1"})


def test_function_form(fresh, dockerd):
    ids = addprocs_docker(1, dir=REPO, timeout=60, **dockerd)
    assert len(ids) == 1
    cm.rmprocs(ids)


def test_a_container_with_its_own_dev_shm_gets_buffers_over_the_link(fresh, dockerd):
    """Containers do not share the host's /dev/shm unless asked: the probe tells."""
    from clustermgr import shm

    [wid] = cm.addprocs(DockerManager(1, **dockerd), dir=REPO)
    assert not shm.shares(wid)
    data = bytearray(os.urandom(2 * shm.MIN_BYTES))  # out of band, above the threshold
    assert cm.remotecall_fetch(lambda b: bytes(b[::-1]), wid, data) == bytes(data[::-1])
    assert cm.remotecall_fetch(lambda: __import__("clustermgr").shm.shares(1), wid) is False
    cm.rmprocs(wid)

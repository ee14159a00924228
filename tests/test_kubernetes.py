"""KubernetesManager against the fake kubectl in tests/fakes/kubernetes (NOT a real
Kubernetes: no cluster runs here; the fake runs each pod's command on this machine and
prints kubectl's formats and errors, see its docstring)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import clustermgr as cm
from clustermgr import LaunchError, ProcessExitedError
from clustermgr.managers.base import LaunchSpec
from clustermgr.managers.kubernetes import KubernetesManager, addprocs_kubernetes, pod_reason

FAKE_BIN = Path(__file__).parent / "fakes" / "kubernetes" / "bin"
IMAGE = "local/clustermgr-worker:test"


@pytest.fixture
def kube(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBE_HOME", str(tmp_path / "fakekube"))
    monkeypatch.setenv("FAKE_KUBE_IMAGES", IMAGE)
    yield tmp_path / "fakekube"
    left = [p.name for p in (tmp_path / "fakekube").glob("*.json")]
    assert not left, f"objects left in the fake cluster: {left}"


def test_pod_manifest_names_the_secret_and_never_holds_it():
    m = KubernetesManager(2, image="me/w:1", namespace="ml", cpu="500m", memory="1Gi",
                          pod_overrides={"nodeSelector": {"pool": "cpu"}})
    spec = LaunchSpec("tcp://10.0.0.5:7000", b"\x01" * 32, "/w", {"A": "1"}, "python3", [], False,
                      lambda *a: None)
    pod = m.pod_manifest(spec, "L-0", 0)
    text = json.dumps(pod)
    assert spec.secret.hex() not in text and "secretKeyRef" in text
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python3", "-m", "clustermgr.worker"] and c["image"] == "me/w:1"
    assert c["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert pod["spec"]["nodeSelector"] == {"pool": "cpu"} and pod["spec"]["restartPolicy"] == "Never"
    assert {"name": "A", "value": "1"} in c["env"]


def test_pod_reasons():
    def container(**state):
        return {"containerStatuses": [{"state": state}]}

    assert pod_reason(container(waiting={"reason": "ErrImagePull", "message": "x"})) == "ErrImagePull: x"
    oom = container(terminated={"reason": "OOMKilled", "exitCode": 137})
    assert pod_reason(oom) == "OOMKilled, exit code 137"
    assert pod_reason({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                       "message": "0/1 nodes"}]}) == "Unschedulable: 0/1 nodes"


def test_three_workers_pmap_and_kubectl_delete(fresh, kube):
    m = KubernetesManager(3, image=IMAGE, poll_interval=0.3)
    ids = cm.addprocs(m, python=sys.executable)
    pods = cm.everywhere(lambda: os.environ["HOSTNAME"])
    assert sorted(pods) == sorted(h.job_id for h in m.handles)
    assert cm.pmap(lambda x: x * 7, range(5)) == [0, 7, 14, 21, 28]
    victim = ids[2]
    pod = cm.remotecall_fetch(lambda: os.environ["HOSTNAME"], victim)
    fut = cm.remotecall(time.sleep, victim, 120)
    subprocess.run(["kubectl", "delete", "pod", pod], check=True, capture_output=True)
    with pytest.raises(ProcessExitedError, match=rf"Kubernetes job {pod} left the queue") as info:
        fut.fetch(60)
    assert info.value.worker_id == victim and cm.pmap(abs, [-6]) == [6]
    cm.rmprocs(cm.workers())
    cm.shutdown()  # the manager's close() deletes the Secret


def test_worker_that_exits_reports_phase_and_log(fresh, kube):
    m = KubernetesManager(1, image=IMAGE, poll_interval=0.3)
    [wid] = cm.addprocs(m, python=sys.executable)
    fut = cm.remotecall(lambda: (print("last words", file=sys.__stderr__, flush=True), os._exit(3)), wid)
    with pytest.raises(ProcessExitedError, match=r"ended in state Failed \(Error, exit code 3\)") as info:
        fut.fetch(60)
    assert "last words" in str(info.value)
    cm.shutdown()


def test_unknown_image_and_unschedulable_pods_hit_pending_timeout(fresh, kube, monkeypatch):
    with pytest.raises(LaunchError, match=r"still Pending after pending_timeout=2 s \(reason: ErrImagePull: "
                       r"rpc error: .*pull access denied"):
        cm.addprocs(KubernetesManager(1, image="nosuch/image:9", pending_timeout=2, poll_interval=0.3),
                    python=sys.executable)
    with pytest.raises(LaunchError, match=r"Unschedulable: 0/1 nodes are available: 1 Insufficient cpu"):
        cm.addprocs(KubernetesManager(1, image=IMAGE, cpu="64", pending_timeout=2, poll_interval=0.3),
                    python=sys.executable)
    with pytest.raises(LaunchError, match="quantities must match the regular expression"):
        cm.addprocs(KubernetesManager(1, image=IMAGE, memory="lots"), python=sys.executable)
    cm.shutdown()


def test_function_form(fresh, kube):
    ids = addprocs_kubernetes(2, image=IMAGE, poll_interval=0.3, python=sys.executable, timeout=60)
    assert len(ids) == 2
    cm.shutdown()

"""A faithful fake of ``kubectl`` (apply, get, delete, logs) for the test suite.

NOT a real Kubernetes: no API server, no kubelet.  Objects live in $FAKE_KUBE_HOME; a pod's
container runs here as a local process (its ``command``/``args``/``env``; the image is only
checked).  Every command first reaps finished containers and starts pending pods that fit.
What it reproduces of kubectl 1.29 against a one-node cluster, because clustermgr relies on it:
- ``apply -f -`` of JSON (an object or a ``List``): ``pod/NAME created``,
  ``secret/NAME created`` (``configured`` when it exists).  A bad quantity:
  ``Error from server (BadRequest): error when creating "STDIN": Pod in version "v1" cannot
  be handled as a Pod: quantities must match the regular expression ...``, exit 1.  An
  unknown kind: ``error: resource mapping not found ...``, exit 1.
- A pod whose image is not in $FAKE_KUBE_IMAGES (comma-separated) stays Pending with the
  container waiting in ``ErrImagePull`` and the registry's message.  A pod whose cpu request
  does not fit the node ($FAKE_KUBE_CPU, default 4) stays Pending with condition
  PodScheduled=False, reason Unschedulable, ``0/1 nodes are available: 1 Insufficient cpu.``
- ``get pods -l k=v -o json``: a ``List``; phases Pending, Running, Succeeded, Failed; a
  finished container is ``terminated`` with ``exitCode`` and reason ``Completed``/``Error``.
- ``delete pod NAME... [--wait=false] [--ignore-not-found]``: ``pod "NAME" deleted``; the
  container gets SIGTERM, then SIGKILL after the grace period (shortened to 1 s).  Unknown:
  ``Error from server (NotFound): pods "NAME" not found``, exit 1.
- ``logs NAME [--tail=N]``: the container's output; a pod that never started:
  ``Error from server (BadRequest): container "C" in pod "NAME" is waiting to start: ...``.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from spool import Spool, alive, kill_session, start  # noqa: E402

SPOOL = Spool(os.environ.get("FAKE_KUBE_HOME", f"/tmp/fakekube-{getpass.getuser()}"))
IMAGES = set(filter(None, os.environ.get("FAKE_KUBE_IMAGES", "python:3.11-slim").split(",")))
NODE_CPU = float(os.environ.get("FAKE_KUBE_CPU", "4"))
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _file(kind: str, ns: str, name: str) -> str:
    return os.path.join(SPOOL.home, f"{kind}.{ns}.{name}.json")


def _load(kind: str, ns: str, name: str) -> dict | None:
    try:
        with open(_file(kind, ns, name)) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def _save(kind: str, obj: dict) -> None:
    meta = obj["metadata"]
    fd = os.open(_file(kind, meta["namespace"], meta["name"]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh)


def _pods(ns: str | None = None) -> list[dict]:
    out = []
    for name in sorted(os.listdir(SPOOL.home)):
        if name.startswith("pod.") and name.endswith(".json"):
            with open(os.path.join(SPOOL.home, name)) as fh:
                pod = json.load(fh)
            if ns is None or pod["metadata"]["namespace"] == ns:
                out.append(pod)
    return out


def _cpu(value: str | None) -> float:
    if not value:
        return 0.0
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _requested(pod: dict) -> float:
    return sum(_cpu(c.get("resources", {}).get("requests", {}).get("cpu")) for c in pod["spec"]["containers"])


def _reconcile() -> None:
    """Reap finished containers, then start pending pods that fit (oldest first)."""
    pods = _pods()
    used = 0.0
    for pod in pods:
        st = pod["status"]
        if st["phase"] == "Running" and not alive(pod["pid"]):
            code = _exit_code(pod)
            st["phase"] = "Succeeded" if code == 0 else "Failed"
            st["containerStatuses"][0]["state"] = {"terminated": {
                "exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": _now()}}
            _save("pod", pod)
        if st["phase"] == "Running":
            used += _requested(pod)
    for pod in pods:
        if pod["status"]["phase"] != "Pending":
            continue
        container = pod["spec"]["containers"][0]
        st = pod["status"]
        if container["image"] not in IMAGES:
            st["containerStatuses"] = [{"name": container["name"], "ready": False,
                                        "image": container["image"],
                                        "state": {"waiting": {"reason": "ErrImagePull", "message": (
                f'rpc error: code = Unknown desc = failed to pull and unpack image "docker.io/'
                f'{container["image"]}": failed to resolve reference: pull access denied, repository '
                f'does not exist or may require authorization')}}}]
            st["conditions"] = [{"type": "PodScheduled", "status": "True"}]
        elif used + _requested(pod) > NODE_CPU:
            st["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 "
                                 "nodes are available: 1 No preemption victims found for incoming pod."}]
        else:
            used += _requested(pod)
            _run(pod)
        _save("pod", pod)


def _exit_code(pod: dict) -> int:
    try:
        with open(_file("exit", pod["metadata"]["namespace"], pod["metadata"]["name"])) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 137  # killed before its wrapper could record anything


def _run(pod: dict) -> None:
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    container = pod["spec"]["containers"][0]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": name,
           "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = _load("secret", ns, ref["name"]) or {}
            env[item["name"]] = secret.get("stringData", {}).get(ref["key"], "")
        else:
            env[item["name"]] = item.get("value", "")
    argv = [*container.get("command", []), *container.get("args", [])]
    status = _file("exit", ns, name)
    # a shell around the container records its exit status (128+N for a signal)
    wrapper = ['/bin/sh', '-c', '"$@"; echo $? > "$0"', status, *argv]
    log = _file("log", ns, name)
    pod["pid"] = start(wrapper, env, container.get("workingDir") or SPOOL.home, log)
    pod["status"].update(phase="Running", startTime=_now(), conditions=[
        {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}])
    pod["status"]["containerStatuses"] = [{"name": container["name"], "ready": True,
                                           "image": container["image"],
                                           "state": {"running": {"startedAt": _now()}}}]


def _namespace(argv: list[str]) -> str:
    for flag in ("-n", "--namespace"):
        if flag in argv:
            return argv[argv.index(flag) + 1]
    for arg in argv:
        if arg.startswith("--namespace="):
            return arg.split("=", 1)[1]
    return "default"


def apply(argv: list[str]) -> int:
    ns = _namespace(argv)
    doc = json.loads(sys.stdin.read())
    items = doc["items"] if doc.get("kind") == "List" else [doc]
    for obj in items:
        if obj.get("kind") not in ("Pod", "Secret"):
            sys.stderr.write(f'error: resource mapping not found for name: "{obj["metadata"]["name"]}" '
                             f'namespace: "" from "STDIN": no matches for kind "{obj.get("kind")}" in '
                             f'version "{obj.get("apiVersion")}"\nensure CRDs are installed first\n')
            return 1
        if obj["kind"] == "Pod":
            for c in obj["spec"]["containers"]:
                for section in c.get("resources", {}).values():
                    for value in section.values():
                        if not re.match(QUANTITY, str(value)):
                            sys.stderr.write('Error from server (BadRequest): error when creating "STDIN": '
                                             'Pod in version "v1" cannot be handled as a Pod: quantities '
                                             f"must match the regular expression '{QUANTITY}'\n")
                            return 1
    for obj in items:
        kind = obj["kind"].lower()
        obj["metadata"].setdefault("namespace", ns)
        existed = _load(kind, ns, obj["metadata"]["name"]) is not None
        if kind == "pod" and not existed:
            obj["status"] = {"phase": "Pending", "conditions": [], "containerStatuses": []}
            obj["pid"] = 0
        if kind == "pod" and existed:
            print(f"pod/{obj['metadata']['name']} unchanged")
            continue
        _save(kind, obj)
        print(f"{kind}/{obj['metadata']['name']} {'configured' if existed else 'created'}")
    _reconcile()
    return 0


def get(argv: list[str]) -> int:
    if not argv or argv[0] not in ("pods", "pod", "po"):
        sys.stderr.write(f'error: the server doesn\'t have a resource type "{argv[0] if argv else ""}"\n')
        return 1
    _reconcile()
    ns = _namespace(argv)
    selector = argv[argv.index("-l") + 1] if "-l" in argv else ""
    wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
    pods = [p for p in _pods(ns)
            if all(p["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
    for pod in pods:
        pod.pop("pid", None)
    if "json" in argv:
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": pods,
                          "metadata": {"resourceVersion": ""}}))
    elif not pods:
        sys.stderr.write(f"No resources found in {ns} namespace.\n")
    else:
        print(f"{'NAME':<30} {'READY':<7} {'STATUS':<12} RESTARTS   AGE")
        for pod in pods:
            ready = "1/1" if pod["status"]["phase"] == "Running" else "0/1"
            print(f"{pod['metadata']['name']:<30} {ready:<7} {pod['status']['phase']:<12} 0          1s")
    return 0


def delete(argv: list[str]) -> int:
    kind = argv[0].rstrip("s") if argv else ""
    if kind not in ("pod", "secret"):
        sys.stderr.write(f'error: the server doesn\'t have a resource type "{argv[0] if argv else ""}"\n')
        return 1
    ns = _namespace(argv)
    skip = {argv.index(f) + 1 for f in ("-n", "--namespace") if f in argv}
    names = [a for i, a in enumerate(argv[1:], 1) if not a.startswith("-") and i not in skip]
    status = 0
    for name in names:
        obj = _load(kind, ns, name)
        if obj is None:
            if "--ignore-not-found" not in argv:
                sys.stderr.write(f'Error from server (NotFound): {kind}s "{name}" not found\n')
                status = 1
            continue
        if kind == "pod" and obj.get("pid") and alive(obj["pid"]):
            kill_session(obj["pid"], (signal.SIGTERM, signal.SIGKILL), 1.0)
        for leftover in (kind, "exit", "log"):
            try:
                os.unlink(_file(leftover, ns, name))
            except FileNotFoundError:
                pass
        print(f'{kind} "{name}" deleted')
    return status


def logs(argv: list[str]) -> int:
    ns = _namespace(argv)
    skip = {argv.index(f) + 1 for f in ("-n", "--namespace") if f in argv}
    name = next(a for i, a in enumerate(argv) if not a.startswith("-") and i not in skip)
    pod = _load("pod", ns, name)
    if pod is None:
        sys.stderr.write(f'Error from server (NotFound): pods "{name}" not found\n')
        return 1
    if not os.path.exists(_file("log", ns, name)):
        waiting = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
        cname = pod["spec"]["containers"][0]["name"]
        sys.stderr.write(f'Error from server (BadRequest): container "{cname}" in pod "{name}" is '
                         f'waiting to start: {waiting.get("reason", "ContainerCreating")}\n')
        return 1
    tail = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("--tail=")), -1)
    with open(_file("log", ns, name), errors="replace") as fh:
        lines = fh.read().splitlines()
    print("\n".join(lines[-tail:] if tail >= 0 else lines))
    return 0


def main() -> int:
    SPOOL.locked()
    argv = sys.argv[1:]
    if argv and argv[0] == "--context":
        argv = argv[2:]
    commands = {"apply": apply, "get": get, "delete": delete, "logs": logs}
    if not argv or argv[0] not in commands:
        sys.stderr.write(f'error: unknown command "{argv[0] if argv else ""}" for "kubectl"\n')
        return 1
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())

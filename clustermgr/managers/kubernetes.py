"""KubernetesManager: one pod per worker, through ``kubectl`` (apply / get / delete / logs).

The secret goes into a Secret object of its own (``stringData``) that the pods read through
``secretKeyRef``: it is in no pod spec, argv or log.  Pods that stay Pending longer than
``pending_timeout`` (an image that cannot be pulled, a request that fits no node) are
deleted and reported with Kubernetes' own reason.  A pod that ends is deleted once its
end and the tail of its log are reported; ``close()`` deletes the Secret.

The workers must reach the master: run the master in the cluster (a pod), or bind it where
pods can reach it (``configure(bind="0.0.0.0")``, encrypted by default off loopback).  The
image needs Python and clustermgr; pass ``addprocs(python=...)`` with its interpreter.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from .base import LaunchSpec, WorkerHandle
from .batch import BatchHandle, BatchManager, JobState, SchedulerCommandError, addprocs_with, run_command

log = logging.getLogger("clustermgr")


class KubernetesManager(BatchManager):
    """``KubernetesManager(np, image="me/worker:1", namespace="ml", cpu="1", memory="2Gi")``.

    ``kubectl`` is the command prefix (``["kubectl", "--context", "prod"]``);
    ``pod_overrides`` is merged into each pod's ``spec`` (node selectors, tolerations, ...).
    """

    scalable = False  # its pods are named by one tag and an index

    scheduler = "Kubernetes"
    queue_timeout_name = "pending_timeout"
    fatal_submit_errors = r"BadRequest|error:"  # an invalid manifest: no retry can fix it
    states: ClassVar[dict[str, JobState]] = {
        "Pending": JobState.PENDING, "Unknown": JobState.PENDING, "Running": JobState.RUNNING,
        "Succeeded": JobState.DONE, "Failed": JobState.FAILED}

    def __init__(self, np: int, *, image: str, namespace: str = "default", cpu: str | None = None,
                 memory: str | None = None, pending_timeout: float | None = 300.0,
                 kubectl: Sequence[str] = ("kubectl",), working_dir: str | None = None,
                 pod_overrides: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(np, queue_timeout=pending_timeout, use_array=False, **kwargs)
        self.image, self.namespace, self.cpu, self.k8s_memory = image, namespace, cpu, memory
        self.kubectl, self.working_dir = list(kubectl), working_dir
        self.pod_overrides = dict(pod_overrides or {})
        self.tag = secrets.token_hex(4)
        self.secret_name = f"clustermgr-{self.tag}"
        self._secret_made = False
        self._tails: dict[str, str] = {}  # log tails of pods already deleted

    def __repr__(self) -> str:
        return f"KubernetesManager({self.np}, image={self.image!r})"

    def _k(self, *args: str) -> list[str]:
        return [*self.kubectl, *args, "-n", self.namespace]

    # --- the manifests -----------------------------------------------------------------

    def pod_manifest(self, spec: LaunchSpec, launch_id: str, index: int) -> dict[str, Any]:
        """The pod of worker *index*; its environment names the secret, never holds it."""
        env = spec.environment(launch_id)
        env.pop("CLUSTERMGR_COOKIE")
        container: dict[str, Any] = {
            "name": "worker", "image": self.image, "imagePullPolicy": "IfNotPresent",
            "command": spec.argv(),
            "env": [{"name": k, "value": v} for k, v in sorted(env.items())] + [
                {"name": "CLUSTERMGR_COOKIE",
                 "valueFrom": {"secretKeyRef": {"name": self.secret_name, "key": "cookie"}}}]}
        requests = {k: v for k, v in (("cpu", self.cpu), ("memory", self.k8s_memory)) if v}
        if requests:
            container["resources"] = {"requests": requests, "limits": dict(requests)}
        if self.working_dir:
            container["workingDir"] = self.working_dir
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"clustermgr-{self.tag}-{index}", "labels": {"clustermgr": self.tag}},
                "spec": {"restartPolicy": "Never", "containers": [container], **self.pod_overrides}}

    def launch(self, spec: LaunchSpec) -> Iterator[BatchHandle]:
        self._spec = spec
        launch_ids = [f"{self.tag}-{i}" for i in range(self.np)]
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": self.secret_name, "labels": {"clustermgr": self.tag}},
                  "stringData": {"cookie": spec.secret.hex()}}
        pods = [self.pod_manifest(spec, launch_id, i) for i, launch_id in enumerate(launch_ids)]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": [secret, *pods]})
        self._secret_made = True
        self._apply(body)
        now = time.monotonic()
        names = [pod["metadata"]["name"] for pod in pods]
        new = [BatchHandle(launch_id, name, name, i, "Pending", "", now, queued=True)
               for i, (launch_id, name) in enumerate(zip(launch_ids, names, strict=True))]
        log.info("Kubernetes: created pods %s", ", ".join(h.job_id for h in new))
        with self._lock:
            self.handles.extend(new)
        self._start_polling()
        yield from new

    def _apply(self, body: str) -> None:
        self.retrying(lambda: run_command(self._k("apply", "-f", "-"), input=body, timeout=120))

    # --- status ------------------------------------------------------------------------

    def status_argv(self) -> list[str]:
        return self._k("get", "pods", "-l", f"clustermgr={self.tag}", "-o", "json")

    def parse_status(self, text: str) -> dict[str, tuple[str, str]]:
        table = {}
        for pod in json.loads(text).get("items", []):
            status = pod.get("status", {})
            table[pod["metadata"]["name"]] = (status.get("phase", "Unknown"), pod_reason(status))
        return table

    def cancel_argv(self, job_ids: Sequence[str]) -> list[str]:
        return self._k("delete", "pod", "--wait=false", "--ignore-not-found", *job_ids)

    def _ended(self, h: BatchHandle, cause: str) -> None:
        if not h.ended:
            self._tails[h.job_id] = self.log_tail(h)  # read the log while the pod is there,
            self.cancel([h.job_id])                   # delete the finished pod,
        super()._ended(h, cause)                      # then report its end

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        if getattr(handle, "job_id", "") in self._tails:
            return self._tails[handle.job_id]  # type: ignore[attr-defined]
        try:
            return run_command(self._k("logs", getattr(handle, "job_id", ""), f"--tail={lines}"),
                               timeout=30).rstrip()
        except SchedulerCommandError as exc:
            return exc.stderr.strip()

    def close(self) -> None:
        super().close()
        if self._secret_made:
            try:
                run_command(self._k("delete", "secret", "--ignore-not-found", self.secret_name), timeout=60)
            except SchedulerCommandError as exc:
                log.warning("could not delete the Secret %s: %s", self.secret_name, exc)


def pod_reason(status: dict[str, Any]) -> str:
    """Why a pod is where it is, in Kubernetes' words ("" if nothing to say)."""
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state", {})
        if "waiting" in state and state["waiting"].get("reason") not in (None, "ContainerCreating"):
            waiting = state["waiting"]
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        if "terminated" in state:
            done = state["terminated"]
            return f"{done.get('reason', 'terminated')}, exit code {done.get('exitCode')}"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}"
    return ""


def addprocs_kubernetes(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(KubernetesManager(np, image=..., ...))`` in one call."""
    return addprocs_with(KubernetesManager, np, **kwargs)

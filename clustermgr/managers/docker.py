"""DockerManager: one container per worker, through the docker SDK.

Needs ``pip install clustermgr[docker]``.  The image must already be on the docker host:
clustermgr never pulls implicitly (a missing image is a LaunchError that says how to build
or pull it).  The worker runs ``python -m clustermgr.worker --stdin-config``: its
environment, secret included, goes down the container's attached stdin, so it is in neither
the container's command nor its configuration (``docker inspect`` shows no secret); when
the master goes away, stdin closes and the worker leaves.

The container's own output (what the worker prints before it joins or after it leaves,
and anything written below Python) is kept in ``log_dir`` and, once the worker has an id,
delivered like worker output (``configure(output=...)``, stream ``"container"``).
Removal stops the container (SIGTERM, then SIGKILL) and removes it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import LaunchError
from .base import ClusterManager, LaunchSpec, ManageOp, WorkerHandle
from .local import describe_exit

log = logging.getLogger("clustermgr")


@dataclass
class DockerHandle(WorkerHandle):
    container: Any = None
    name: str = ""
    sock: Any = field(default=None, repr=False)
    worker_id: int = 0
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200), repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)


def _client(base_url: str | None) -> Any:
    try:
        import docker
    except ImportError as exc:
        raise LaunchError("DockerManager needs the docker SDK: pip install 'clustermgr[docker]'") from exc
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        where = base_url or os.environ.get("DOCKER_HOST", "the default socket")
        raise LaunchError(f"cannot reach the docker daemon at {where}: {exc}; is dockerd "
                          "running and DOCKER_HOST set?") from exc
    return client


class DockerManager(ClusterManager):
    """``DockerManager(np, image="me/worker:1", network="host", volumes={...}, **run_kwargs)``.

    ``volumes`` and ``run_kwargs`` are those of ``docker.containers.run`` (``mem_limit``,
    ``cpuset_cpus``, ``user``, ``devices``, ...).  ``network="host"`` lets the workers dial
    a master bound to 127.0.0.1; with another network, bind the master where the
    containers can reach it (``configure(bind=...)``).  ``docker_host`` defaults to
    ``$DOCKER_HOST``.
    """

    def __init__(self, np: int, *, image: str, network: str = "host", volumes: Any = None,
                 docker_host: str | None = None, log_dir: str | None = None, **run_kwargs: Any) -> None:
        if isinstance(np, bool) or not isinstance(np, int) or np < 1:
            raise ValueError(f"DockerManager needs a number of workers >= 1, not {np!r}")
        for reserved in ("command", "environment", "stdin_open", "detach", "network_mode", "name"):
            if reserved in run_kwargs:
                raise ValueError(f"DockerManager sets {reserved!r} itself; leave it out")
        self.np, self.image, self.network, self.volumes = np, image, network, volumes
        self.docker_host = docker_host
        self.run_kwargs = run_kwargs
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="clustermgr-docker-")
        self.tag = secrets.token_hex(4)
        self.handles: list[DockerHandle] = []
        self._client: Any = None
        self._spec: LaunchSpec | None = None

    def __repr__(self) -> str:
        return f"DockerManager({self.np}, image={self.image!r})"

    def launch(self, spec: LaunchSpec) -> Iterator[DockerHandle]:
        import docker

        self._spec = spec
        self._client = self._client or _client(self.docker_host)
        try:
            self._client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise LaunchError(f"image {self.image!r} is not on the docker host; build it "
                              f"(docker build -t {self.image} .) or pull it (docker pull {self.image}) "
                              "first: clustermgr never pulls implicitly") from None
        for index in range(self.how_many(spec)):
            launch_id = f"{self.tag}-{index}"
            name = f"clustermgr-{launch_id}"
            try:
                container = self._client.containers.create(
                    self.image, command=[*spec.argv(), "--stdin-config"], name=name,
                    stdin_open=True, network_mode=self.network, volumes=self.volumes,
                    working_dir=spec.dir, labels={"clustermgr": self.tag}, **self.run_kwargs)
                sock = container.attach_socket(params={"stdin": 1, "stream": 1})
                container.start()
            except docker.errors.DockerException as exc:
                self._remove_by_name(name)
                raise LaunchError(f"docker could not start {name}: {exc}") from exc
            handle = DockerHandle(launch_id, "docker", container=container, name=name, sock=sock)
            self.handles.append(handle)
            config = json.dumps({"env": spec.environment(launch_id)}) + "\n"
            _raw(sock).sendall(config.encode())
            threading.Thread(target=self._follow, args=(handle,), daemon=True,
                             name=f"clustermgr-docker-{name}").start()
            yield handle

    def _follow(self, h: DockerHandle) -> None:
        """Stream the container's log until it ends, then report the end."""
        from ..cluster import master

        path = os.path.join(self.log_dir, f"{h.name}.log")
        try:
            with open(path, "ab") as out:
                for chunk in h.container.logs(stream=True, follow=True):
                    out.write(chunk)
                    out.flush()
                    for line in chunk.decode(errors="replace").splitlines():
                        h.lines.append(line)
                        if h.worker_id:
                            try:
                                master().settings.emit(h.worker_id, line, "container")
                            except Exception:  # a user's output sink failed: keep streaming
                                log.exception("worker output sink failed on a container line")
        except Exception as exc:  # noqa: BLE001 - the stream broke; wait() tells the end
            log.debug("docker logs of %s: %s", h.name, exc)
        cause, tail = self._end_of(h), self.log_tail(h)
        # The container goes before its end is reported: whoever learns that the worker is
        # gone (rmprocs, a test, a user) finds no container left behind.
        self._remove_by_name(h.name)  # its log is kept in log_dir
        h.done.set()
        self._spec.on_exit(h, cause, tail)  # type: ignore[union-attr]

    def _end_of(self, h: DockerHandle) -> str:
        """How the container ended, from docker's own record."""
        try:
            code = int(h.container.wait(timeout=60).get("StatusCode", -1))
            h.container.reload()
        except Exception as exc:  # noqa: BLE001 - removed under us (docker rm -f)
            return f"container {h.name} is gone ({type(exc).__name__}: {exc})"
        cause = f"container {h.name} exited with code {code}"
        if code > 128:
            cause += f" (its process was {describe_exit(-(code - 128))})"
        if h.container.attrs.get("State", {}).get("OOMKilled"):
            cause += ", killed for running out of memory (OOMKilled)"
        return cause

    def manage(self, handle: WorkerHandle, op: ManageOp, worker_id: int) -> None:
        if op is ManageOp.REGISTER and isinstance(handle, DockerHandle):
            handle.worker_id = worker_id

    def kill(self, handle: WorkerHandle, grace: float = 5.0) -> None:
        """Wait *grace* s for the worker to leave, then stop (SIGTERM, SIGKILL after 5 s)
        and remove its container."""
        h: DockerHandle = handle  # type: ignore[assignment]
        if not h.done.wait(grace):
            try:
                h.container.stop(timeout=5)
            except Exception as exc:  # noqa: BLE001 - already gone is fine
                log.debug("docker stop %s: %s", h.name, exc)
            h.done.wait(30)
        try:
            _raw(h.sock).close()
        except OSError:
            pass
        self._remove_by_name(h.name)

    def _remove_by_name(self, name: str) -> None:
        try:
            self._client.containers.get(name).remove(force=True)
        except Exception as exc:  # noqa: BLE001 - already removed is fine
            log.debug("docker rm %s: %s", name, exc)

    def log_tail(self, handle: WorkerHandle, lines: int = 20) -> str:
        return "\n".join(list(getattr(handle, "lines", []))[-lines:])

    def status(self) -> dict[str, Any]:
        return {h.name: ("exited" if h.done.is_set() else "running") for h in self.handles}

    def close(self) -> None:
        for h in self.handles:
            if not h.done.is_set():
                self.kill(h, grace=0.5)
        if self._client is not None:
            mine = {"label": f"clustermgr={self.tag}"}
            for container in self._client.api.containers(all=True, quiet=True, filters=mine):
                self._remove_by_name(container["Id"])  # no inspect: some are going away
            self._client.close()


def _raw(sock: Any) -> Any:
    """The plain socket under the SDK's attach wrapper (SocketIO on a unix socket)."""
    return getattr(sock, "_sock", sock)


def addprocs_docker(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(DockerManager(np, image=..., ...))`` in one call."""
    from .batch import addprocs_with

    return addprocs_with(DockerManager, np, **kwargs)

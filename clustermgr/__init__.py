"""clustermgr: start workers on any cluster and drive them from one master.

The public API, re-exported from the modules that implement it::

    from clustermgr import addprocs, pmap, remotecall_fetch
    addprocs(4)
    pmap(lambda x: x * x, range(10))
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

from .calls import (  # noqa: E402
    Future,
    RemoteChannel,
    fetch,
    myid,
    nprocs,
    nworkers,
    procs,
    remote_do,
    remotecall,
    remotecall_fetch,
    remotecall_wait,
    spawnat,
    workers,
)
from .errors import (  # noqa: E402
    AuthError,
    ChannelClosedError,
    ClusterError,
    DecodeError,
    LaunchError,
    Preempted,
    ProcessExitedError,
    RemoteError,
    TopologyError,
)

# No submodule shares a name with a public function (pmap is in mapping.py, remote()
# in pools.py), so no import order can shadow one: tests/test_api.py checks.
from .pools import CachingPool, WorkerPool, default_worker_pool, remote  # noqa: E402

if TYPE_CHECKING:  # the names below are imported on first use (see _LAZY)
    from .adaptive import Adaptive, adapt
    from .aio import fetch_async, pmap_async, remotecall_async, spawnat_async
    from .checkpoint import Checkpointable, Resume
    from .cluster import addprocs, configure, everywhere, interrupt, rmprocs, shutdown
    from .executor import ClusterExecutor, WorkerLostError
    from .mapping import imap, pmap, preduce
    from .session import Session, attach_session, list_sessions, resume_session, start_session

__all__ = [
    "Adaptive", "AuthError", "CachingPool", "ChannelClosedError", "Checkpointable", "ClusterError",
    "ClusterExecutor", "DecodeError", "Future", "LaunchError", "Preempted", "ProcessExitedError",
    "RemoteChannel", "RemoteError", "Resume", "Session", "TopologyError", "WorkerLostError",
    "WorkerPool", "adapt", "addprocs", "attach_session", "configure", "default_worker_pool",
    "everywhere", "fetch", "fetch_async", "imap", "interrupt", "list_sessions", "myid", "nprocs",
    "nworkers", "pmap", "pmap_async", "preduce", "procs", "remote", "remote_do", "remotecall",
    "remotecall_async", "remotecall_fetch", "remotecall_wait", "resume_session", "rmprocs",
    "shutdown", "spawnat", "spawnat_async", "start_session", "workers",
]

#: names imported on first use, so that a worker (which imports this package but needs
#: neither the master nor the managers) starts fast
_LAZY = {
    **dict.fromkeys(["addprocs", "configure", "everywhere", "interrupt", "rmprocs", "shutdown"],
                    "cluster"),
    **dict.fromkeys(["imap", "pmap", "preduce"], "mapping"),
    **dict.fromkeys(["Adaptive", "adapt"], "adaptive"),
    **dict.fromkeys(["Checkpointable", "Resume"], "checkpoint"),
    **dict.fromkeys(["ClusterExecutor", "WorkerLostError"], "executor"),
    **dict.fromkeys(["fetch_async", "pmap_async", "remotecall_async", "spawnat_async"], "aio"),
    **dict.fromkeys(["Session", "attach_session", "list_sessions", "resume_session", "start_session"],
                    "session"),
}


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 module attribute hook
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'clustermgr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if "joblib" in __import__("sys").modules:  # joblib in use: offer the backend at once
    from . import joblib_backend as _joblib_backend  # noqa: F401

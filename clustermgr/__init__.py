"""clustermgr: start workers on any cluster and drive them from one master.

The public API, re-exported from the modules that implement it::

    from clustermgr import addprocs, pmap, remotecall_fetch
    addprocs(4)
    pmap(lambda x: x * x, range(10))
"""

__version__ = "0.1.0"

from .aio import fetch_async, pmap_async, remotecall_async, spawnat_async  # noqa: E402
from .cluster import (  # noqa: E402
    addprocs,
    configure,
    everywhere,
    interrupt,
    myid,
    nprocs,
    nworkers,
    procs,
    rmprocs,
    shutdown,
    workers,
)
from .errors import (  # noqa: E402
    AuthError,
    ChannelClosedError,
    ClusterError,
    LaunchError,
    ProcessExitedError,
    RemoteError,
    TopologyError,
)
from .executor import ClusterExecutor, WorkerLostError  # noqa: E402
from .pmap import pmap, preduce  # noqa: E402
from .pools import CachingPool, WorkerPool, default_worker_pool, remote  # noqa: E402
from .remote import (  # noqa: E402
    Future,
    RemoteChannel,
    fetch,
    remote_do,
    remotecall,
    remotecall_fetch,
    remotecall_wait,
    spawnat,
)
from .session import Session, attach_session, list_sessions, resume_session, start_session  # noqa: E402

__all__ = [
    "AuthError", "CachingPool", "ChannelClosedError", "ClusterError", "ClusterExecutor", "Future",
    "LaunchError", "ProcessExitedError", "RemoteChannel", "RemoteError", "Session", "TopologyError",
    "WorkerLostError", "WorkerPool", "addprocs", "attach_session", "configure",
    "default_worker_pool", "everywhere", "fetch", "fetch_async", "interrupt", "list_sessions",
    "myid", "nprocs", "nworkers", "pmap", "pmap_async", "preduce", "procs", "remote", "remote_do",
    "remotecall", "remotecall_async", "remotecall_fetch", "remotecall_wait", "resume_session",
    "rmprocs", "shutdown", "spawnat", "spawnat_async", "start_session", "workers",
]

if "joblib" in __import__("sys").modules:  # joblib in use: offer the backend at once
    from . import joblib_backend as _joblib_backend  # noqa: F401

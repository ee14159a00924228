"""The process group: addprocs, rmprocs, workers, myid, interrupt, everywhere.

The master node is created on first use (it binds its port then) and torn down at
interpreter exit or by :func:`shutdown`, which removes every worker it started.  On a
worker these functions answer from the worker's view of the cluster; adding and removing
workers is the master's job.
"""

from __future__ import annotations

import atexit
import functools
import os
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ClusterError, LaunchError

if sys.version_info < (3, 11):  # pragma: no cover - the backport has the same class
    from exceptiongroup import ExceptionGroup
from .calls import myid, nprocs, nworkers, procs, remotecall, workers  # noqa: F401 - public here too
from .managers.base import ClusterManager, LaunchSpec, ManageOp
from .managers.local import LocalManager
from .master import Launch, MasterNode
from .protocol import Kind, pack_header
from .settings import Settings
from .transport import Node, current_node, log, set_current_node

TOPOLOGIES = ("all_to_all", "master_worker", "custom")
_lock = threading.RLock()
_settings = Settings()
_managers: list[ClusterManager] = []
_atexit_registered = False


def _forget_after_fork() -> None:
    """In a forked child the parent's master, managers and lock are not ours: a first use
    there starts a master of its own (transport.py forgets the node itself)."""
    global _lock
    _lock = threading.RLock()
    _managers.clear()
    _settings._frozen = False


os.register_at_fork(after_in_child=_forget_after_fork)


def node() -> Node:
    """This process's node, creating the master's on first use."""
    global _atexit_registered
    existing = current_node()
    if existing is not None:
        return existing
    with _lock:
        if current_node() is None:
            master = MasterNode(_settings)
            _settings._frozen = True
            master.start()
            set_current_node(master)
            if not _atexit_registered:
                atexit.register(_shutdown_backstop)  # atexit runs the last registered first
                atexit.register(_shutdown_at_exit)
                _atexit_registered = True
        return current_node()  # type: ignore[return-value]


def master() -> MasterNode:
    n = node()
    if not isinstance(n, MasterNode):
        raise ClusterError("only the master (process 1) can add or remove workers")
    return n


def configure(**settings: Any) -> None:
    """Change cluster settings (see ``clustermgr.settings.Settings``): heartbeat_interval,
    heartbeat_timeout, master_grace, output, bind, port, shutdown_timeout."""
    _settings.update(**settings)


@dataclass
class AddprocsOptions:
    """The keywords of ``addprocs``; unknown ones are rejected with this list."""

    topology: str = "all_to_all"
    lazy: bool = True
    dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    python: str | None = None
    exeflags: Sequence[str] | str = ()
    enable_threaded_blas: bool = False
    timeout: float = 60.0
    min_workers: int | None = None

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def split(cls, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(addprocs keywords, the rest)``: for the forms that also build a manager."""
        runtime = {k: v for k, v in kwargs.items() if k in cls.names()}
        return runtime, {k: v for k, v in kwargs.items() if k not in runtime}

    @classmethod
    def parse(cls, kwargs: dict[str, Any]) -> AddprocsOptions:
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise TypeError(f"addprocs() got unknown keyword(s) {unknown}; valid keywords: "
                            f"{cls.names()}. Manager options go to the manager, e.g. "
                            "addprocs(LocalManager(4, ...))")
        opts = cls(**kwargs)
        if opts.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {TOPOLOGIES}, not {opts.topology!r}")
        if not (isinstance(opts.timeout, (int, float)) and opts.timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {opts.timeout!r}")
        if isinstance(opts.exeflags, str):
            opts.exeflags = shlex.split(opts.exeflags)
        return opts


def addprocs(n_or_manager: int | ClusterManager | None = None, **kwargs: Any) -> list[int]:
    """Start workers and return their ids once all have joined.

    ``addprocs(4)`` starts 4 local workers; ``addprocs()`` one per CPU this process may
    use; ``addprocs(["host", ("user@host2:2222", 4)], **kw)`` SSH workers (``SSHManager``
    keywords accepted too); ``addprocs(manager)`` uses any ``ClusterManager``.  Workers are usable as each
    joins (call ``addprocs`` in a thread to start working before the slowest arrives).
    Raises ``LaunchError`` naming the workers that failed (``.joined`` lists those that did
    join; they stay).  Keywords: see ``AddprocsOptions``.
    """
    if isinstance(n_or_manager, (list, tuple)):
        n_or_manager, kwargs = _ssh_manager(n_or_manager, kwargs)
    opts = AddprocsOptions.parse(kwargs)
    manager = _manager_for(n_or_manager)
    m, launches = start_workers(manager, opts)
    joined = _await_joins(m, launches, opts.timeout, opts.min_workers)
    if not opts.lazy and opts.topology == "all_to_all":
        _verify_routes(joined)
    return joined


def start_workers(manager: ClusterManager, opts: AddprocsOptions,
                  count: int | None = None) -> tuple[MasterNode, list[Launch]]:
    """Have *manager* start its workers (*count* of them, when it is ``scalable``) and
    return the master and one ``Launch`` per worker, without waiting for any to join
    (a ``Launch`` gets its ``wid`` when its worker joins, or an ``error``).  ``addprocs``
    waits on them; ``adapt`` watches them."""
    m = master()
    _set_topology(m, opts.topology)
    register_manager(manager)
    launches: list[Launch] = []

    def expect(launch_id: str) -> None:
        with m.joined:
            m.launches[launch_id] = launch = Launch(None, manager, time.monotonic())
            launches.append(launch)

    # a manager may bring defaults for these (a batch manager: from the configuration files)
    spec = LaunchSpec(m.address, m.secret, opts.dir or getattr(manager, "dir", None) or os.getcwd(),
                      dict(opts.env), opts.python or getattr(manager, "python", None) or sys.executable,
                      list(opts.exeflags),
                      opts.enable_threaded_blas, m.on_process_exit, expect, m.on_running,
                      m.encrypted, count)
    try:
        for handle in manager.launch(spec):
            _attach_handle(m, manager, handle)
    except Exception as exc:
        _abandon(m, launches)
        raise LaunchError(f"{manager!r} failed to launch workers: {exc}",
                          joined=[done.wid for done in launches if done.wid]) from exc
    return m, launches


def _ssh_manager(machines: Sequence[Any], kwargs: dict[str, Any]) -> tuple[ClusterManager, dict]:
    """``addprocs(["host", ("host2", 4)], **kw)``: SSH workers; kw split between the
    runtime and ``SSHManager``."""
    from .managers.ssh import SSHManager

    runtime, ssh = AddprocsOptions.split(kwargs)
    unknown = sorted(set(ssh) - set(SSHManager.default_params()))
    if unknown:
        raise TypeError(f"addprocs(machines) got unknown keyword(s) {unknown}; valid keywords: "
                        f"{AddprocsOptions.names() + sorted(SSHManager.default_params())}")
    return SSHManager(machines, **ssh), runtime


def register_manager(manager: ClusterManager) -> None:
    """Have ``shutdown()`` close *manager* (addprocs does this for the managers it uses)."""
    with _lock:
        if manager not in _managers:
            _managers.append(manager)


def release_manager(manager: ClusterManager) -> None:
    """Close *manager* now and forget it (for owners that end before the cluster does,
    such as a ClusterExecutor that started its own workers)."""
    with _lock:
        if manager in _managers:
            _managers.remove(manager)
    manager.close()


def _manager_for(n_or_manager: Any) -> ClusterManager:
    if isinstance(n_or_manager, ClusterManager):
        return n_or_manager
    if n_or_manager is None or (isinstance(n_or_manager, int) and not isinstance(n_or_manager, bool)):
        return LocalManager(n_or_manager)
    raise TypeError(f"addprocs takes a number of workers or a ClusterManager, not {n_or_manager!r}")


def _set_topology(m: MasterNode, topology: str) -> None:
    if m.live_ids() and m.topology != topology:
        raise ValueError(f"the cluster already runs with topology {m.topology!r}; remove its "
                         f"workers before switching to {topology!r}")
    m.topology = topology


def _attach_handle(m: MasterNode, manager: ClusterManager, handle: Any) -> None:
    with m.joined:
        launch = m.launches.get(handle.launch_id)
        if launch is None:  # a manager that did not call spec.environment()
            launch = m.launches[handle.launch_id] = Launch(None, manager, time.monotonic())
        launch.handle = handle
        launch.started = time.monotonic()
        launch.queued = getattr(handle, "queued", False)
        if launch.wid:
            m.call_soon(lambda: m._notify_manager(launch, ManageOp.REGISTER, launch.wid))


def _await_joins(m: MasterNode, launches: list[Launch], timeout: float,
                 min_workers: int | None = None) -> list[int]:
    """Wait until every launch joined or failed.  A queued launch (a job still waiting in
    its scheduler's queue) has no join clock: its manager bounds the queue wait."""
    with m.joined:
        while True:
            now = time.monotonic()
            for launch in launches:
                late = now - launch.started > timeout
                if not launch.wid and not launch.error and not launch.queued and late:
                    launch.error = f"did not join within timeout={timeout} s"
            waiting = [launch for launch in launches
                       if not launch.error and not (launch.wid and launch.wid <= m.announced)]
            if not waiting:
                break
            clocks = [launch.started + timeout for launch in waiting
                      if not launch.queued and not launch.wid]
            m.joined.wait(min(clocks) - now if clocks else 1.0)
    failed = [launch for launch in launches if launch.error]
    joined = sorted(launch.wid for launch in launches if launch.wid)
    if failed:
        _abandon(m, failed)
        lines = "\n".join(f"  - {_describe(launch)}: {launch.error}" for launch in failed)
        if min_workers is not None and len(joined) >= min_workers:
            log.warning("addprocs: %d of %d workers started (min_workers=%d); the others failed:\n%s",
                        len(joined), len(launches), min_workers, lines)
            return joined
        raise LaunchError(f"{len(failed)} of {len(launches)} workers failed to start:\n{lines}",
                          joined=joined)
    return joined


def _describe(launch: Launch) -> str:
    handle = launch.handle
    return f"worker {handle.launch_id} on {handle.host}" if handle else "a worker"


def _abandon(m: MasterNode, launches: Iterable[Launch]) -> None:
    """Kill workers that failed to join (they may still be starting)."""
    with m.joined:
        for launch in launches:
            launch.error = launch.error or "abandoned"
    for launch in launches:
        if launch.handle is not None and not launch.wid:
            launch.manager.kill(launch.handle, 0.0)


def _verify_routes(ids: list[int]) -> None:
    peers = workers()
    for fut in [remotecall(_ping_all, w, peers) for w in ids]:
        fut.fetch(60.0)


def _ping_all(peers: list[int]) -> None:
    for fut in [remotecall(myid, p) for p in peers if p != myid()]:
        fut.fetch(60.0)


#: How long a removal with ``waitfor=0`` lets the workers leave before killing them.
BACKGROUND_GRACE = 10.0


def rmprocs(*ids: int | Iterable[int], waitfor: float = 10.0) -> threading.Thread | None:
    """Remove workers: ask each to exit, wait up to *waitfor* seconds, then kill the rest.

    Their outstanding calls fail with ``ProcessExitedError`` ("removed by rmprocs").
    ``waitfor=0`` returns at once, as Julia's does: the removal goes on in the returned
    (daemon) thread, which kills workers still there after ``BACKGROUND_GRACE`` seconds.
    """
    m = master()
    targets = [_worker_for_removal(m, wid) for wid in _flatten(ids)]
    targets = [w for w in targets if w is not None]
    if waitfor == 0:
        thread = threading.Thread(target=_remove, args=(m, targets, BACKGROUND_GRACE),
                                  name="clustermgr-rmprocs", daemon=True)
        thread.start()
        return thread
    _remove(m, targets, waitfor)
    return None


def _remove(m: MasterNode, targets: list, waitfor: float) -> None:
    """Ask *targets* to leave, give them *waitfor* seconds, then kill what is left."""

    def ask() -> None:
        for w in targets:
            if w.state == "up":
                w.state = "removing"
                if not m._send_raw(w.identity, [pack_header(Kind.SHUTDOWN, 0, 1, w.id), b""]):
                    log.info("worker %d is unreachable; it will be asked again if it speaks", w.id)

    m.call_soon(ask)
    deadline = time.monotonic() + waitfor
    for w in targets:
        w.gone.wait(max(0.0, deadline - time.monotonic()))
    _finish_removal(m, targets)


def _finish_removal(m: MasterNode, targets: list) -> None:
    killers = [threading.Thread(target=w.launch.manager.kill, args=(w.launch.handle, 0.0))
               for w in targets if w.launch is not None and w.launch.handle is not None]
    for t in killers:
        t.start()
    for t in killers:
        t.join()
    for w in targets:
        if w.launch is not None:
            w.gone.wait(5.0)  # the manager's exit report follows the kill
        m.call_soon(functools.partial(m.declare_dead, w.id, "removed by rmprocs", exited=True))
        if w.launch is not None and w.launch.handle is not None:
            w.launch.manager.manage(w.launch.handle, ManageOp.FINALIZE, w.id)
    for w in targets:
        w.gone.wait(5.0)


def _worker_for_removal(m: MasterNode, wid: Any) -> Any:
    if isinstance(wid, bool) or not isinstance(wid, int):
        raise TypeError(f"rmprocs takes worker ids (ints), not {wid!r}")
    if wid == 1:
        raise ValueError("the master (process 1) cannot be removed; call shutdown() instead")
    w = m.workers.get(wid)
    if w is None:
        raise ValueError(f"there is no worker {wid}; the workers are {m.live_ids()}")
    return None if w.state == "dead" and w.gone.is_set() else w


def _flatten(ids: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for item in ids:
        if isinstance(item, (list, tuple, set, frozenset, range)):
            out.extend(item)
        else:
            out.append(item)
    return out


def interrupt(ids: int | Iterable[int] | None = None) -> None:
    """Interrupt the task running on each of *ids* (default: all workers).  The task's
    caller gets a ``RemoteError`` wrapping ``KeyboardInterrupt``; the worker stays."""
    m = master()
    targets = m.live_ids() if ids is None else _flatten([ids])
    for wid in targets:
        m.check_target(wid)
    for wid in targets:
        m.send_msg(Kind.INTERRUPT, wid)
        w = m.workers[wid]
        if w.launch is not None and w.launch.handle is not None:
            m._notify_manager(w.launch, ManageOp.INTERRUPT, wid)


def everywhere(fn_or_source: Callable | str, *args: Any, procs: Iterable[int] | None = None,
               timeout: float | None = None) -> list[Any]:
    """Run on many processes and return their results, in the order of *procs*.

    A callable runs ``fn(*args)`` on every worker by default.  A string of source runs in
    ``__main__`` of every process, *master included* (as Julia's ``@everywhere``), so the
    names it defines can be used in code the master sends.
    """
    if isinstance(fn_or_source, str):
        if args:
            raise TypeError("everywhere(source) takes no arguments; put them in the source")
        targets = list(procs) if procs is not None else _all_procs()
        futs = [remotecall(_exec_in_main, p, fn_or_source) for p in targets]
    elif callable(fn_or_source):
        targets = list(procs) if procs is not None else workers()
        futs = [remotecall(fn_or_source, p, *args) for p in targets]
    else:
        raise TypeError(f"everywhere takes a callable or a string of source, not {fn_or_source!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    results, errors = [], []
    for p, fut in zip(targets, futs, strict=True):
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            results.append(fut.fetch(left))
        except Exception as exc:  # noqa: BLE001 - every process's error is collected
            errors.append((p, exc))
    if errors:
        failed = ", ".join(str(p) for p, _ in errors)
        raise ExceptionGroup(f"everywhere: {len(errors)} of {len(targets)} processes failed "
                             f"(process {failed})", [exc for _, exc in errors])
    return results


def _all_procs() -> list[int]:
    return procs()


def _exec_in_main(source: str) -> None:
    import __main__

    exec(compile(source, "<everywhere>", "exec"), __main__.__dict__)


def _shutdown_at_exit() -> None:
    """The interpreter exits: :func:`shutdown`.  A Ctrl-C meanwhile (a user's second, while
    workers take their time to leave) skips the waiting, never the removal."""
    try:
        shutdown()
    except KeyboardInterrupt:
        _shutdown_backstop()


def _shutdown_backstop() -> None:
    """After an interrupted :func:`shutdown` at exit (registered to run after
    :func:`_shutdown_at_exit` too, in case a Ctrl-C stopped that one before it began): the
    workers still go, at once, deaf to further Ctrl-C."""
    import signal

    if not isinstance(current_node(), MasterNode):
        return
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        print("clustermgr: interrupted at exit; ending the workers without waiting", file=sys.stderr)
        _shutdown_now()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _shutdown_now() -> None:
    """What shutdown does, without waiting for workers to leave: every manager kills what it
    started (processes, jobs) at once."""
    n = current_node()
    if isinstance(n, MasterNode):
        _close(n, tolerant=True)


def _close(n: MasterNode, tolerant: bool = False) -> None:
    """The end of a shutdown: every manager closes (kills what it started), the node stops.
    *tolerant* (at an interrupted exit): a manager that fails does not stop the others."""
    from .adaptive import stop_all

    stop_all()
    with _lock:
        managers, _managers[:] = list(_managers), []
    for manager in managers:
        try:
            manager.close()
        except Exception:  # noqa: BLE001 - re-raised unless tolerant
            if not tolerant:
                raise
            log.exception("closing %r at exit", manager)
    n.shutdown_io()
    set_current_node(None)
    _settings._frozen = False


def shutdown() -> None:
    """Remove every worker, close every manager, stop the master's node.  Runs at exit;
    a later ``addprocs`` starts a new master."""
    n = current_node()
    if not isinstance(n, MasterNode):
        if n is not None:
            import warnings

            warnings.warn(f"clustermgr.shutdown() on worker {n.myid} does nothing: only the master "
                          "(process 1) removes workers; a worker leaves when the master removes it "
                          "(rmprocs) or ends", RuntimeWarning, stacklevel=2)
        return
    from .adaptive import stop_all

    stop_all()  # nothing is started or retired behind the shutdown's back
    ids = n.live_ids()
    if ids:
        rmprocs(ids, waitfor=_settings.shutdown_timeout)
    _close(n)

"""Worker pools: who is free to take the next call.

``WorkerPool`` hands out each worker to one call at a time.  ``CachingPool`` also ships each
function once per worker and afterwards sends only a key (big closures, big captured
arrays); ``pmap`` over it uses the same cache.  The default pool follows the cluster:
workers join it as they join and leave it as they die.  A pool sent to another process
stays on its owner, as in Julia: there it is a proxy whose ``take``/``put`` ask the owner
(``refs.py`` keeps the pool alive while proxies exist).
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from . import serialize
from .calls import Future, get_node, remotecall
from .errors import ClusterError

_FN_CACHE: dict[str, Callable] = {}
_keys = itertools.count(1)
_pool_ids = itertools.count(1)


def _alive(wid: int) -> bool:
    """A pool member that can still run calls: the master always can (a pool of ``[1]``
    runs on the master), a worker while it is in the cluster and not draining (``adapt``
    retires it, or its walltime nears)."""
    from .cluster import procs

    return wid in procs() and wid not in _draining()


def _draining() -> dict[int, str]:
    """The master's draining workers (none seen from a worker)."""
    return getattr(get_node(), "draining", None) or {}


class WorkerPool:
    """A set of workers, each running at most one of the pool's calls at a time."""

    def __init__(self, ids: Iterable[int]) -> None:
        self._ids = list(dict.fromkeys(ids))
        if not self._ids:
            raise ValueError("a WorkerPool needs at least one worker id")
        self._free = collections.deque(self._ids)
        self._cond = threading.Condition()
        self._ref = _new_ref()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.workers()})"

    def workers(self) -> list[int]:
        """The pool's workers that are still alive."""
        with self._cond:
            self._ids = [w for w in self._ids if _alive(w)]
            return list(self._ids)

    def __len__(self) -> int:
        return len(self.workers())

    def add(self, wid: int) -> None:
        with self._cond:
            if wid not in self._ids:
                self._ids.append(wid)
                self._free.append(wid)
                self._cond.notify()

    def take(self, timeout: float | None = None) -> int:
        """A free worker (blocks until one is, or *timeout*; ``TimeoutError``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                while self._free:
                    wid = self._free.popleft()
                    if _alive(wid):
                        return wid
                    if wid in self._ids:
                        self._ids.remove(wid)
                if not self.workers():
                    raise ClusterError("every worker of this pool is gone")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no free worker in {self!r} within {timeout} s")
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))

    def put(self, wid: int) -> None:
        with self._cond:
            if wid in self._ids and wid not in self._free:
                self._free.append(wid)
                self._cond.notify_all()

    def isready(self) -> bool:
        """True when a worker of the pool is free (``take`` would not block)."""
        with self._cond:
            return any(_alive(w) for w in self._free)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a worker is free; False when *timeout* seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not any(_alive(w) for w in self._free):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.5 if remaining is None else min(remaining, 0.5))
            return True

    def wrap(self, f: Callable, wid: int) -> Callable | CachedFunction:
        """What to send to *wid* for *f* (the CachingPool sends a key)."""
        return f

    def remotecall(self, f: Callable, *args: Any, **kwargs: Any) -> Future:
        """Run on the next free worker; the worker returns to the pool when the call ends."""
        wid = self.take()
        try:
            fut = remotecall(self.wrap(f, wid), wid, *args, **kwargs)
        except BaseException:
            self.put(wid)
            raise
        fut.add_done_callback(lambda _: self.put(wid))
        return fut

    def remotecall_fetch(self, f: Callable, *args: Any, **kwargs: Any) -> Any:
        return self.remotecall(f, *args, **kwargs).fetch()

    def remotecall_wait(self, f: Callable, *args: Any, **kwargs: Any) -> Future:
        from .calls import remotecall_wait

        wid = self.take()
        try:
            return remotecall_wait(self.wrap(f, wid), wid, *args, **kwargs)
        finally:
            self.put(wid)

    def remote_do(self, f: Callable, *args: Any, **kwargs: Any) -> None:
        """Fire and forget on a free worker, which goes back to the pool at once."""
        from .calls import remote_do

        wid = self.take()
        try:
            remote_do(self.wrap(f, wid), wid, *args, **kwargs)
        finally:
            self.put(wid)

    def function_cache(self) -> FunctionCache | None:
        """The cache pmap ships functions through (a CachingPool's own), or None."""
        return None

    def __reduce__(self):
        from .calls import get_node

        owner, pid = self._ref
        node = get_node()
        node.refs.sent(owner, "p", pid, self if owner == node.myid else None)
        return _rebuild_pool, (owner, pid, self.function_cache() is not None)


class CachingPool(WorkerPool):
    """A WorkerPool that sends each function to each worker once.  Call :meth:`clear`
    to free the workers' copies."""

    def __init__(self, ids: Iterable[int]) -> None:
        super().__init__(ids)
        self._shipped = FunctionCache()

    def wrap(self, f: Callable, wid: int) -> Callable | CachedFunction:
        return self._shipped.ref(f, wid)

    def function_cache(self) -> FunctionCache:
        return self._shipped

    def clear(self) -> None:
        """Free the workers' copies of the functions this pool shipped."""
        self._shipped.clear()


class FunctionCache:
    """Ships functions once per worker; the worker keeps them in ``_FN_CACHE``."""

    def __init__(self) -> None:
        self._by_fn: dict[int, tuple[str, bytes, Callable]] = {}
        self._lock = threading.Lock()
        #: (id(f), wid) -> the key-only reference, once f went to wid with its payload
        self._refs: dict[tuple[int, int], CachedFunction] = {}

    def ref(self, f: Callable, wid: int) -> Callable | CachedFunction:
        from .calls import myid

        known = self._refs.get((id(f), wid))  # the common case: shipped there already
        if known is not None:
            return known
        if wid == myid():
            return f  # a call to this process is not serialized
        with self._lock:
            entry = self._by_fn.get(id(f))
            if entry is None:  # keys name this process: workers cache for many senders
                entry = (f"{myid()}-{id(self)}-{next(_keys)}", serialize.pickle_bytes(f), f)
                self._by_fn[id(f)] = entry
            key, payload, _ = entry
            known = self._refs.get((id(f), wid))  # another thread shipped it meanwhile
            if known is not None:
                return known
            self._refs[(id(f), wid)] = CachedFunction(key, None)
            return CachedFunction(key, payload)

    def clear(self) -> None:
        from .calls import remote_do

        with self._lock:
            by_worker: dict[int, list[str]] = {}
            for (_, wid), ref in self._refs.items():
                by_worker.setdefault(wid, []).append(ref.key)
            self._by_fn.clear()
            self._refs.clear()
        for wid, keys in by_worker.items():
            if _alive(wid):
                remote_do(_forget, wid, keys)


class CachedFunction:
    """A function by key; carries the pickled function the first time it goes to a worker."""

    __slots__ = ("key", "payload")

    def __init__(self, key: str, payload: bytes | None) -> None:
        self.key, self.payload = key, payload

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _resolve(self.key, self.payload)(*args, **kwargs)

    def __reduce__(self):
        return _resolve, (self.key, self.payload)


serialize.PLAIN_TYPES.add(CachedFunction)


def _resolve(key: str, payload: bytes | None) -> Callable:
    if payload is not None:
        fn = _FN_CACHE[key] = cloudpickle.loads(payload)
        return fn
    try:
        return _FN_CACHE[key]
    except KeyError:
        raise ClusterError(f"function {key} is not cached on this worker (was the pool "
                           "cleared while calls were in flight?)") from None


def _forget(keys: list[str]) -> None:
    for key in keys:
        _FN_CACHE.pop(key, None)


class _DefaultPool(WorkerPool):
    """Follows ``workers()``: joins and deaths are seen at each take."""

    def __init__(self) -> None:
        self._ids = []
        self._free = collections.deque()
        self._cond = threading.Condition()
        self._ref = _new_ref()

    def workers(self) -> list[int]:
        from .cluster import workers

        current = workers()
        draining = _draining()
        if draining:
            current = [w for w in current if w not in draining]
        with self._cond:
            if current == self._ids:  # the common case: nobody joined or left
                return list(current)
            known, live = set(self._ids), set(current)  # sets: 200 workers cost 200, not 40,000
            for wid in current:
                if wid not in known:
                    self._ids.append(wid)
                    self._free.append(wid)
            self._ids = [w for w in self._ids if w in live]
            if any(w not in live for w in self._free):  # the master (no workers then), or the dead
                self._free = collections.deque(w for w in self._free if w in live)
            return list(self._ids)

    def take(self, timeout: float | None = None) -> int:
        self.workers()
        return super().take(timeout)


class _PoolProxy(WorkerPool):
    """A pool owned by another process, as seen here: each operation asks the owner."""

    def __init__(self, owner: int, pid: int, caching: bool) -> None:
        self._ref = (owner, pid)
        self._shipped = FunctionCache() if caching else None

    def __repr__(self) -> str:
        return f"<pool {self._ref[1]} of process {self._ref[0]}>"

    def _ask(self, method: str, *args: Any) -> Any:
        from .calls import remotecall_fetch

        return remotecall_fetch(_pool_call, self._ref[0], self._ref[1], method, *args)

    def workers(self) -> list[int]:
        return self._ask("workers")

    def add(self, wid: int) -> None:
        self._ask("add", wid)

    def take(self, timeout: float | None = None) -> int:
        return self._ask("take", timeout)

    def put(self, wid: int) -> None:
        from .calls import remote_do

        remote_do(_pool_call, self._ref[0], self._ref[1], "put", wid)

    def isready(self) -> bool:
        return self._ask("isready")

    def wait(self, timeout: float | None = None) -> bool:
        return self._ask("wait", timeout)

    def wrap(self, f: Callable, wid: int) -> Callable | CachedFunction:
        return f if self._shipped is None else self._shipped.ref(f, wid)

    def function_cache(self) -> FunctionCache | None:
        return self._shipped


def _new_ref() -> tuple[int, int]:
    from .calls import myid

    return myid(), next(_pool_ids)


def _rebuild_pool(owner: int, pid: int, caching: bool) -> WorkerPool:
    from .calls import get_node

    pool = get_node().refs.rebuilt(owner, "p", pid, lambda: _PoolProxy(owner, pid, caching))
    if pool is None:
        raise ClusterError(f"pool {pid} was released by its owner, process {owner}")
    return pool


def _pool_call(pid: int, method: str, *args: Any) -> Any:
    """On a pool's owner: run one of its methods for a proxy elsewhere."""
    from .calls import get_node

    pool = get_node().refs.lookup("p", pid)
    if pool is None:
        raise ClusterError(f"pool {pid} is unknown to its owner (released?)")
    return getattr(pool, method)(*args)


_default: _DefaultPool | None = None


def default_worker_pool() -> WorkerPool:
    """The pool of every worker in the cluster (the master alone when there are none)."""
    global _default
    if _default is None:
        _default = _DefaultPool()
    return _default


def remote(f: Callable, pool: WorkerPool | None = None) -> Callable:
    """A function that runs *f* on a free worker of *pool* and returns its value."""
    p = pool if pool is not None else default_worker_pool()  # an empty pool is not None

    def call(*args: Any, **kwargs: Any) -> Any:
        return p.remotecall_fetch(f, *args, **kwargs)

    call.__name__ = f"remote({getattr(f, '__name__', 'f')})"
    call.__doc__ = f.__doc__
    return call

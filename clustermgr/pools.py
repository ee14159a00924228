"""Worker pools: who is free to take the next call.

``WorkerPool`` hands out each worker to one call at a time.  ``CachingPool`` also ships each
function once per worker and afterwards sends only a key (big closures, big captured
arrays).  The default pool follows the cluster: workers join it as they join and leave it
as they die.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from .errors import ClusterError
from .calls import Future, remotecall

_FN_CACHE: dict[str, Callable] = {}
_keys = itertools.count(1)


def _alive(wid: int) -> bool:
    """A pool member that can still run calls: the master always can (a pool of ``[1]``
    runs on the master), a worker while it is in the cluster."""
    from .cluster import procs

    return wid in procs()


class WorkerPool:
    """A set of workers, each running at most one of the pool's calls at a time."""

    def __init__(self, ids: Iterable[int]) -> None:
        self._ids = list(dict.fromkeys(ids))
        if not self._ids:
            raise ValueError("a WorkerPool needs at least one worker id")
        self._free = collections.deque(self._ids)
        self._cond = threading.Condition()

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
                self._cond.notify()

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
        fut = self.remotecall(f, *args, **kwargs)
        fut.wait()
        return fut


class CachingPool(WorkerPool):
    """A WorkerPool that sends each function to each worker once.  Call :meth:`clear`
    to free the workers' copies."""

    def __init__(self, ids: Iterable[int]) -> None:
        super().__init__(ids)
        self._shipped = FunctionCache()

    def wrap(self, f: Callable, wid: int) -> Callable | CachedFunction:
        return self._shipped.ref(f, wid)

    def clear(self) -> None:
        self._shipped.clear()


class FunctionCache:
    """Ships functions once per worker; the worker keeps them in ``_FN_CACHE``."""

    def __init__(self) -> None:
        self._by_fn: dict[int, tuple[str, bytes, Callable]] = {}
        self._shipped: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def ref(self, f: Callable, wid: int) -> Callable | CachedFunction:
        from .cluster import myid

        if wid == myid():
            return f  # a call to this process is not serialized
        with self._lock:
            entry = self._by_fn.get(id(f))
            if entry is None:
                entry = (f"{id(self)}-{next(_keys)}", cloudpickle.dumps(f, protocol=5), f)
                self._by_fn[id(f)] = entry
            key, payload, _ = entry
            if (key, wid) in self._shipped:
                return CachedFunction(key, None)
            self._shipped.add((key, wid))
            return CachedFunction(key, payload)

    def clear(self) -> None:
        from .calls import remote_do

        with self._lock:
            by_worker: dict[int, list[str]] = {}
            for key, wid in self._shipped:
                by_worker.setdefault(wid, []).append(key)
            self._shipped.clear()
            self._by_fn.clear()
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

    def workers(self) -> list[int]:
        from .cluster import workers

        current = workers()
        with self._cond:
            for wid in current:
                if wid not in self._ids:
                    self._ids.append(wid)
                    self._free.append(wid)
            self._ids = [w for w in self._ids if w in current]
            return list(self._ids)

    def take(self, timeout: float | None = None) -> int:
        self.workers()
        return super().take(timeout)


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

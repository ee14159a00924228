"""Remote calls, Futures and RemoteChannels: the part of the API every process uses.

A call is one CALL message; its Future's id is the message id, so the RESULT that answers
it finds the Future directly.  Results are stored, still serialized, in the caller's
process and deserialized by the first ``fetch`` in the fetching thread.  A Future pickled
to another process becomes a reference ``(owner, id, where)``; fetching it there asks the
owner, which answers when the value is in.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import serialize
from .errors import ClusterError, RemoteError, RemoteTraceback
from .protocol import Flag, Kind, pack_header

if TYPE_CHECKING:
    from .transport import Node

_UNSET = object()
#: Bound on waiting for an owner's answer to bookkeeping requests (cancel, isready).
CONTROL_TIMEOUT = 30.0


def get_node() -> Node:
    from .cluster import node

    return node()


# --- errors raised by user code travel as this payload ---------------------------------

class ErrorPayload:
    """What a process sends back when user code raised: enough to rebuild a readable error
    even when the exception itself cannot be pickled or unpickled."""

    def __init__(self, worker_id: int, exc: BaseException) -> None:
        self.worker_id = worker_id
        self.type_name = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
        self.message = str(exc)
        self.tb = "".join(traceback.format_exception(exc))
        try:
            self.exc_frames: list | None = serialize.dumps(exc)
            serialize.loads(self.exc_frames)  # refuse exceptions that cannot come back
        except Exception:  # noqa: BLE001 - fall back to the text
            self.exc_frames = None

    def to_exception(self) -> RemoteError:
        cause: BaseException | None = None
        if self.exc_frames is not None:
            try:
                cause = serialize.loads(self.exc_frames)
            except Exception:  # noqa: BLE001 - class missing here: use the text
                cause = None
        if cause is None:
            cause = RemoteTraceback(self.tb)
        else:
            cause.__cause__ = RemoteTraceback(self.tb)
        err = RemoteError(self.worker_id, f"{self.type_name}: {self.message}")
        err.__cause__ = cause
        return err


def local_error(exc: BaseException) -> RemoteError:
    """*exc*, raised by user code in this process, in the shape a remote failure has (a
    ``RemoteError`` with *exc* as its ``__cause__``), so that callers see one behaviour
    wherever the code ran."""
    from .cluster import myid

    if isinstance(exc, RemoteError):
        return exc
    err = RemoteError(myid(), f"{type(exc).__qualname__}: {exc}")
    err.__cause__ = exc
    return err


def error_frames(worker_id: int, exc: BaseException) -> list:
    return serialize.dumps(ErrorPayload(worker_id, exc))


# --- Future ----------------------------------------------------------------------------

class Future:
    """The eventual result of a remote call (or of a Future owned by another process).

    ``where`` is the process that computes the value; ``owner`` the process that stores it
    (the caller).  Thread-safe.  Users get Futures from ``remotecall``/``spawnat``.
    """

    def __init__(self, where: int, *, node: Node | None = None, owner: int | None = None,
                 fid: int | None = None) -> None:
        self._node = node or get_node()
        self.where = where
        self.owner = self._node.myid if owner is None else owner
        self.id = self._node.next_id() if fid is None else fid
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._frames: list | None = None
        self._flags = 0
        self._value: Any = _UNSET
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Future], None]] = []
        self._proxy: Future | None = None  # for a Future owned elsewhere: our FETCH

    def __repr__(self) -> str:
        state = "ready" if self._event.is_set() else "pending"
        return f"<Future {self.owner}:{self.id} where={self.where} {state}>"

    # completion (I/O thread or the local executor)
    def _set_frames(self, frames: list, flags: int, src: int) -> None:
        self._frames, self._flags = frames, flags
        self._finish()

    def _set_value(self, value: Any) -> None:
        self._value = value
        self._finish()

    def _set_exception(self, exc: BaseException) -> None:
        self._exception = exc
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, fn: Callable[[Future], None]) -> None:
        """Call ``fn(future)`` once the value is in (at once if it is already)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _raw_frames(self) -> tuple[list, int] | None:
        """Serialized value for another process, or None when the outcome is an exception."""
        if self._frames is not None:
            return self._frames, self._flags
        if self._value is not _UNSET:
            return serialize.dumps(self._value), Flag.NONE
        return None

    # user API
    def done(self) -> bool:
        return self._event.is_set()

    def isready(self) -> bool:
        """True when ``fetch`` would not block (asks the owner for a Future owned elsewhere)."""
        if self._event.is_set() or self.owner == self._node.myid:
            return self._event.is_set()
        if self._proxy is not None and self._proxy.done():
            return True
        probe = Future(self.owner, node=self._node)
        self._node.request(Kind.FETCH, self.owner, None, probe, flags=Flag.WANT_ACK, ref=self.id)
        return bool(probe.fetch(CONTROL_TIMEOUT))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the value is in; True if it is, False on timeout.  Never raises the
        remote error (``fetch`` does)."""
        if self.owner != self._node.myid and not self._event.is_set():
            return self._node.block_until(self._remote(), timeout)
        return self._event.is_set() or self._node.block_until(self, timeout)

    def fetch(self, timeout: float | None = None) -> Any:
        """The value; raises the call's error (``RemoteError``, ``ProcessExitedError``) or
        ``TimeoutError`` when *timeout* seconds pass first."""
        if not self.wait(timeout):
            raise TimeoutError(f"{self!r} not ready after {timeout} s")
        if self.owner != self._node.myid and not self._event.is_set():
            return self._proxy.fetch()  # type: ignore[union-attr]
        return self._outcome()

    def result(self, timeout: float | None = None) -> Any:
        """Alias of :meth:`fetch` for ``concurrent.futures`` habits."""
        return self.fetch(timeout)

    def __await__(self) -> Any:
        """``await fut`` in a coroutine: the value, without blocking the event loop."""
        import asyncio

        target = self if self.owner == self._node.myid else self._remote()
        if not target.done():
            loop = asyncio.get_running_loop()
            ready = loop.create_future()

            def settle() -> None:
                if not ready.done():  # the awaiting task may have been cancelled
                    ready.set_result(None)

            def wake(_: Future) -> None:  # on the I/O thread
                loop.call_soon_threadsafe(settle)

            target.add_done_callback(wake)
            yield from ready.__await__()
        return target._outcome()

    def _outcome(self) -> Any:
        with self._lock:
            if self._value is _UNSET and self._exception is None:
                self._decode()
        if self._exception is not None:
            raise self._exception
        return self._value

    def _decode(self) -> None:
        try:
            obj = serialize.loads(self._frames or [b""])
        except Exception as exc:  # noqa: BLE001
            self._exception = ClusterError(
                f"the result from process {self.where} could not be deserialized here: {exc!r}")
            self._exception.__cause__ = exc
            return
        if self._flags & Flag.ERROR:
            self._exception = obj.to_exception() if isinstance(obj, ErrorPayload) else obj
        else:
            self._value = obj

    def _remote(self) -> Future:
        with self._lock:
            if self._proxy is None:
                self._proxy = Future(self.owner, node=self._node)
                self._node.request(Kind.FETCH, self.owner, None, self._proxy, ref=self.id)
            return self._proxy

    def __reduce__(self):
        if self.owner == self._node.myid:
            self._node.exported[self.id] = self
        return _rebuild_future, (self.owner, self.id, self.where)


def _rebuild_future(owner: int, fid: int, where: int) -> Future:
    node = get_node()
    if owner == node.myid:
        fut = node.exported.get(fid)
        if fut is not None:
            return fut
    return Future(where, node=node, owner=owner, fid=fid)


# --- calls -----------------------------------------------------------------------------

def remotecall(f: Callable, wid: int, *args: Any, **kwargs: Any) -> Future:
    """Run ``f(*args, **kwargs)`` on process *wid*; return a Future at once.

    Pickling errors of *f* or its arguments raise here, in the caller.
    """
    node = get_node()
    wid = _check_id(wid)
    fut = Future(wid, node=node)
    if wid == node.myid:
        node.run_here(fut, f, args, kwargs)
        return fut
    node.check_target(wid)
    frames = serialize.dumps((f, args, kwargs))
    node.track(fut, wid)
    node.send([pack_header(Kind.CALL, Flag.WANT_VALUE, node.myid, wid, fut.id, 0), *frames])
    return fut


def remotecall_fetch(f: Callable, wid: int, *args: Any, **kwargs: Any) -> Any:
    """``remotecall(...).fetch()``: run and return the value (raise its error)."""
    return remotecall(f, wid, *args, **kwargs).fetch()


def remotecall_wait(f: Callable, wid: int, *args: Any, **kwargs: Any) -> Future:
    """Run and wait for completion; return the (ready) Future.  Errors surface at fetch."""
    fut = remotecall(f, wid, *args, **kwargs)
    fut.wait()
    return fut


def remote_do(f: Callable, wid: int, *args: Any, **kwargs: Any) -> None:
    """Fire and forget: nothing comes back; an error is printed by the worker (to its
    stderr, which is forwarded to the master)."""
    node = get_node()
    wid = _check_id(wid)
    if wid == node.myid:
        node.run_here(None, f, args, kwargs)
        return
    node.check_target(wid)
    frames = serialize.dumps((f, args, kwargs))
    node.send([pack_header(Kind.CALL, Flag.NONE, node.myid, wid, node.next_id(), 0), *frames])


def spawnat(wid: int | str, f: Callable, *args: Any, **kwargs: Any) -> Future:
    """``remotecall`` with the process first; ``"any"`` picks the least busy worker."""
    if wid == "any":
        wid = get_node().least_busy()
    elif isinstance(wid, str):
        raise ValueError(f'spawnat takes a worker id or "any", not {wid!r}')
    return remotecall(f, wid, *args, **kwargs)


def fetch(x: Any, timeout: float | None = None) -> Any:
    """The value behind a Future or RemoteChannel (first item, not removed); else *x*."""
    if isinstance(x, (Future, RemoteChannel)):
        return x.fetch(timeout)
    return x


def _check_id(wid: Any) -> int:
    if isinstance(wid, bool) or not isinstance(wid, int):
        raise TypeError(f"a process id is an int (1 = master, 2.. = workers), not {wid!r}")
    return wid


# --- RemoteChannel ---------------------------------------------------------------------

class RemoteChannel:
    """A FIFO channel stored on process *owner*, usable from every process of the cluster.

    ``maxsize=0`` is unbounded; with ``maxsize=k`` a ``put`` blocks while k items wait.
    Every blocking method takes a ``timeout`` (``TimeoutError``; the item is not lost).
    After ``close()``, ``put`` raises ``ChannelClosedError``; ``take``/``fetch`` drain what
    is left and then raise it; iteration stops.
    """

    def __init__(self, owner: int = 1, maxsize: int = 0) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0 (0 means unbounded)")
        node = get_node()
        self.owner = _check_id(owner)
        self.maxsize = maxsize
        self.cid = f"{node.myid}:{node.next_id()}"
        if self.owner == node.myid:
            node.channels.create(self.cid, maxsize)
        else:
            node.check_target(self.owner)
            self._op("create", maxsize, CONTROL_TIMEOUT)

    def __repr__(self) -> str:
        return f"<RemoteChannel {self.cid} owner={self.owner} maxsize={self.maxsize}>"

    def put(self, value: Any, timeout: float | None = None) -> None:
        self._op("put", value, timeout)

    def take(self, timeout: float | None = None) -> Any:
        return self._op("take", None, timeout)

    def fetch(self, timeout: float | None = None) -> Any:
        return self._op("fetch", None, timeout)

    def isready(self) -> bool:
        return self._op("isready", None, CONTROL_TIMEOUT)

    def __len__(self) -> int:
        return self._op("len", None, CONTROL_TIMEOUT)

    def close(self) -> None:
        self._op("close", None, CONTROL_TIMEOUT)

    def __iter__(self) -> Iterator[Any]:
        from .errors import ChannelClosedError

        while True:
            try:
                yield self.take()
            except ChannelClosedError:
                return

    def _op(self, op: str, arg: Any, timeout: float | None) -> Any:
        node = get_node()
        if self.owner == node.myid:
            return node.channels.run_local(self.cid, op, arg, timeout)
        fut = Future(self.owner, node=node)
        node.request(Kind.CHANNEL, self.owner, (op, self.cid, arg), fut)
        if not fut.wait(timeout):
            # Withdraw the request; the owner answers it once, with the item if it was
            # already on its way, else with TimeoutError.
            cancel = serialize.dumps(("cancel", self.cid, fut.id))
            node.send([pack_header(Kind.CHANNEL, 0, node.myid, self.owner, node.next_id(), 0), *cancel])
            if not fut.wait(CONTROL_TIMEOUT):
                raise TimeoutError(f"{self!r}: {op} timed out and its owner did not answer")
        return fut.fetch()

    def __reduce__(self):
        return _rebuild_channel, (self.owner, self.cid, self.maxsize)


def _rebuild_channel(owner: int, cid: str, maxsize: int) -> RemoteChannel:
    chan = RemoteChannel.__new__(RemoteChannel)
    chan.owner, chan.cid, chan.maxsize = owner, cid, maxsize
    return chan

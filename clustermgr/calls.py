"""Remote calls, Futures and RemoteChannels: the part of the API every process uses.

A call is one CALL message; its Future's id is the message id, so the RESULT that answers
it finds the Future directly.  Results are stored, still serialized, in the caller's
process and deserialized by the first ``fetch`` in the fetching thread.  A Future pickled
to another process becomes a reference ``(owner, id, where)``; fetching it there asks the
owner, which answers when the value is in.  The owner keeps a Future other processes
reference until the last of them drops it (``refs.py``); so does a channel's owner.
"""

from __future__ import annotations

import linecache
import re
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import InvalidStateError
from typing import TYPE_CHECKING, Any

from . import serialize
from .errors import ClusterError, DecodeError, RemoteError, RemoteTraceback
from .protocol import Flag, Kind, pack_header
from .transport import Done, current_node

if TYPE_CHECKING:
    from .transport import Node

_UNSET = object()
#: Bound on waiting for an owner's answer to bookkeeping requests (cancel, isready).
CONTROL_TIMEOUT = 30.0


def get_node() -> Node:
    """This process's node (the master's is made on first use: ``cluster.node``)."""
    node = current_node()
    if node is not None:
        return node
    from .cluster import node as make

    return make()


# --- who is in the cluster (any process; nothing here needs the master's modules) ----

def myid() -> int:
    """This process's id: 1 on the master, 2.. on workers."""
    n = current_node()
    return 1 if n is None else n.myid


def workers() -> list[int]:
    """Worker ids; ``[1]`` when there are none (the master then does the work itself)."""
    n = current_node()
    if n is None:
        return [1]
    return n.live_ids() or [1]


def procs() -> list[int]:
    """The master and every worker."""
    ids = workers()
    return ids if ids == [1] else [1, *ids]


def nprocs() -> int:
    return len(procs())


def nworkers() -> int:
    """Number of workers (1 when there are none: the master counts, as in Julia)."""
    return len(workers())


# --- errors raised by user code travel as this payload ---------------------------------

class ErrorPayload:
    """What a process sends back when user code raised: enough to rebuild a readable error
    even when the exception itself cannot be pickled or unpickled."""

    def __init__(self, worker_id: int, exc: BaseException) -> None:
        self.worker_id = worker_id
        self.type_name = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
        self.message = " ".join([str(exc), *getattr(exc, "__notes__", ())])
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
        tb = fill_source(self.tb)
        if cause is None:
            cause = RemoteTraceback(tb)
        else:
            cause.__cause__ = RemoteTraceback(tb)
        err = RemoteError(self.worker_id, f"{self.type_name}: {self.message}")
        err.__cause__ = cause
        return err


_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in ')


def fill_source(tb: str) -> str:
    """Add the source lines a remote process could not read (the user's script is not on
    its host) to a formatted traceback, from this process's copy of the files."""
    lines = tb.splitlines(keepends=True)
    out = []
    for k, line in enumerate(lines):
        out.append(line)
        m = _FRAME.match(line)
        if m and not (k + 1 < len(lines) and lines[k + 1].startswith("    ")):
            source = linecache.getline(m["file"], int(m["line"])).strip()
            if source:
                out.append(f"    {source}\n")
    return "".join(out)


def local_error(exc: BaseException) -> RemoteError:
    """*exc*, raised by user code in this process, in the shape a remote failure has (a
    ``RemoteError`` with *exc* as its ``__cause__``), so that callers see one behaviour
    wherever the code ran."""
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
    (the caller).  Thread-safe.  Users get Futures from ``remotecall``/``spawnat``, or make
    one with ``Future()``: a remote reference with no call behind it, owned by this
    process, set once with :meth:`put` (from any process) and fetched from any process.
    """

    def __init__(self, where: int | None = None, *, node: Node | None = None,
                 owner: int | None = None, fid: int | None = None) -> None:
        self._node = node or get_node()
        self.owner = self._node.myid if owner is None else owner
        self.where = self.owner if where is None else where
        self.id = self._node.next_id() if fid is None else fid
        self._event = Done()
        self._lock = threading.Lock()
        self._frames: list | None = None
        self._flags = 0
        self._value: Any = _UNSET
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[Future], None]] = []
        self._proxy: Future | None = None  # for a Future owned elsewhere: our FETCH
        #: seconds the call ran on its worker, as the worker timed it (None: not known)
        self.run_time: float | None = None

    def __repr__(self) -> str:
        state = "ready" if self._event.is_set() else "pending"
        return f"<Future {self.owner}:{self.id} where={self.where} {state}>"

    # completion (I/O thread or the local executor); the first outcome wins
    def _set_frames(self, frames: list, flags: int, src: int) -> None:
        self._settle(frames, flags, _UNSET, None)

    def _set_value(self, value: Any) -> bool:
        return self._settle(None, 0, value, None)

    def _set_exception(self, exc: BaseException) -> None:
        self._settle(None, 0, _UNSET, exc)

    def _settle(self, frames: list | None, flags: int, value: Any, exc: BaseException | None) -> bool:
        with self._lock:
            if self._event.is_set():
                return False
            self._frames, self._flags, self._value, self._exception = frames, flags, value, exc
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)
        return True

    def put(self, value: Any) -> None:
        """Set the value, once (``InvalidStateError`` after that), from any process: the
        value is stored on the owner, where every process fetches it."""
        if self.owner != self._node.myid:
            if not remotecall_fetch(_put_future, self.owner, self.id, value):
                raise InvalidStateError(f"{self!r} already has a value; a Future is set once")
        elif not self._set_value(value):
            raise InvalidStateError(f"{self!r} already has a value; a Future is set once")

    set_result = put

    def add_done_callback(self, fn: Callable[[Future], None]) -> None:
        """Call ``fn(future)`` once the value is in (at once if it is already)."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _raw_frames(self, dest: int) -> tuple[list, int] | None:
        """Serialized value for process *dest*, or None when the outcome is an exception."""
        if self._frames is not None:
            return self._frames, self._flags
        if self._value is not _UNSET:
            return serialize.dumps(self._value, dest), Flag.NONE
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
        check_timeout(timeout)
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
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit from a __reduce__ too
            self._exception = DecodeError(
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
        mine = self.owner == self._node.myid
        self._node.refs.sent(self.owner, "f", self.id, self if mine else None)
        return _rebuild_future, (self.owner, self.id, self.where)


def _rebuild_future(owner: int, fid: int, where: int) -> Future:
    node = get_node()
    fut = node.refs.rebuilt(owner, "f", fid, lambda: Future(where, node=node, owner=owner, fid=fid))
    if fut is None:  # came home after its owner let it go: cannot happen while counted
        fut = Future(where, node=node, owner=owner, fid=fid)
        fut._set_exception(ClusterError(f"Future {owner}:{fid} was released by its owner"))
    return fut


def _put_future(fid: int, value: Any) -> bool:
    """On the owner: set a Future another process holds; False if it was set already."""
    fut = get_node().refs.lookup("f", fid)
    if fut is None:
        raise ClusterError(f"Future {fid} is unknown to its owner")
    return fut._set_value(value)


# --- calls -----------------------------------------------------------------------------

def remotecall(f: Callable, wid: Any, *args: Any, **kwargs: Any) -> Future:
    """Run ``f(*args, **kwargs)`` on process *wid* (or on a free worker of the pool *wid*);
    return a Future at once.

    Pickling errors of *f* or its arguments raise here, in the caller.
    """
    if _is_pool(wid):
        return wid.remotecall(f, *args, **kwargs)
    node = get_node()
    wid = _check_id(wid)
    fut = Future(wid, node=node)
    if wid == node.myid:
        node.run_here(fut, f, args, kwargs)
        return fut
    node.check_target(wid)
    frames = serialize.dumps((f, args, kwargs), wid)
    node.track(fut, wid)
    node.send([pack_header(Kind.CALL, Flag.WANT_VALUE, node.myid, wid, fut.id, 0), *frames])
    return fut


def remotecall_fetch(f: Callable, wid: Any, *args: Any, **kwargs: Any) -> Any:
    """``remotecall(...).fetch()``: run and return the value (raise its error)."""
    return remotecall(f, wid, *args, **kwargs).fetch()


def remotecall_wait(f: Callable, wid: Any, *args: Any, **kwargs: Any) -> Future:
    """Run and wait for completion; return the (ready) Future.  Raises the call's error,
    as Julia's does (code run for its side effects must not lose errors)."""
    fut = remotecall(f, wid, *args, **kwargs)
    fut.wait()
    if fut._exception is not None or fut._flags & Flag.ERROR:
        fut._outcome()  # raises, without decoding a value that is not an error
    return fut


def remote_do(f: Callable, wid: Any, *args: Any, **kwargs: Any) -> None:
    """Fire and forget: nothing comes back; an error is printed by the worker (to its
    stderr, which is forwarded to the master).  *wid* may be a pool."""
    if _is_pool(wid):
        wid.remote_do(f, *args, **kwargs)
        return
    node = get_node()
    wid = _check_id(wid)
    if wid == node.myid:
        node.run_here(None, f, args, kwargs)
        return
    node.check_target(wid)
    frames = serialize.dumps((f, args, kwargs), wid)
    node.send([pack_header(Kind.CALL, Flag.NONE, node.myid, wid, node.next_id(), 0), *frames])


def spawnat(wid: int | str, f: Callable, *args: Any, **kwargs: Any) -> Future:
    """``remotecall`` with the process first; ``"any"`` picks the least busy worker (the
    master when there are none, as pmap and remote do)."""
    if wid == "any":
        node = get_node()
        try:
            wid = node.least_busy()
        except ClusterError:  # nobody else to run on
            wid = node.myid
    elif isinstance(wid, str):
        raise ValueError(f'spawnat takes a worker id or "any", not {wid!r}')
    return remotecall(f, wid, *args, **kwargs)


def check_timeout(timeout: float | None) -> None:
    """Refuse a timeout ``threading`` would refuse: a negative number, or not a number."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be a non-negative number of seconds (or None to wait "
                         f"without limit), not {timeout!r}")


def fetch(x: Any, timeout: float | None = None) -> Any:
    """The value behind a Future or RemoteChannel (first item, not removed); else *x*."""
    if isinstance(x, (Future, RemoteChannel)):
        return x.fetch(timeout)
    return x


def _is_pool(target: Any) -> bool:
    if isinstance(target, int):
        return False
    from .pools import WorkerPool

    return isinstance(target, WorkerPool)


def _check_id(wid: Any) -> int:
    if isinstance(wid, bool) or not isinstance(wid, int):
        raise TypeError(f"a process id is an int (1 = master, 2.. = workers), not {wid!r}")
    return wid


# --- RemoteChannel ---------------------------------------------------------------------

class RemoteChannel:
    """A FIFO channel stored on process *owner*, usable from every process of the cluster.

    ``RemoteChannel(owner=1, maxsize=0)``: ``maxsize=0`` is unbounded (Python's ``queue``
    convention; Julia's ``RemoteChannel()`` holds one item: pass ``maxsize=1`` for that);
    with ``maxsize=k`` a ``put`` blocks while k items wait.  ``rendezvous=True`` is
    Julia's ``Channel(0)``: a ``put`` blocks until a ``take`` has the item.
    ``RemoteChannel(factory, owner)`` stores ``factory()`` (called on *owner*) instead: any
    ``queue.Queue``-like object (``put``/``get`` with ``block``/``timeout``, ``qsize``),
    e.g. ``lambda: queue.PriorityQueue(100)``, as Julia's ``RemoteChannel(f, pid)``.

    Every blocking method takes a ``timeout`` (``TimeoutError``; the item is not lost).
    After ``close()``, ``put`` raises ``ChannelClosedError``; ``take``/``fetch`` drain what
    is left and then raise it; iteration stops.  A put stores the value as it is at the
    put.  The owner frees the channel, with its items, once no process holds a handle.
    """

    def __init__(self, owner_or_factory: int | Callable[[], Any] | None = None, maxsize: int = 0,
                 *, owner: int | None = None, rendezvous: bool = False) -> None:
        factory = None
        if callable(owner_or_factory):  # RemoteChannel(factory, owner) as in Julia
            factory = owner_or_factory
            owner = owner if owner is not None else (maxsize or 1)
            maxsize = 0
        elif owner_or_factory is not None:
            if owner is not None:
                raise TypeError("RemoteChannel() got the owner twice")
            owner = owner_or_factory
        owner = 1 if owner is None else owner
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError("maxsize must be an int >= 0 (0 means unbounded)")
        if rendezvous and (maxsize or factory):
            raise ValueError("a rendezvous channel holds no items: pass no maxsize or factory")
        node = get_node()
        self.owner = _check_id(owner)
        self.maxsize = maxsize
        self.cid = f"{node.myid}:{node.next_id()}"
        spec = (maxsize, rendezvous, factory)
        if self.owner == node.myid:
            node.channels.create(self.cid, spec, node.myid)
        else:
            node.check_target(self.owner)
            self._op("create", spec, CONTROL_TIMEOUT)
        node.refs.adopt(self.owner, "c", self.cid, self)

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

    def isopen(self) -> bool:
        """False once the channel was closed (items may still wait to be taken)."""
        return self._op("isopen", None, CONTROL_TIMEOUT)

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
        check_timeout(timeout)
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
        get_node().refs.sent(self.owner, "c", self.cid)
        return _rebuild_channel, (self.owner, self.cid, self.maxsize)


def _rebuild_channel(owner: int, cid: str, maxsize: int) -> RemoteChannel:
    def make() -> RemoteChannel:
        chan = RemoteChannel.__new__(RemoteChannel)
        chan.owner, chan.cid, chan.maxsize = owner, cid, maxsize
        return chan

    return get_node().refs.rebuilt(owner, "c", cid, make)

"""The I/O thread and what master and workers share.

Data flow in one process::

    user threads ──send()──► inproc PUSH ──► I/O thread ──► ROUTER (master) / DEALER (worker)
                                                 │
    Futures ◄── _on_result ◄── dispatch ◄────────┘  (CALL → the executor of the subclass)

One I/O thread owns the network sockets (ZeroMQ sockets are not thread-safe).  Any thread
may call :meth:`Node.send`; it serializes nothing, only hands prepared frames over a
lock-guarded inproc socket, which ZeroMQ passes without copying.  The I/O thread routes
frames, completes Futures with *raw* frames (they are deserialized later by whoever
fetches), answers FETCH and CHANNEL requests, and runs :meth:`Node._tick` for heartbeats.

Subclasses: ``master.MasterNode`` (ROUTER, handshake, relay, worker table) and
``worker.loop.WorkerNode`` (DEALER, task execution on the main thread).
"""

from __future__ import annotations

import abc
import collections
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from . import serialize
from .channels import ChannelStore
from .errors import ClusterError, ProcessExitedError
from .protocol import Flag, Header, Kind, pack_header
from .refs import RefTable

if TYPE_CHECKING:
    from .calls import Future

log = logging.getLogger("clustermgr")

_WAKE = [b""]
_current: Node | None = None


def current_node() -> Node | None:
    """This process's node: the worker's, or the master's once it exists."""
    return _current


def set_current_node(node: Node | None) -> None:
    global _current
    _current = node


def _forget_after_fork() -> None:
    """A forked child (multiprocessing's fork, a task's os.fork) has none of its parent's
    threads: the inherited node cannot work there, so the child starts without one."""
    global _current
    _current = None


os.register_at_fork(after_in_child=_forget_after_fork)


class Signal:
    """A one-shot event with the waiting interface of a Future (``done``,
    ``add_done_callback``, ``_event``), so :meth:`Node.block_until` can wait on it: code
    that waits for one of many things (pmap) waits this way and, on a worker's main thread,
    keeps serving incoming calls meanwhile."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Signal], None]] = []

    def done(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, fn: Callable[[Signal], None]) -> None:
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)


class Node(abc.ABC):
    """Base of the master and worker runtimes; see the module docstring."""

    tick_interval = 0.25

    def __init__(self, myid: int) -> None:
        self.myid = myid
        self.ctx = zmq.Context()
        self._ids = itertools.count(1)
        self.pending: dict[int, tuple[Future, int]] = {}  # message id -> (future, target)
        self.refs = RefTable(self)  # Futures sent to other processes, channels: refs.py
        self.channels = ChannelStore(self)
        self.refs.on_free["c"] = self.channels.free
        self.members: list[int] = []
        self.topology = "all_to_all"
        self.in_user_code = 0  # > 0 while the main thread runs a task's function
        self._soon: collections.deque[Callable[[], None]] = collections.deque()
        inproc = f"inproc://clustermgr-outbox-{id(self)}"
        self._pull = self.ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.bind(inproc)
        self._push = self.ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, 0)
        self._push.connect(inproc)
        self._push_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clustermgr-io", daemon=True)
        self._last_tick = 0.0

    # --- called from any thread ---------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, frames: list) -> None:
        """Hand a complete message ``[header, body, *buffers]`` to the I/O thread."""
        with self._push_lock:
            self._push.send_multipart(frames, copy=False)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run *fn* on the I/O thread (which may touch the sockets)."""
        self._soon.append(fn)
        with self._push_lock:
            self._push.send_multipart(_WAKE)

    def send_msg(self, kind: Kind, dst: int, frames: list | tuple = (b"",), *,
                 flags: int = 0, mid: int = 0, ref: int = 0) -> None:
        self.send([pack_header(kind, flags, self.myid, dst, mid, ref), *frames])

    def request(self, kind: Kind, dst: int, obj: Any, fut: Future, flags: int = 0,
                ref: int = 0) -> None:
        """Send a request whose RESULT completes *fut* (``fut.id`` is the message id)."""
        frames = serialize.dumps(obj, dst)
        self.track(fut, dst)
        self.send([pack_header(kind, flags, self.myid, dst, fut.id, ref), *frames])

    def track(self, fut: Future, target: int) -> None:
        """Expect a RESULT for ``fut.id`` from *target*; fail it at once if *target* is gone."""
        self.pending[fut.id] = (fut, target)
        dead = self.death_of(target)
        if dead is not None and self.pending.pop(fut.id, None) is not None:
            fut._set_exception(dead)

    @abc.abstractmethod
    def check_target(self, wid: int) -> None:
        """Raise if a call to *wid* can never be delivered (unknown, dead, topology)."""

    @abc.abstractmethod
    def live_ids(self) -> list[int]:
        """The worker ids this process knows to be alive."""

    @abc.abstractmethod
    def least_busy(self) -> int:
        """The worker with the fewest calls from this process in flight."""

    @abc.abstractmethod
    def run_here(self, fut: Any, f: Callable, args: tuple, kwargs: dict) -> None:
        """Run a call this process makes to itself (off the calling thread)."""

    def death_of(self, wid: int) -> ProcessExitedError | None:
        """The error for calls to *wid* when it is known to be dead, else None."""
        return None

    def block_until(self, fut: Future, timeout: float | None) -> bool:
        """Wait for *fut*; the worker's main thread overrides this to keep serving calls."""
        return fut._event.wait(timeout)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:
            self.call_soon(lambda: None)
        except zmq.ZMQError:
            pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        with self._push_lock:
            self._push.close(linger=0)

    # --- the I/O thread -----------------------------------------------------------------

    def _sockets(self) -> list[zmq.Socket]:
        """Network sockets to poll besides the outbox (subclasses)."""
        return []

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        for sock in self._sockets():
            poller.register(sock, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                ready = dict(poller.poll(int(self.tick_interval * 1000)))
                for sock in ready:
                    self._drain(sock)
                self._after_drain()
                now = time.monotonic()
                if now - self._last_tick >= self.tick_interval:
                    self._last_tick = now
                    self._tick(now)
                    self.refs.flush()
        except Exception:  # the I/O thread must never die silently
            log.exception("clustermgr I/O thread crashed")
            self._on_io_crash()
        finally:
            self._close_sockets()

    def _drain(self, sock: zmq.Socket, budget: int = 256) -> None:
        for _ in range(budget):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if sock is self._pull:
                self._from_outbox(frames)
            else:
                self._from_network(sock, frames)

    def _from_outbox(self, frames: list) -> None:
        if len(frames) == 1:
            while self._soon:
                self._soon.popleft()()
            return
        self._route(frames)

    @abc.abstractmethod
    def _route(self, frames: list) -> None:
        """Deliver a message built by this process."""

    @abc.abstractmethod
    def _from_network(self, sock: zmq.Socket, frames: list) -> None:
        """Handle a message from the network socket *sock*."""

    def _tick(self, now: float) -> None:
        """Periodic work on the I/O thread: heartbeats, deadlines (subclasses)."""

    def _after_drain(self) -> None:
        """Work once the messages that were ready are handled (subclasses coalesce here)."""

    def _on_io_crash(self) -> None:
        err = ClusterError("the clustermgr I/O thread crashed; see the log")
        for mid in list(self.pending):
            entry = self.pending.pop(mid, None)
            if entry:
                entry[0]._set_exception(err)

    def _close_sockets(self) -> None:
        for sock in (self._pull, *self._sockets()):
            sock.close()  # each socket's own LINGER: a worker's last BYE still goes out

    # --- dispatch of authenticated messages (I/O thread) -------------------------------

    def dispatch(self, hdr: Header, frames: list) -> None:
        kind = hdr.kind
        if kind == Kind.RESULT:
            self._on_result(hdr, frames)
        elif kind == Kind.CALL:
            self._on_call(hdr, frames)
        elif kind == Kind.FETCH:
            self._on_fetch(hdr, frames)
        elif kind == Kind.CHANNEL:
            self.channels.on_request(hdr, frames)
        elif kind == Kind.REFS:
            self.refs.on_message(hdr.src, frames[1])
        else:
            self._on_control(hdr, frames)

    def _on_result(self, hdr: Header, frames: list) -> None:
        entry = self.pending.pop(hdr.ref, None)
        if entry is not None:
            entry[0]._set_frames(frames[1:], hdr.flags, hdr.src)

    @abc.abstractmethod
    def _on_call(self, hdr: Header, frames: list) -> None:
        """Run an incoming CALL (the worker: on its main thread; the master: in a pool)."""

    def _on_control(self, hdr: Header, frames: list) -> None:
        log.debug("ignoring %s from %d", hdr.kind.name, hdr.src)

    def _on_fetch(self, hdr: Header, frames: list) -> None:
        """Another process fetches (or, with WANT_ACK, polls) a Future this one owns."""
        fut = self.refs.lookup("f", hdr.ref)
        if fut is None:
            err = ClusterError(f"Future {self.myid}:{hdr.ref} is unknown to its owner "
                               f"(process {self.myid}); it was never sent or was released")
            self.reply(hdr, err, error=True)
        elif hdr.flags & Flag.WANT_ACK:
            self.reply(hdr, fut.done())
        else:
            fut.add_done_callback(lambda f: self._send_future_value(hdr, f))

    def _send_future_value(self, hdr: Header, fut: Future) -> None:
        raw = fut._raw_frames(hdr.src)
        if raw is not None:
            frames, flags = raw
            self.send([pack_header(Kind.RESULT, flags, self.myid, hdr.src, 0, hdr.id), *frames])
        else:
            self.reply(hdr, fut._exception, error=True)

    def reply(self, hdr: Header, value: Any, error: bool = False) -> None:
        """Answer the request *hdr* with *value* (serialized here)."""
        flags = Flag.ERROR if error else Flag.NONE
        try:
            frames = serialize.dumps(value, hdr.src)
        except Exception as exc:  # noqa: BLE001 - turned into an error reply
            frames, flags = serialize.dumps(ClusterError(f"reply could not be pickled: {exc!r}")), Flag.ERROR
        self.send([pack_header(Kind.RESULT, flags, self.myid, hdr.src, 0, hdr.id), *frames])

    def fail_target(self, wid: int, exc: BaseException) -> None:
        """Fail every pending request addressed to *wid* (it died)."""
        for mid, (fut, target) in list(self.pending.items()):
            if target == wid and self.pending.pop(mid, None) is not None:
                fut._set_exception(exc)
        self.channels.drop_peer(wid)
        self.refs.drop_process(wid)

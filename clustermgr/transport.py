"""The link to the network and what master and workers share.

Data flow in one process::

    any thread ──send()──► Link (lock) ──► ROUTER (master) / DEALER (worker) ──► ZeroMQ
                                                                                 │
    Futures ◄── _on_result ◄── dispatch ◄── the reading thread ◄── Link.recv ◄───┘

Every process has one network socket, wrapped in a :class:`Link`.  ZeroMQ sockets are not
thread-safe, so every call into it holds the link's lock (which is also the memory barrier
ZeroMQ asks for when a socket changes threads); a thread that sends does so itself, with
no hand-off to another thread.  One thread at a time *reads* (it holds ``Link.role``): it
waits for the socket's file descriptor with the OS's ``poll``, outside the lock, so a
sender never waits for a read; it routes frames, completes Futures with *raw* frames
(deserialized later by whoever fetches), answers FETCH and CHANNEL requests, and runs
:meth:`Node._tick` for heartbeats.

Who reads: on the master, a thread that waits for a Future while nobody else reads (its
answer is read where it is awaited; the executor's dispatcher waits this way), a thread
holding the lease for a while (:meth:`Node.reading`: pmap), and otherwise the I/O thread,
which holds the role only while it handles what came in.  On a worker, the main thread
while it is between tasks or waits for a Future (so a CALL runs where it is read, and its
RESULT goes out from the same thread: no thread hop on a worker's hot path); the I/O
thread takes the role over only while a task has run for longer than ``TAKEOVER_AFTER``,
and gives it back when the task ends (``worker/loop.py``).  Messages sent in a burst may
travel several to a ``BUNDLE`` (:class:`Cork`).

Subclasses: ``master.MasterNode`` (ROUTER, handshake, relay, worker table) and
``worker.loop.WorkerNode`` (DEALER, task execution on the main thread).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import itertools
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import zmq

from . import serialize, shm
from .channels import ChannelStore
from .errors import CallRevoked, ClusterError, ProcessExitedError
from .protocol import BUNDLE_BYTES, BUNDLE_MAX, Flag, Header, Kind, pack_bundle, pack_header
from .refs import RefTable

if TYPE_CHECKING:
    from .calls import Future

log = logging.getLogger("clustermgr")

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


_make_condition = threading.Lock()  # serialises the lazy creation in Done.wait


class Done:
    """``threading.Event``'s ``is_set``/``set``/``wait``, for the one-shot events of every
    Future and Signal: the Condition a waiter sleeps on is made only when a thread does
    wait (most Futures complete on the thread that reads them, or are never waited for)."""

    __slots__ = ("_flag", "_cond")

    def __init__(self) -> None:
        self._flag = False
        self._cond: threading.Condition | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        cond = self._cond  # read after the flag: a waiter that made it sees the flag
        if cond is not None:
            with cond:
                cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        if self._cond is None:
            with _make_condition:
                if self._cond is None:
                    self._cond = threading.Condition(threading.Lock())
        cond = self._cond
        with cond:
            return cond.wait_for(self.is_set, timeout)


class Signal:
    """A one-shot event with the waiting interface of a Future (``done``,
    ``add_done_callback``, ``_event``), so :meth:`Node.block_until` can wait on it: code
    that waits for one of many things (pmap) waits this way and, on a worker's main thread,
    keeps serving incoming calls meanwhile."""

    def __init__(self) -> None:
        self._event = Done()
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


# pyzmq's constants are enums, and its send_multipart/recv_multipart combine them per
# frame; the link does the same with plain ints (a measurable share of a tiny call).
_SNDMORE, _NOBLOCK, _EVENTS, _POLLIN = int(zmq.SNDMORE), int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)


class Link:
    """One ZeroMQ socket that several threads use: any thread sends, one thread reads.

    Callers: :class:`Node` builds one around its socket; every thread sends through
    :meth:`send`; the thread holding :attr:`role` calls :meth:`recv` and :meth:`wait`.
    """

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()  # every call into the socket
        self.role = threading.Lock()  # held by the thread that reads
        self.reader = 0  # thread ident of the role's holder (0: nobody)
        self.closed = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._poll = self.poller()

    def poller(self) -> Any:
        """A poll object for the socket's descriptor and the wake-up pipe."""
        poller = select.poll()
        poller.register(self.sock.getsockopt(zmq.FD), select.POLLIN)
        poller.register(self._r, select.POLLIN)
        return poller

    # --- any thread -------------------------------------------------------------------

    def send(self, frames: list) -> None:
        """Send one multipart message now (``copy=False``: buffers go out as they are)."""
        with self.lock:
            if self.closed:
                raise zmq.ZMQError(zmq.ENOTSOCK, "the cluster link is closed")
            sock = self.sock
            last = len(frames) - 1
            for i, frame in enumerate(frames):
                sock.send(frame, _SNDMORE if i < last else 0, copy=False)
            # A send may take the "readable" edge of the socket's descriptor: then the
            # reader, asleep in poll, would not see a message that is already there.
            if self.reader != threading.get_ident() and sock.getsockopt(_EVENTS) & _POLLIN:
                self._wake_locked()

    def wake(self) -> None:
        """Make the reader's :meth:`wait` return (to look at the socket and its queues)."""
        with self.lock:
            if not self.closed:
                self._wake_locked()

    def _wake_locked(self) -> None:
        try:
            os.write(self._w, b"w")
        except BlockingIOError:  # the pipe is full of wake-ups already
            pass

    def take_role(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self.role.acquire(blocking, timeout):
            return False
        self.reader = threading.get_ident()
        return True

    def give_role(self) -> None:
        self.reader = 0
        self.role.release()

    # --- the reader -------------------------------------------------------------------

    def recv(self) -> list | None:
        """The next message, or None when none is waiting."""
        with self.lock:
            sock = self.sock
            if self.closed or not sock.getsockopt(_EVENTS) & _POLLIN:
                return None
            parts = [sock.recv(_NOBLOCK, copy=False)]
            while parts[-1].more:  # the rest of a message is there once its first part is
                parts.append(sock.recv(0, copy=False))
            return parts

    def wait(self, timeout: float, poller: Any = None) -> None:
        """Sleep until a message may be waiting, a :meth:`wake`, or *timeout* seconds.
        *poller*: a ``select.poll`` of the socket and the pipe (:meth:`poller`) for a
        thread that sleeps here while another may too (one poll object cannot serve two
        threads at once); the reader's own by default."""
        with self.lock:
            if self.closed or self.sock.getsockopt(_EVENTS) & _POLLIN:
                return
        for fd, _ in (poller or self._poll).poll(max(0, int(timeout * 1000))):
            if fd == self._r:  # woken: empty the pipe (only then: a read costs a syscall)
                try:
                    while os.read(self._r, 4096):
                        pass
                except (BlockingIOError, OSError):
                    pass

    def close(self, linger: int | None = None) -> None:
        """Close the socket (its own LINGER unless *linger*) and the wake-up pipe."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.sock.close(linger=linger)
            os.close(self._r)
            os.close(self._w)


#: How long a thread that waits for a Future waits for the reading role (held briefly by
#: the I/O thread while it handles a message) before it leaves the reading to its holder.
ROLE_WAIT = 0.01


class Cork:
    """Messages one thread sends, held back to travel several to a ``BUNDLE``.

    Who uses it: a scheduler sending a burst of calls (``pmap``, the executor's
    dispatcher: ``with node.corked(): ...``), and a worker's main thread for the results
    and output of the calls it runs one after another (``worker/loop.py``).  Only
    messages of *kinds* with a single body frame are held, per receiver; any other message
    the thread sends flushes what is held first, so each receiver sees the thread's
    messages in the order they were sent.  The holder flushes when it is done or about to
    wait; another thread may flush it too (a worker's I/O thread, once a task runs long).
    """

    __slots__ = ("node", "kinds", "lock", "held", "since")

    def __init__(self, node: Node, kinds: frozenset[int]) -> None:
        self.node = node
        self.kinds = kinds
        self.lock = threading.RLock()  # a flush may run callbacks that send again
        #: per receiver: [bytes held, header, body, header, body, ...]
        self.held: dict[int, list] = {}
        self.since = 0.0  # when the oldest held message was sent

    def hold(self, frames: list) -> bool:
        """Hold *frames* (True), or flush what is held and leave them to the caller."""
        head = frames[0]
        if len(frames) != 2 or head[1] not in self.kinds or len(frames[1]) > BUNDLE_BYTES:
            if self.held:
                self.flush()
            return False
        dst = int.from_bytes(head[8:12], "little")
        with self.lock:
            held = self.held.get(dst)
            if held is None:
                if not self.held:
                    self.since = time.monotonic()
                held = self.held[dst] = [0]
            held += frames
            held[0] += len(frames[1])
            if len(held) > 2 * BUNDLE_MAX or held[0] >= BUNDLE_BYTES:
                self._send(dst, self.held.pop(dst))
        return True

    def flush(self) -> None:
        """Send what is held now (any thread)."""
        with self.lock:
            while self.held:
                dst, held = self.held.popitem()
                self._send(dst, held)

    def _send(self, dst: int, held: list) -> None:
        if len(held) == 3:
            self.node._route(held[1:])
        else:
            node = self.node
            node._route([pack_header(Kind.BUNDLE, 0, node.myid, dst, 0, (len(held) - 1) // 2),
                         pack_bundle(held[1:])])


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
        self.link: Link  # set by the subclass once its socket exists
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clustermgr-io", daemon=True)
        self._last_tick = 0.0
        self._lease_wanted = False  # a thread waits to read the link itself (reading())
        self._lease_taken = threading.Event()
        self._lease_gate = threading.Lock()  # one thread at a time takes the lease
        self._leaseholder = 0  # ident of the thread that reads in the I/O thread's place
        self._sigint = False  # a Ctrl-C that came while the leaseholder (main) read
        self._corks: dict[int, Cork] = {}  # thread ident -> what that thread holds back

    # --- called from any thread ---------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, frames: list) -> None:
        """Send a complete message ``[header, body, *buffers]`` from this thread: now, or
        with the next messages when the thread is :meth:`corked`."""
        cork = self._corks.get(threading.get_ident()) if self._corks else None
        if cork is None or not cork.hold(frames):
            self._route(frames)

    @contextlib.contextmanager
    def corked(self, kinds: tuple[int, ...] = (Kind.CALL,)) -> Iterator[Cork]:
        """Inside, the messages of *kinds* this thread sends are held and go out together,
        in ``BUNDLE``s, at the latest when the block ends (see :class:`Cork`).  For a burst
        of sends with no wait between them; nested blocks join the outer one."""
        me = threading.get_ident()
        cork = self._corks.get(me)
        if cork is not None:
            yield cork
            return
        cork = self._corks[me] = Cork(self, frozenset(int(k) for k in kinds))
        try:
            yield cork
        finally:
            del self._corks[me]
            cork.flush()

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run *fn* on the thread that reads the link (the master's I/O thread)."""
        self._soon.append(fn)
        self.link.wake()

    def send_msg(self, kind: Kind, dst: int, frames: list | tuple = (b"",), *,
                 flags: int = 0, mid: int = 0, ref: int = 0) -> None:
        self.send([pack_header(kind, flags, self.myid, dst, mid, ref), *frames])

    def revoke(self, fut: Future) -> None:
        """Ask the worker holding *fut*'s call not to start it (any thread).  If it has not,
        *fut* fails with ``CallRevoked``; if it has, this is moot and the call completes."""
        if fut.where != self.myid and not fut.done():
            self.send([pack_header(Kind.REVOKE, 0, self.myid, fut.where, 0, fut.id), b""])

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

    def time_left(self, wid: int) -> float:
        """Seconds until *wid*'s scheduler ends it; the master knows (its managers'
        ``ends_at``), elsewhere ``inf``."""
        return float("inf")

    def block_until(self, fut: Future, timeout: float | None) -> bool:
        """Wait for *fut*; the worker's main thread overrides this to keep serving calls.
        The thread inside :meth:`reading` reads the link while it waits; on the master, a
        thread that waits while nobody reads becomes the reader until *fut* is done, so
        its answer is read where it is awaited (no hand-off from the I/O thread)."""
        me = threading.get_ident()
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._leaseholder == me:
            fut.add_done_callback(self._wake_reader)  # set by another thread: look
            return self._read_until(fut._event.is_set, deadline)
        if fut._event.is_set():
            return True
        # The I/O thread holds the role only while it handles what came in: wait that out
        # (ROLE_WAIT); a thread that reads for longer completes this Future itself.
        if self._leasable and not self._leaseholder and not self._lease_wanted \
                and me != self._thread.ident and self.link.take_role(timeout=ROLE_WAIT):
            try:
                with self._sigint_held(me):
                    fut.add_done_callback(self._wake_reader)
                    # a thread that wants the lease (pmap) is let in: wait on for the rest
                    self._read_until(lambda: fut._event.is_set() or self._lease_wanted, deadline)
            finally:
                self.link.give_role()
                self._hand_back()
            if fut._event.is_set():
                return True
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return fut._event.wait(left)

    def _wake_reader(self, _: Any) -> None:
        """A Future the reader waits for was completed elsewhere: make it look."""
        if threading.get_ident() != self.link.reader:
            self.link.wake()

    def _hand_back(self) -> None:
        """A waiting thread stopped reading: messages it left unread go to the I/O thread
        (the socket's descriptor signals only new arrivals, not these)."""
        link = self.link
        with link.lock:
            waiting = not link.closed and link.sock.getsockopt(_EVENTS) & _POLLIN
        if waiting:
            link.wake()

    @contextlib.contextmanager
    def _sigint_held(self, me: int) -> Iterator[None]:
        """On the main thread, a Ctrl-C while it reads is held to the next clean point of
        the wait (never in the middle of handling a message) and raised there or after."""
        old_handler = None
        if me == threading.main_thread().ident and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            old_handler = signal.signal(signal.SIGINT, self._hold_sigint)
        try:
            yield
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
                if self._sigint:
                    self._sigint = False
                    raise KeyboardInterrupt

    @contextlib.contextmanager
    def reading(self) -> Iterator[bool]:
        """Inside, the calling thread reads the link in the I/O thread's place whenever it
        waits (:meth:`block_until`), so a burst of calls and their results costs no thread
        hop and no contention for the link or the GIL.  pmap holds it for a whole map.
        Yields False (and changes nothing) where it does not apply: on a worker, on the
        I/O thread, or when another thread holds it.  On the main thread a Ctrl-C is held
        until the next clean point of a wait, then raised there."""
        me = threading.get_ident()
        if not self._leasable or self._leaseholder or me == self.link.reader \
                or self._stopping.is_set() or not self._thread.is_alive():
            yield False
            return
        if not self._lease_gate.acquire(blocking=False):  # another thread is taking it
            yield False
            return
        try:
            with self._holding_lease(me):
                yield True
        finally:
            self._lease_gate.release()

    @contextlib.contextmanager
    def _holding_lease(self, me: int) -> Iterator[None]:
        with self._sigint_held(me):
            self._lease_taken.clear()
            self._lease_wanted = True
            self.link.wake()
            self.link.take_role()  # the I/O thread gives it up at its next look
            self._leaseholder = me
            self._lease_wanted = False
            self._lease_taken.set()
            try:
                yield
            finally:
                self._leaseholder = 0
                self.link.give_role()
                self._lease_wanted = False
                self._lease_taken.set()

    _leasable = False  # the master's node reads this way; a worker's main thread has its own

    def _hold_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT while the main thread holds the lease: raised at the next clean point,
        never in the middle of handling a message."""
        self._sigint = True
        with contextlib.suppress(OSError):
            os.write(self.link._w, b"i")  # no lock here: the handler may interrupt one

    def _read_until(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """The reader (the I/O thread, or the leaseholder) reads and dispatches until
        ``done()`` (True) or *deadline* (False).  Ticks run at least every 256 messages."""
        link = self.link
        handled = 0
        while True:
            if done():
                return True
            if self._sigint and threading.get_ident() == threading.main_thread().ident:
                self._sigint = False  # only into the main thread's wait, never the I/O thread
                raise KeyboardInterrupt
            frames = link.recv()
            if frames is not None:
                self._from_network(frames)
                handled += 1
                if handled & 255:
                    continue
            handled = 0
            if self._housekeeping():
                continue
            if not self._wait_on_link(done, deadline):
                return done()

    def _wait_on_link(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Sleep on the link until a message, a wake-up, the next tick or *deadline*;
        False (without sleeping) once *deadline* has passed."""
        if self.link.closed:
            return False  # nothing will come any more
        wait = self._until_tick()
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wait = min(wait, left)
        if not done():
            self.link.wait(wait)
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake_io()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _wake_io(self) -> None:
        self.link.wake()

    # --- reading the link ---------------------------------------------------------------

    def _run(self) -> None:
        """The I/O thread: the master's reader whenever no other thread reads.  It holds
        the reading role only while it handles what came in, and sleeps without it (on
        its own poll of the socket and the wake-up pipe), so a thread that waits for a
        Future can read its answer itself (:meth:`block_until`); while a thread holds the
        lease (:meth:`reading`) it waits for the role.  Workers override this."""
        try:
            stopping = self._stopping.is_set
            link = self.link
            sleep = link.poller()  # its own: a thread that reads may sleep on the link's
            while not stopping():
                if not link.role.acquire(timeout=0.1):
                    continue
                link.reader = threading.get_ident()
                try:
                    self._drain()
                finally:
                    link.give_role()
                if self._lease_wanted:
                    while self._lease_wanted and not stopping():  # let the leaseholder in
                        self._lease_taken.wait(0.1)
                    continue
                link.wait(self._until_tick() + 0.001, sleep)  # not holding the role
        except Exception:  # the I/O thread must never die silently
            log.exception("clustermgr I/O thread crashed")
            self._on_io_crash()
        finally:
            self._close_sockets()

    def _drain(self) -> None:
        """Handle every message that is in, and the housekeeping that is due (the reader):
        a read whose deadline has passed already, so it never sleeps."""
        self._read_until(self._stopping.is_set, time.monotonic())

    def _housekeeping(self) -> bool:
        """Queued ``call_soon`` work, coalesced work and due ticks; True if it ran any
        ``call_soon`` work (which may have sent or queued more)."""
        ran = bool(self._soon)
        while self._soon:
            self._soon.popleft()()
        self._after_drain()
        now = time.monotonic()
        if now - self._last_tick >= self.tick_interval:
            self._last_tick = now
            self._tick(now)
            self.refs.flush()
        return ran

    def _until_tick(self) -> float:
        return max(0.0, self._last_tick + self.tick_interval - time.monotonic())

    @abc.abstractmethod
    def _route(self, frames: list) -> None:
        """Deliver a message built by this process."""

    @abc.abstractmethod
    def _from_network(self, frames: list) -> None:
        """Handle a message from the network socket."""

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
        self.link.close()  # the socket's own LINGER: a worker's last BYE still goes out

    # --- dispatch of authenticated messages (I/O thread) -------------------------------

    def dispatch(self, hdr: Header, frames: list) -> None:
        kind = hdr.kind
        if len(frames) > 2:  # buffers: some may be in shared memory, mapped here at once
            frames = shm.adopt(frames)
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
            if hdr.flags & Flag.REVOKED:
                entry[0]._set_exception(CallRevoked(f"call {hdr.ref} was withdrawn unstarted "
                                                    f"from worker {hdr.src}"))
                return
            if hdr.id:
                entry[0].run_time = (hdr.id - 1) / 1e6
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
        """Fail every pending request addressed to *wid* (it died).  Its shared memory goes
        first: what it was sent and never took, and what it wrote (``shm.forget``)."""
        shm.forget(wid)
        for mid, (fut, target) in list(self.pending.items()):
            if target == wid and self.pending.pop(mid, None) is not None:
                fut._set_exception(exc)
        self.channels.drop_peer(wid)
        self.refs.drop_process(wid)

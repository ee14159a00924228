"""The owner's side of RemoteChannels.

A channel lives in one process (its owner).  Local users block on it directly; other
processes send CHANNEL requests that the owner's I/O thread answers, at once or when the
channel state allows (a ``take`` on an empty channel answers at the next ``put``).  Every
blocked operation is a *waiter* callback ``waiter(ok, value)``; a waiter that times out is
cancelled under the channel lock, so an item is never handed to a caller that stopped
waiting (no item is lost).
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import serialize
from .errors import ChannelClosedError, ClusterError

if TYPE_CHECKING:
    from .protocol import Header
    from .transport import Node

Waiter = Callable[[bool, Any], None]
Outcome = tuple[bool, bool, Any]  # (done now, ok, value or exception)
_WAITING: Outcome = (False, False, None)


def _closed(cid: str) -> ChannelClosedError:
    return ChannelClosedError(f"RemoteChannel {cid} is closed")


class Channel:
    """A FIFO with optional bound (``maxsize=0``: unbounded).  A *rendezvous* channel
    holds no items: a put waits until a take has its item (Julia's ``Channel(0)``)."""

    def __init__(self, cid: str, maxsize: int, rendezvous: bool = False) -> None:
        self.cid = cid
        self.maxsize = maxsize
        self.rendezvous = rendezvous
        self.items: collections.deque[Any] = collections.deque()
        self.closed = False
        self.getters: collections.deque[Waiter] = collections.deque()
        self.fetchers: collections.deque[Waiter] = collections.deque()
        self.putters: collections.deque[tuple[Any, Waiter]] = collections.deque()
        self.lock = threading.Lock()

    def put(self, item: Any, waiter: Waiter) -> Outcome:
        with self.lock:
            if self.closed:
                return True, False, _closed(self.cid)
            wake = [(w, item) for w in self.fetchers]
            self.fetchers.clear()
            if self.getters:
                wake.append((self.getters.popleft(), item))
                outcome: Outcome = (True, True, None)
            elif not self.rendezvous and (not self.maxsize or len(self.items) < self.maxsize):
                self.items.append(item)
                outcome = (True, True, None)
            else:
                self.putters.append((item, waiter))
                outcome = _WAITING
        for w, value in wake:
            w(True, value)
        return outcome

    def take(self, _arg: Any, waiter: Waiter) -> Outcome:
        with self.lock:
            if self.items:
                item = self.items.popleft()
                moved = None
                if self.putters:
                    next_item, moved = self.putters.popleft()
                    self.items.append(next_item)
                outcome: Outcome = (True, True, item)
            elif self.putters:  # a rendezvous: the waiting put hands its item over
                item, moved = self.putters.popleft()
                outcome = (True, True, item)
            elif self.closed:
                return True, False, _closed(self.cid)
            else:
                self.getters.append(waiter)
                return _WAITING
        if moved is not None:
            moved(True, None)
        return outcome

    def fetch(self, _arg: Any, waiter: Waiter) -> Outcome:
        with self.lock:
            if self.items:
                return True, True, self.items[0]
            if self.putters:  # a rendezvous: the value a put is offering
                return True, True, self.putters[0][0]
            if self.closed:
                return True, False, _closed(self.cid)
            self.fetchers.append(waiter)
            return _WAITING

    def isready(self, _arg: Any, _waiter: Waiter) -> Outcome:
        return True, True, bool(self.items or self.putters)

    def isopen(self, _arg: Any, _waiter: Waiter) -> Outcome:
        return True, True, not self.closed

    def length(self, _arg: Any, _waiter: Waiter) -> Outcome:
        return True, True, len(self.items) + (len(self.putters) if self.rendezvous else 0)

    def close(self, _arg: Any, _waiter: Waiter) -> Outcome:
        with self.lock:
            self.closed = True
            waiting = [*self.getters, *self.fetchers, *(w for _, w in self.putters)]
            self.getters.clear()
            self.fetchers.clear()
            self.putters.clear()
        for w in waiting:
            w(False, _closed(self.cid))
        return True, True, None

    def cancel(self, waiter: Waiter) -> bool:
        """Withdraw a blocked operation; False if it was already answered."""
        with self.lock:
            for queue in (self.getters, self.fetchers):
                if waiter in queue:
                    queue.remove(waiter)
                    return True
            for entry in self.putters:
                if entry[1] is waiter:
                    self.putters.remove(entry)
                    return True
        return False


class QueueChannel:
    """A channel over a user's ``queue.Queue``-like object (``RemoteChannel(factory,
    owner)``).  Non-blocking attempts run under this channel's lock, so a timed-out
    operation is withdrawn atomically (no item is lost or put twice); a blocked operation
    retries in its own thread whenever this channel changes, and at least every 10 ms
    (the object may change by itself)."""

    RETRY = 0.01

    def __init__(self, cid: str, obj: Any) -> None:
        if not (hasattr(obj, "put") and hasattr(obj, "get")):
            raise TypeError(f"a RemoteChannel factory returns a queue.Queue-like object (put, "
                            f"get, qsize), not {type(obj).__qualname__}")
        self.cid, self.obj = cid, obj
        self.closed = False
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.blocked: dict[Any, bool] = {}  # waiter -> still wanted

    def _try(self, op: str, item: Any) -> tuple[bool, Any]:
        """One non-blocking attempt, lock held: (done, value)."""
        try:
            if op == "put":
                self.obj.put(item, block=False)
                return True, None
            if op == "take":
                return True, self.obj.get(block=False)
            with self.obj.mutex:  # fetch: peek at the head (queue.Queue and its kin)
                return (True, self.obj.queue[0]) if len(self.obj.queue) else (False, None)
        except (queue.Empty, queue.Full):
            return False, None
        except AttributeError:
            raise TypeError(f"fetch needs a queue.Queue-like object with .queue and .mutex; "
                            f"{type(self.obj).__qualname__} has none: use take") from None

    def _op(self, op: str, item: Any, waiter: Waiter) -> Outcome:
        with self.lock:
            if self.closed and op == "put":
                return True, False, _closed(self.cid)
            done, value = self._try(op, item)
            if done:
                self.changed.notify_all()
                return True, True, value
            if self.closed:
                return True, False, _closed(self.cid)
            self.blocked[waiter] = True
        threading.Thread(target=self._wait, args=(op, item, waiter), daemon=True,
                         name="clustermgr-channel").start()
        return _WAITING

    def _wait(self, op: str, item: Any, waiter: Waiter) -> None:
        with self.lock:
            while True:
                if not self.blocked.get(waiter):
                    return  # withdrawn (timed out) or answered by close()
                done, value = self._try(op, item)
                if done or self.closed:
                    del self.blocked[waiter]
                    self.changed.notify_all()
                    break
                self.changed.wait(self.RETRY)
        waiter(True, value) if done else waiter(False, _closed(self.cid))

    def put(self, item: Any, waiter: Waiter) -> Outcome:
        return self._op("put", item, waiter)

    def take(self, _arg: Any, waiter: Waiter) -> Outcome:
        return self._op("take", None, waiter)

    def fetch(self, _arg: Any, waiter: Waiter) -> Outcome:
        return self._op("fetch", None, waiter)

    def isready(self, _arg: Any, _waiter: Waiter) -> Outcome:
        with self.lock:
            return True, True, self.obj.qsize() > 0

    def isopen(self, _arg: Any, _waiter: Waiter) -> Outcome:
        return True, True, not self.closed

    def length(self, _arg: Any, _waiter: Waiter) -> Outcome:
        with self.lock:
            return True, True, self.obj.qsize()

    def close(self, _arg: Any, _waiter: Waiter) -> Outcome:
        with self.lock:
            self.closed = True
            self.changed.notify_all()  # blocked takes of an empty queue now fail
        return True, True, None

    def cancel(self, waiter: Waiter) -> bool:
        with self.lock:
            return self.blocked.pop(waiter, False)


OPS = {"put": "put", "take": "take", "fetch": "fetch", "isready": "isready",
       "isopen": "isopen", "len": "length", "close": "close"}


class ChannelStore:
    """The channels one process owns, and the remote waiters blocked on them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.channels: dict[str, Channel] = {}
        self.remote_waiters: dict[tuple[int, int], tuple[Channel, Waiter]] = {}

    def create(self, cid: str, spec: tuple[int, bool, Callable[[], Any] | None], creator: int) -> None:
        """Make channel *cid*; its creator holds the first handle (``refs.py``)."""
        maxsize, rendezvous, factory = spec
        if cid not in self.channels:
            self.channels[cid] = QueueChannel(cid, factory()) if factory is not None \
                else Channel(cid, maxsize, rendezvous)
            self.node.refs._count("c", cid, None, creator, 1)

    def get(self, cid: str) -> Channel:
        try:
            return self.channels[cid]
        except KeyError:
            raise ClusterError(f"RemoteChannel {cid} does not exist on process "
                               f"{self.node.myid}") from None

    def run_local(self, cid: str, op: str, arg: Any, timeout: float | None) -> Any:
        """A blocking operation by a thread of the owner process."""
        chan = self.get(cid)
        if op == "put":  # the value as it is now, as a put from another process stores it
            arg = serialize.loads(serialize.dumps(arg, self.node.myid))
        done = threading.Event()
        box: list[tuple[bool, Any]] = []

        def waiter(ok: bool, value: Any) -> None:
            box.append((ok, value))
            done.set()

        now, ok, value = _op(chan, op)(arg, waiter)
        if not now:
            if not done.wait(timeout) and chan.cancel(waiter):
                raise TimeoutError(f"RemoteChannel {cid}: {op} timed out after {timeout} s")
            done.wait()
            ok, value = box[0]
        if not ok:
            raise value
        return value

    # --- requests from other processes (I/O thread) -----------------------------------

    def on_request(self, hdr: Header, frames: list) -> None:
        try:
            op, cid, arg = serialize.loads(frames[1:])
            if op == "create":
                self.create(cid, arg, hdr.src)
                self.node.reply(hdr, None)
            elif op == "cancel":
                self._cancel(hdr.src, arg)
            else:
                self._start(hdr, self.get(cid), op, arg)
        except Exception as exc:  # noqa: BLE001 - every failure is answered
            self.node.reply(hdr, exc, error=True)

    def _start(self, hdr: Header, chan: Channel, op: str, arg: Any) -> None:
        key = (hdr.src, hdr.id)

        def waiter(ok: bool, value: Any) -> None:
            self.remote_waiters.pop(key, None)
            self.node.reply(hdr, value, error=not ok)

        self.remote_waiters[key] = (chan, waiter)
        now, ok, value = _op(chan, op)(arg, waiter)
        if now:
            self.remote_waiters.pop(key, None)
            self.node.reply(hdr, value, error=not ok)

    def _cancel(self, src: int, request_id: int) -> None:
        entry = self.remote_waiters.pop((src, request_id), None)
        if entry is not None and entry[0].cancel(entry[1]):
            entry[1](False, TimeoutError("RemoteChannel operation timed out"))

    def free(self, cid: str) -> None:
        """No process holds a handle on channel *cid* any more (``refs.py``): forget it,
        with its items."""
        self.channels.pop(cid, None)

    def drop_peer(self, wid: int) -> None:
        """A peer died: withdraw its blocked operations so no item goes to the dead."""
        for key in [k for k in self.remote_waiters if k[0] == wid]:
            chan, waiter = self.remote_waiters.pop(key)
            chan.cancel(waiter)


def _op(chan: Channel | QueueChannel, op: str) -> Callable[[Any, Waiter], Outcome]:
    try:
        return getattr(chan, OPS[op])
    except KeyError:
        raise ClusterError(f"unknown RemoteChannel operation {op!r}") from None

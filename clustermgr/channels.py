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
    """A FIFO with optional bound (``maxsize=0``: unbounded)."""

    def __init__(self, cid: str, maxsize: int) -> None:
        self.cid = cid
        self.maxsize = maxsize
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
            elif not self.maxsize or len(self.items) < self.maxsize:
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
            if self.closed:
                return True, False, _closed(self.cid)
            self.fetchers.append(waiter)
            return _WAITING

    def isready(self, _arg: Any, _waiter: Waiter) -> Outcome:
        return True, True, bool(self.items)

    def length(self, _arg: Any, _waiter: Waiter) -> Outcome:
        return True, True, len(self.items)

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


OPS = {"put": Channel.put, "take": Channel.take, "fetch": Channel.fetch,
       "isready": Channel.isready, "len": Channel.length, "close": Channel.close}


class ChannelStore:
    """The channels one process owns, and the remote waiters blocked on them."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.channels: dict[str, Channel] = {}
        self.remote_waiters: dict[tuple[int, int], tuple[Channel, Waiter]] = {}

    def create(self, cid: str, maxsize: int) -> Channel:
        return self.channels.setdefault(cid, Channel(cid, maxsize))

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
            arg = serialize.loads(serialize.dumps(arg))
        done = threading.Event()
        box: list[tuple[bool, Any]] = []

        def waiter(ok: bool, value: Any) -> None:
            box.append((ok, value))
            done.set()

        now, ok, value = OPS[op](chan, arg, waiter)
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
                self.create(cid, arg)
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
        now, ok, value = OPS[op](chan, arg, waiter)
        if now:
            self.remote_waiters.pop(key, None)
            self.node.reply(hdr, value, error=not ok)

    def _cancel(self, src: int, request_id: int) -> None:
        entry = self.remote_waiters.pop((src, request_id), None)
        if entry is not None and entry[0].cancel(entry[1]):
            entry[1](False, TimeoutError("RemoteChannel operation timed out"))

    def drop_peer(self, wid: int) -> None:
        """A peer died: withdraw its blocked operations so no item goes to the dead."""
        for key in [k for k in self.remote_waiters if k[0] == wid]:
            chan, waiter = self.remote_waiters.pop(key)
            chan.cancel(waiter)

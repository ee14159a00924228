"""Distributed reference counting: an owner frees a Future or a channel once no process
holds a reference to it.

Each process has one :class:`RefTable` (``node.refs``), with two halves:

- **owned**: the objects this process owns that other processes may reference (Futures
  it sent away, the channels it stores), each with a count of references *per process*.
- **held**: for each remote object this process references, one canonical local proxy
  (so two messages carrying the same Future give the same object) and how many times the
  reference arrived here.

The counting is done by the *sender*, which knows where its message goes
(``serialize.dumps(obj, dest=...)``): the owner counts a reference it sends itself; any
other process sends ``ADDREF`` to the owner *before* the message that carries the
reference.  Every message goes through the master in FIFO order per sender, so the owner
always sees the ADDREF for process P before P can release it.  When P's proxy is garbage
collected, its finalizer queues the release; the I/O thread sends the releases of one
tick to each owner in one REFS message (off the hot path).  A process that dies has its
counts dropped.  A reference pickled where the destination is unknown (cloudpickle called
by user code, an exception's payload) pins the object for the owner's lifetime: safe,
never freed too early.

REFS body (JSON): ``{"add": [[kind, id, pid, n], ...], "del": [[kind, id, n], ...]}``,
kind "f" (Future, id int) or "c" (channel, id str); ``del`` releases the sender's count.
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import protocol as P
from . import serialize
from .protocol import Kind

if TYPE_CHECKING:
    from .transport import Node

#: A reference sent where the destination is unknown: held for the owner's lifetime.
PINNED = 0
#: Kinds whose owner keeps the object itself (a Future, a pool); for a channel ("c") every
#: process, the owner too, holds handles on a store the owner keeps.
OBJECT_KINDS = ("f", "p")
_Key = tuple[str, Any]  # (kind, id) on the owner
_Held = tuple[int, str, Any]  # (owner, kind, id) elsewhere


class RefTable:
    """Reference counts of one process (see the module docstring).  Any thread may call
    ``sent``/``rebuilt``; REFS messages, deaths and the flush run on the I/O thread."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._lock = threading.Lock()
        self.owned: dict[_Key, tuple[Any, dict[int, int]]] = {}  # -> (object, pid -> count)
        self._held: dict[_Held, list[int]] = {}  # -> [times received] of the live proxy
        self._proxies: weakref.WeakValueDictionary[_Held, Any] = weakref.WeakValueDictionary()
        self._released: collections.deque[tuple[_Held, int]] = collections.deque()
        self.on_free: dict[str, Callable[[Any], None]] = {}  # kind -> what freeing does

    # --- sending a reference (the thread that serializes) -------------------------------

    def sent(self, owner: int, kind: str, oid: Any, obj: Any = None) -> None:
        """A reference to (owner, kind, oid) is being serialized for the current
        destination.  *obj*: the object itself, when this process owns it."""
        dest = serialize.destination()
        dest = PINNED if dest is None else dest
        if owner == self.node.myid:
            serialize.on_sent(lambda: self._count(kind, oid, obj, dest, 1))
        else:  # before the message itself: the same outbox keeps the order
            body = (P.dump_json({"add": [[kind, oid, dest, 1]]}),)
            serialize.on_sent(lambda: self.node.send_msg(Kind.REFS, owner, body))

    def _count(self, kind: str, oid: Any, obj: Any, pid: int, n: int) -> None:
        with self._lock:
            entry = self.owned.get((kind, oid))
            if entry is None:
                entry = self.owned[(kind, oid)] = (obj, {})
            holders = entry[1]
            holders[pid] = holders.get(pid, 0) + n

    # --- receiving a reference (the thread that deserializes) ---------------------------

    def rebuilt(self, owner: int, kind: str, oid: Any, make: Callable[[], Any]) -> Any:
        """The object for a reference that arrived here: the owner's own object when it
        came home (its count for this process is spent), else this process's proxy."""
        if owner == self.node.myid and kind in OBJECT_KINDS:
            with self._lock:
                entry = self.owned.get((kind, oid))
            self.release_local(kind, oid, owner, 1)
            return entry[0] if entry is not None else None
        key = (owner, kind, oid)
        with self._lock:
            proxy = self._proxies.get(key)
            if proxy is None:
                proxy = make()
                cell = self._held[key] = [0]
                self._proxies[key] = proxy
                weakref.finalize(proxy, self._released.append, (key, cell))
            self._held[key][0] += 1
        return proxy

    def adopt(self, owner: int, kind: str, oid: Any, proxy: Any) -> None:
        """*proxy* is this process's first reference to (owner, kind, oid), already
        counted by the owner (the creator of a channel)."""
        key = (owner, kind, oid)
        with self._lock:
            cell = self._held[key] = [1]
            self._proxies[key] = proxy
            weakref.finalize(proxy, self._released.append, (key, cell))

    # --- on the owner (I/O thread, or locally) ------------------------------------------

    def on_message(self, src: int, body: Any) -> None:
        msg = P.load_json(body)
        for kind, oid, pid, n in msg.get("add", ()):
            self._count(kind, oid, None, int(pid), int(n))
        for kind, oid, n in msg.get("del", ()):
            self.release_local(kind, oid, src, int(n))

    def release_local(self, kind: str, oid: Any, pid: int, n: int) -> None:
        """Process *pid* gave up *n* references to an object owned here."""
        with self._lock:
            entry = self.owned.get((kind, oid))
            if entry is None:
                return
            holders = entry[1]
            left = holders.get(pid, 0) - n
            if left > 0:
                holders[pid] = left
            else:
                holders.pop(pid, None)
            freed = not holders
            if freed:
                del self.owned[(kind, oid)]
        if freed and kind in self.on_free:
            self.on_free[kind](oid)

    def lookup(self, kind: str, oid: Any) -> Any:
        entry = self.owned.get((kind, oid))
        return None if entry is None else entry[0]

    def drop_process(self, pid: int) -> None:
        """*pid* is gone: its references go with it (I/O thread)."""
        with self._lock:
            keys = [key for key, (_, holders) in self.owned.items() if pid in holders]
        for kind, oid in keys:
            self.release_local(kind, oid, pid, 1 << 62)

    def flush(self) -> None:
        """Send the releases queued by finalizers, one REFS message per owner (I/O thread)."""
        if not self._released:
            return
        by_owner: dict[int, list[list[Any]]] = {}
        while self._released:
            (owner, kind, oid), cell = self._released.popleft()
            with self._lock:
                if self._held.get((owner, kind, oid)) is cell:
                    del self._held[(owner, kind, oid)]
            if owner == self.node.myid:
                self.release_local(kind, oid, owner, cell[0])
            else:
                by_owner.setdefault(owner, []).append([kind, oid, cell[0]])
        for owner, dels in by_owner.items():
            if owner in self.node.live_ids() or owner == P.MASTER_ID:
                self.node.send_msg(Kind.REFS, owner, (P.dump_json({"del": dels}),))

    def sizes(self) -> dict[str, int]:
        """How many objects are owned and held here (for tests and benchmarks)."""
        return {"owned": len(self.owned), "held": len(self._held)}

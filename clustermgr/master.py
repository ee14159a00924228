"""The master's node: ROUTER socket, handshake, worker table, relay and heartbeats.

Everything here runs on the thread that reads the link (the I/O thread, or a thread that
reads while it waits: ``transport.Node.block_until``; one at a time) unless a method says
otherwise; "I/O thread" below means that reader.  Other threads send directly (``send`` →
``_route``, any thread) and hand other work to the reader with ``call_soon``;
``cluster.py`` holds the public API built on it.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import protocol as P
from . import shm
from .auth import Gate, RejectLog, ReplyBudget
from .errors import ClusterError, ProcessExitedError, ProtocolError, TopologyError
from .execute import execute, run_local
from .managers.base import ClusterManager, ManageOp, WorkerHandle
from .protocol import Flag, Header, Kind, pack_header
from .settings import Settings
from .transport import Link, Node

log = logging.getLogger("clustermgr")
_DST = slice(8, 12)
_MID = slice(12, 20)
_REQUESTS = (Kind.CALL, Kind.FETCH, Kind.CHANNEL)
#: While launched workers are still joining, membership goes out at most this often.
MEMBERS_EVERY = 0.1
#: A worker that dies this close to its job's end time (or after it) ran out of walltime
#: (or 5 % of its walltime, when that is less).
WALLTIME_SLACK = 10.0
#: scheduler states (in a job's end cause) that mean the infrastructure ended it
_INFRA_STATES = re.compile(r"\b(TIMEOUT|PREEMPTED|NODE_FAIL|BOOT_FAIL|DEADLINE)\b")
_INFRA_STATES_SAY = {"TIMEOUT": "its walltime ran out", "PREEMPTED": "it was preempted",
                     "NODE_FAIL": "its node failed", "BOOT_FAIL": "its node failed to boot",
                     "DEADLINE": "its job reached its deadline"}


@dataclass
class Launch:
    """A worker started by a manager and not yet (or already) joined."""

    handle: WorkerHandle | None  # None between expect() and launch() yielding it
    manager: ClusterManager
    started: float
    wid: int = 0
    error: str = ""
    queued: bool = False  # waiting in a scheduler's queue: no join clock yet


@dataclass
class WorkerInfo:
    id: int
    identity: bytes
    host: str
    pid: int
    launch: Launch | None
    last_seen: float
    state: str = "up"  # up | removing | dead
    gone: threading.Event = field(default_factory=threading.Event)
    joined_at: float = field(default_factory=time.monotonic)

    @property
    def manager(self) -> ClusterManager | None:
        return self.launch.manager if self.launch else None


class MasterNode(Node):
    """Process 1.  Created by ``cluster.node()`` on first use."""

    _leasable = True

    def __init__(self, settings: Settings) -> None:
        self._members_dirty = False
        self._members_sent = 0.0
        super().__init__(P.MASTER_ID)
        self.settings = settings
        self.secret = P.cookie_bytes(settings.cookie) if settings.cookie else P.new_secret()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.SNDHWM, 0)
        self.router.setsockopt(zmq.RCVHWM, 0)
        self.encrypted = (not P.is_loopback(settings.bind)) if settings.encrypt is None \
            else settings.encrypt
        if self.encrypted:  # before bind: the mechanism is fixed per socket
            self.router.curve_server = True
            self.router.curve_secretkey = P.curve_keys(self.secret, b"master")[1]
        port = self.router.bind_to_random_port(f"tcp://{settings.bind}") if not settings.port \
            else self._bind_fixed(settings)
        self.address = f"tcp://{settings.bind}:{port}"
        self.link = Link(self.router)
        self.gate = Gate(self.secret, b"master", b"worker")
        self.rejects = RejectLog("clustermgr master")
        self.replies = ReplyBudget()
        self.workers: dict[int, WorkerInfo] = {}
        self.by_identity: dict[bytes, WorkerInfo] = {}
        self.departed: dict[bytes, int] = {}  # identities of dead workers: late BYE etc.
        self.launches: dict[str, Launch] = {}
        self.dead: dict[int, ProcessExitedError] = {}
        self.load: dict[int, int] = {}
        # worker -> when its last call in flight finished (read by adapt: idle how long)
        self.idle_at: dict[int, float] = {}
        # Workers that get no new calls (pmap, executor, the default pool, remotecall's
        # choice): being retired, or near their walltime.  worker -> why.  Set by adapt.
        self.draining: dict[int, str] = {}
        # Workers whose end is the infrastructure's doing: worker -> what (their calls then
        # fail with ProcessExitedError.infrastructure set; see infrastructure_loss)
        self.retired: dict[int, str] = {}
        self.joined = threading.Condition()
        self._next_wid = 2
        self.announced = 1  # the highest id every worker has been told of (under joined)
        self._last_beat = 0.0
        self._rr = 0
        self._pool: ThreadPoolExecutor | None = None
        self.listeners: list[Callable[[str, int], None]] = []  # ("join"|"leave"|"ready", wid)
        self.plain_output: set[int] = set()  # workers whose output is shown as is
        shm.sweep()  # segments of clustermgr processes killed before (shm.py)

    def listen(self, addr: str, port: int = 0, timeout: float = 10.0) -> str:
        """Listen on one more endpoint (any thread); returns ``tcp://addr:port``.  Off
        loopback only when the master encrypts."""
        if not self.encrypted and not P.is_loopback(addr):
            raise ClusterError(
                f"the master does not encrypt, so it will not listen on {addr}: create the "
                "ElasticManager (or configure(bind=...)) before the first addprocs, or call "
                "configure(encrypt=True) before it")
        try:
            with self.link.lock:  # a socket call, from this thread, under the link's lock
                if port:
                    self.router.bind(f"tcp://{addr}:{port}")
                    return f"tcp://{addr}:{port}"
                return f"tcp://{addr}:{self.router.bind_to_random_port(f'tcp://{addr}')}"
        except zmq.ZMQError as exc:
            raise ClusterError(f"cannot listen on {addr}:{port}: {exc}") from None

    def _bind_fixed(self, settings: Settings) -> int:
        self.router.bind(f"tcp://{settings.bind}:{settings.port}")
        return settings.port

    # --- views for other threads ------------------------------------------------------

    def live_ids(self) -> list[int]:
        return sorted(w.id for w in list(self.workers.values()) if w.state != "dead")

    def check_target(self, wid: int) -> None:
        if wid in self.workers and self.workers[wid].state != "dead":
            return
        if wid in self.dead:
            raise self.dead[wid]
        raise ClusterError(f"there is no worker {wid}; the workers are {self.live_ids()}")

    def death_of(self, wid: int) -> ProcessExitedError | None:
        return self.dead.get(wid)

    def track(self, fut: Any, target: int) -> None:
        self.load[target] = self.load.get(target, 0) + 1
        super().track(fut, target)

    def least_busy(self) -> int:
        ids = [w for w in self.live_ids() if w not in self.draining] or self.live_ids()
        if not ids:
            raise ClusterError("no workers; start some with addprocs()")
        self._rr += 1
        return min(ids, key=lambda w: (self.load.get(w, 0), (w + self._rr) % len(ids)))

    def run_here(self, fut: Any, f: Callable, args: tuple, kwargs: dict) -> None:
        self.pool().submit(run_local, self, fut, f, args, kwargs)

    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="clustermgr-call")
        return self._pool

    # --- network input ----------------------------------------------------------------

    @property
    def rejected_frames(self) -> int:
        """How many messages were dropped as unauthenticated or malformed so far."""
        return self.rejects.total

    def _from_network(self, frames: list) -> None:
        identity = frames[0].bytes
        w = self.by_identity.get(identity)
        try:
            if len(frames) < 2:
                raise ProtocolError("a message without a header frame")
            hdr = P.unpack_header(frames[1])
        except ProtocolError as exc:
            self._reject(identity, f"malformed frame: {exc}")
            return
        if w is None and identity in self.departed:
            self._tell_departed(identity, hdr)
        elif w is None:
            self._handshake(identity, hdr, frames[2:])
        elif hdr.src != w.id:
            self._reject(identity, f"worker {w.id} sent a message claiming to be {hdr.src}")
        else:
            w.last_seen = time.monotonic()
            if hdr.kind == Kind.BUNDLE:
                self._unbundle(w, frames)
            elif hdr.dst != P.MASTER_ID:
                self._relay(w, hdr, frames[1:])
            else:
                self.dispatch(hdr, frames[1:])

    def _unbundle(self, w: WorkerInfo, frames: list) -> None:
        """Each message of a worker's BUNDLE, as if it had come alone (relayed ones too:
        the topology is checked per message)."""
        try:
            if len(frames) != 3:
                raise ProtocolError(f"a bundle of {len(frames) - 1} frames")
            for sub, pair in P.unpack_bundle(frames[2]):
                if sub.src != w.id or sub.kind == Kind.BUNDLE:
                    self._reject(w.identity, f"worker {w.id} bundled a {sub.kind.name} from {sub.src}")
                elif sub.dst != P.MASTER_ID:
                    self._relay(w, sub, pair)
                else:
                    self.dispatch(sub, pair)
                if w.state == "dead":
                    return
        except ProtocolError as exc:
            self._reject(w.identity, f"malformed bundle from worker {w.id}: {exc}")

    def _tell_departed(self, identity: bytes, hdr: Header) -> None:
        """A worker declared dead is still talking (it missed its SHUTDOWN, or it was
        stopped and resumed): its calls have failed already, so it must leave."""
        wid = self.departed[identity]
        if hdr.kind != Kind.BYE:
            log.info("worker %d was removed but is still running; asking it again to leave", wid)
            self._send_raw(identity, [pack_header(Kind.SHUTDOWN, 0, 1, wid), b""])

    def _on_result(self, hdr: Header, frames: list) -> None:
        entry = self.pending.get(hdr.ref)
        if entry is not None:
            wid = entry[1]
            left = self.load[wid] = self.load.get(wid, 1) - 1
            if left <= 0:
                self.idle_at[wid] = time.monotonic()
        super()._on_result(hdr, frames)

    def _reject(self, identity: bytes, why: str) -> None:
        self.rejects.note(why)

    def _relay(self, src: WorkerInfo, hdr: Header, frames: list) -> None:
        """Forward a worker's message to another worker, unopened.  The topology governs
        requests only: the answer to an allowed request always goes through."""
        dst = self.workers.get(hdr.dst)
        request = hdr.kind in _REQUESTS
        err: Exception | None = None
        if dst is None or dst.state == "dead":
            err = self.dead.get(hdr.dst) or ClusterError(f"there is no worker {hdr.dst}")
        elif request and self.topology == "master_worker":
            err = TopologyError("topology 'master_worker' forbids calls between workers; "
                                "use addprocs(..., topology='all_to_all')")
        elif request and self.topology == "custom" and not self._connects(src, dst):
            err = TopologyError(f"the custom topology does not connect worker {src.id} "
                                f"to worker {hdr.dst}")
        if err is None and self._send_raw(dst.identity, frames):  # type: ignore[union-attr]
            return
        err = err or ClusterError(f"worker {hdr.dst} is unreachable")
        if request and (hdr.kind != Kind.CALL or hdr.flags & Flag.WANT_VALUE):
            self.reply(hdr, err, error=True)
        else:
            log.info("dropped %s from worker %d to %d: %s", hdr.kind.name, src.id, hdr.dst, err)

    def _connects(self, a: WorkerInfo, b: WorkerInfo) -> bool:
        la, lb = a.launch, b.launch
        if la is None or lb is None or la.handle is None or lb.handle is None:
            return False
        return la.manager is lb.manager and la.manager.connects(la.handle, lb.handle)

    def _send_raw(self, identity: bytes, frames: list) -> bool:
        """Send to one peer (any thread); False when ZeroMQ has no connection to it."""
        try:
            self.link.send([identity, *frames])
            return True
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise

    def _route(self, frames: list) -> None:
        """Send a message this process built (any thread: the caller's, for a call)."""
        head = getattr(frames[0], "buffer", frames[0])  # the header: bytes we packed
        dst = int.from_bytes(head[_DST], "little")
        w = self.workers.get(dst)
        if w is not None and w.state != "dead" and self._send_raw(w.identity, frames):
            return
        if w is not None and w.state != "dead":
            self.call_soon(lambda: self._connection_lost(w))  # the call stays pending:
            return  # the death path fails it
        mids = [sub.id for sub, _ in P.unpack_bundle(frames[1])] if head[1] == Kind.BUNDLE \
            else [int.from_bytes(head[_MID], "little")]
        for mid in mids:  # each call of a bundle has its own Future
            entry = self.pending.pop(mid, None)
            if entry is not None:
                entry[0]._set_exception(self.dead.get(dst) or ClusterError(f"there is no worker {dst}"))

    def _connection_lost(self, w: WorkerInfo) -> None:
        """ZeroMQ no longer has a connection to *w*.  Without a launcher to report its exit
        (a hand-started worker) that is its end; otherwise the launcher's report (with the
        exit code or signal) or the heartbeat timeout declares it dead."""
        if w.launch is None:
            self.declare_dead(w.id, "its connection to the master closed")

    # --- handshake ----------------------------------------------------------------------

    def _handshake(self, identity: bytes, hdr: Header, body: list) -> None:
        """A message from a peer that has not authenticated: only HELLO and AUTH count,
        and whatever it sends is bounded before it is read (see ``auth.py``)."""
        try:
            if hdr.kind not in (Kind.HELLO, Kind.AUTH):
                raise P.AuthError(f"not authenticated: send HELLO first, not {hdr.kind.name}")
            if len(body) != 1:
                raise ProtocolError(f"a {hdr.kind.name} has one body frame, not {len(body)}")
            msg = P.load_json(body[0], limit=P.HANDSHAKE_LIMIT)
            if hdr.kind == Kind.HELLO:
                self._reply_unauthenticated(identity, Kind.CHALLENGE, self.gate.challenge(identity, msg))
            else:
                self._on_auth(identity, msg)
        except (ProtocolError, P.AuthError) as exc:
            self._reject(identity, str(exc))
            self._reply_unauthenticated(identity, Kind.REFUSED, {"reason": str(exc)})

    def _reply_unauthenticated(self, identity: bytes, kind: Kind, body: dict) -> None:
        if self.replies.take(identity):  # a peer that never reads cannot fill our queue
            self._send_raw(identity, [pack_header(kind, 0, 1, 0), P.dump_json(body)])

    def _on_auth(self, identity: bytes, msg: dict) -> None:
        self.gate.verify(identity, msg)
        self.replies.forget(identity)
        theirs = msg.get("versions")
        if not isinstance(theirs, dict):
            theirs = {}
        mismatch = P.version_mismatch(P.versions(), theirs)
        if mismatch:
            raise P.AuthError(mismatch)
        launch_id = str(msg.get("launch_id", ""))
        with self.joined:  # addprocs marks timeouts under the same lock
            launch = self.launches.get(launch_id)
            if launch is not None and (launch.wid or launch.error):
                raise P.AuthError(f"launch {launch_id} is no longer expected "
                                  f"({launch.error or 'already joined'})")
            self._admit(identity, msg, launch)

    def _admit(self, identity: bytes, msg: dict, launch: Launch | None) -> None:
        wid, self._next_wid = self._next_wid, self._next_wid + 1
        now = time.monotonic()
        pid = msg.get("pid")
        w = WorkerInfo(wid, identity, str(msg.get("host", "?"))[:256],
                       pid if isinstance(pid, int) else 0, launch, now)
        s = self.settings
        from multiprocessing import process

        # The multiprocessing authkey, so that Manager proxies the master passes work on
        # the workers too: sent on the authenticated link (encrypted off loopback).
        shares = s.shared_memory and shm.check_probe(msg.get("shm_probe"))
        if shares:
            shm.enable(wid, shm.probe_creator(msg.get("shm_probe")))
        welcome = {"id": wid, "topology": self.topology, "sys_path": sys.path, "shm": shares,
                   "heartbeat_interval": s.heartbeat_interval, "master_grace": s.master_grace,
                   "mp_authkey": bytes(process.current_process().authkey).hex()}
        self._send_raw(identity, [pack_header(Kind.WELCOME, 0, 1, wid), P.dump_json(welcome)])
        self.workers[wid] = w
        self.by_identity[identity] = w
        if launch is not None:
            launch.wid = wid
            self._notify_manager(launch, ManageOp.REGISTER, wid)
        self._broadcast_members()
        with self.joined:
            self.joined.notify_all()
        for listener in list(self.listeners):
            listener("join", wid)

    # --- control messages, heartbeats, deaths --------------------------------------------

    def _on_call(self, hdr: Header, frames: list) -> None:
        self.pool().submit(execute, self, hdr, frames)

    def _on_control(self, hdr: Header, frames: list) -> None:
        w = self.workers.get(hdr.src)
        if hdr.kind == Kind.OUTPUT and w is not None:
            text = bytes(getattr(frames[1], "buffer", frames[1])).decode(errors="replace")
            self.settings.emit(hdr.src, text, "stderr" if hdr.flags & Flag.STDERR else "stdout",
                               hdr.src in self.plain_output)
        elif hdr.kind == Kind.PREEMPT and w is not None:
            self._preempted(w, frames)
        elif hdr.kind == Kind.BYE and w is not None:
            cause = "removed by rmprocs" if w.state == "removing" else "the worker left the cluster"
            self.declare_dead(w.id, cause, exited=w.launch is None)

    def _tick(self, now: float) -> None:
        s = self.settings
        beating = now - self._last_beat >= s.heartbeat_interval
        if beating:
            self._last_beat = now
        beat = pack_header(Kind.HEARTBEAT, 0, 1, 0)
        for w in list(self.workers.values()):
            if w.state == "dead":
                continue
            if now - w.last_seen > s.heartbeat_timeout:
                self.declare_dead(w.id, f"no heartbeat for {now - w.last_seen:.1f} s "
                                  f"(heartbeat_timeout={s.heartbeat_timeout})")
                self._kill_in_background(w)
            elif beating:
                self._send_raw(w.identity, [beat, b""])
        self.gate.expire()
        self.rejects.flush(now)

    def on_running(self, handle: WorkerHandle) -> None:
        """Called by managers (any thread) when a queued worker's job starts running."""
        with self.joined:
            launch = self.launches.get(handle.launch_id)
            if launch is not None and launch.queued:
                launch.queued = False
                launch.started = time.monotonic()
                self.joined.notify_all()

    def on_process_exit(self, handle: WorkerHandle, cause: str, log_tail: str) -> None:
        """Called by managers (any thread) when a worker's process or job has ended."""
        self.call_soon(lambda: self._process_exited(handle, cause, log_tail))

    def _process_exited(self, handle: WorkerHandle, cause: str, log_tail: str) -> None:
        launch = self.launches.get(handle.launch_id)
        if launch is None:
            return
        with self.joined:
            if not launch.wid:
                # keep the first reason: a join timeout stays one after our kill ends it
                launch.error = launch.error or f"{cause} before joining" + (
                    f"; its log ends with:\n{log_tail}" if log_tail else "")
                self.joined.notify_all()
                return
        w = self.workers[launch.wid]
        if w.state != "dead":
            if w.state == "removing":
                cause = f"removed by rmprocs ({cause})"
            self.declare_dead(w.id, cause, log_tail)
        w.gone.set()

    def declare_dead(self, wid: int, cause: str, log_tail: str = "", exited: bool = False) -> None:
        """Mark *wid* dead, tell the others, then fail its calls (I/O thread).  The cluster's
        view is updated first, so a caller that sees the error sees the worker gone too."""
        w = self.workers[wid]
        if w.state == "dead":
            return
        w.state = "dead"
        if exited:
            w.gone.set()
        self.by_identity.pop(w.identity, None)
        self.departed[w.identity] = wid
        exc = ProcessExitedError(wid, cause, log_tail, self.infrastructure_loss(w, cause))
        self.dead[wid] = exc
        self.load.pop(wid, None)
        self.idle_at.pop(wid, None)
        self.draining.pop(wid, None)
        self.plain_output.discard(wid)
        payload = P.dump_json({"id": wid, "cause": cause})
        for other in self.workers.values():
            if other.state != "dead":
                self._send_raw(other.identity, [pack_header(Kind.PEER_DIED, 0, 1, other.id), payload])
        self._broadcast_members()
        if w.launch is not None:
            self._notify_manager(w.launch, ManageOp.DEREGISTER, wid)
        for listener in list(self.listeners):
            listener("leave", wid)
        with self.joined:
            self.joined.notify_all()
        self.fail_target(wid, exc)
        log.info("worker %d is gone: %s", wid, cause)

    def _preempted(self, w: WorkerInfo, frames: list) -> None:
        """A worker got its scheduler's preemption warning: it takes no new calls (it hands
        back those not started, and leaves when its running task ends); its end is the
        infrastructure's."""
        try:
            sig = str(P.load_json(frames[1]).get("signal", "?"))[:16]
        except Exception:  # noqa: BLE001 - a notice, whatever it says
            sig = "?"
        log.warning("worker %d got its scheduler's preemption warning (%s): it takes no new "
                    "tasks and leaves when its running one ends", w.id, sig)
        self.draining[w.id] = "preempted"
        self.retired[w.id] = f"it was preempted ({sig})"
        for listener in list(self.listeners):
            listener("preempted", w.id)

    def infrastructure_loss(self, w: WorkerInfo, cause: str) -> str:
        """What of the infrastructure ended *w*, or "" when nothing says so: a retirement
        (``retired``), a scheduler's state that is the infrastructure's (walltime,
        preemption, node failure), or a death at the end of its walltime."""
        if w.id in self.retired:
            return self.retired[w.id]
        match = _INFRA_STATES.search(cause)
        if match:
            return _INFRA_STATES_SAY[match.group(1)]
        wall = w.launch.manager.walltime_seconds if w.launch is not None else None
        if self.time_left(w.id) < min(WALLTIME_SLACK, 0.05 * wall if wall else WALLTIME_SLACK):
            return "its walltime ran out"
        return ""

    def time_left(self, wid: int) -> float:
        """Seconds until the scheduler ends worker *wid* (its manager's ``ends_at``);
        ``inf`` when nothing ends it.  Any thread."""
        w = self.workers.get(wid)
        if w is None or w.launch is None or w.launch.handle is None:
            return float("inf")
        end = w.launch.manager.ends_at(w.launch.handle)
        return float("inf") if end is None else end - time.time()

    def _broadcast_members(self) -> None:
        """Membership changed: tell every worker once the ready messages are handled; while
        more launched workers are still to join, at most every ``MEMBERS_EVERY`` seconds
        (200 workers joining cost a few broadcasts, not one per join: each goes to every
        worker, so one per join grows with the square of the workers)."""
        self._members_dirty = True

    def _after_drain(self) -> None:
        if self._members_dirty:
            now = time.monotonic()
            if now < self._members_sent + MEMBERS_EVERY and self._expecting():
                return  # more are on their way: one broadcast for several joins (by then)
            self._members_sent = now
            self._members_dirty = False
            self._send_members()
            # addprocs returns only now: a call its caller sends next (from its own thread,
            # on the same connection) reaches each worker after the new membership
            with self.joined:
                self.announced = self._next_wid - 1
                self.joined.notify_all()

    def _expecting(self) -> bool:
        """Workers launched that have neither joined nor failed yet."""
        return any(not launch.wid and not launch.error for launch in list(self.launches.values()))

    def _until_tick(self) -> float:
        wait = super()._until_tick()
        if self._members_dirty:  # a broadcast put off while workers join: not past its time
            wait = min(wait, max(0.0, self._members_sent + MEMBERS_EVERY - time.monotonic()))
        return wait

    def _send_members(self) -> None:
        body = P.dump_json({"workers": self.live_ids(), "topology": self.topology})
        for w in self.workers.values():
            if w.state != "dead":
                self._send_raw(w.identity, [pack_header(Kind.MEMBERS, 0, 1, w.id), body])

    def _notify_manager(self, launch: Launch, op: ManageOp, wid: int) -> None:
        if launch.handle is None:
            return  # addprocs sends REGISTER when launch() yields the handle
        try:
            launch.manager.manage(launch.handle, op, wid)
        except Exception:  # a manager's notification must not break the I/O thread
            log.exception("%r.manage(%s) failed", launch.manager, op)

    def _kill_in_background(self, w: WorkerInfo) -> None:
        if w.launch is not None and w.launch.handle is not None:
            launch = w.launch
            threading.Thread(target=launch.manager.kill, args=(launch.handle, 1.0),
                             daemon=True, name="clustermgr-kill").start()

    def shutdown_io(self) -> None:
        self.stop()
        self.link.close(linger=0)  # if the I/O thread did not end in time
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.ctx.destroy(linger=0)
        shm.release()
        shm.sweep()  # workers killed on the way out

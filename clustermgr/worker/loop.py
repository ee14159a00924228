"""The worker runtime: handshake, the link, and tasks on the main thread.

Started by ``python -m clustermgr.worker`` (``worker/__main__.py``). The main thread reads
the link itself between tasks: a CALL runs where it is read and its RESULT goes out from
the same thread, with no thread hop (the calls of a BUNDLE are queued first, and their
results held to go out together: ``results_cork``, ``HOLD_RESULTS``). It hands the link
over while it runs a task: once a task has run for ``TAKEOVER_AFTER`` seconds the I/O
thread reads instead, so heartbeats, interrupts and requests for values this worker owns
keep flowing while user code computes; when the task ends the main thread takes the link
back. While a task waits for a Future on the main thread, the worker keeps running
incoming calls (nested), so two workers that call each other cannot deadlock.

Exit codes: 0 asked to leave; 3 refused by the master (wrong secret, version mismatch);
4 master unreachable within ``connect_timeout``; 5 master silent for ``master_grace``;
6 the launcher's channel closed (``--stdin-config``); 7 the master restarted and no longer
knows this worker (``clustermgr worker`` then joins it afresh).
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import io
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from .. import protocol as P
from .. import shm
from ..auth import client_auth
from ..errors import AuthError, ClusterError, ProcessExitedError, TopologyError
from ..execute import execute, flush_std, run_local
from ..protocol import Flag, Header, Kind, pack_header
from ..transport import Cork, Link, Node, log, set_current_node

EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_MASTER_LOST, EXIT_CHANNEL_CLOSED, EXIT_MASTER_RESTARTED = \
    3, 4, 5, 6, 7
#: Tasks that wait may run incoming calls nested, this deep at most; calls arriving past
#: that wait their turn (in order) instead of growing the stack without bound.
MAX_NESTING = 32
#: A task running longer than this hands the link to the I/O thread (see the docstring).
TAKEOVER_AFTER = 0.05
#: Results the main thread holds back (to go several to a message) go out at the latest
#: when the oldest is this old, checked between tasks (and at TAKEOVER_AFTER by the I/O
#: thread while a task runs).
HOLD_RESULTS = 0.002
_WAKE = object()
_SHUTDOWN = object()


class MasterUnreachable(ClusterError):
    """No answer from the master within the connect timeout."""


class WorkerNode(Node):
    """Process 2..N.  One per worker process, created by :func:`run_worker`."""

    def __init__(self, address: str, secret: bytes, launch_id: str = "", encrypt: bool = False) -> None:
        super().__init__(myid=0)
        self.address = address
        self.secret = secret
        self.launch_id = launch_id
        self.encrypt = encrypt
        self.dealer = self.ctx.socket(zmq.DEALER)
        if encrypt:  # the master's key comes from the secret; ours can be anything
            self.dealer.curve_serverkey = P.curve_keys(secret, b"master")[0]
            self.dealer.curve_publickey, self.dealer.curve_secretkey = zmq.curve_keypair()
        self.dealer.setsockopt(zmq.LINGER, 2000)
        self.dealer.setsockopt(zmq.SNDHWM, 0)
        self.dealer.setsockopt(zmq.RCVHWM, 0)
        self.dealer.connect(address)
        self.link = Link(self.dealer)
        self._main = threading.main_thread().ident
        self._main_reads = False  # the main thread holds the link's reading role
        self._want_role = False  # the main thread waits for the I/O thread to give it back
        self._interrupt_now = False  # an INTERRUPT the main thread read for its own task
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.deferred: collections.deque[Any] = collections.deque()  # calls past MAX_NESTING
        # CALLs read but not started, by (caller, id), and those withdrawn by a REVOKE
        self._unstarted: set[tuple[int, int]] = set()
        self._revoked: set[tuple[int, int]] = set()
        self._revoke_lock = threading.Lock()
        self._bundled = False  # the main thread is handing out the calls of a BUNDLE
        #: the main thread's results and output, held while it has more calls to run
        self.results_cork = Cork(self, frozenset((int(Kind.RESULT), int(Kind.OUTPUT))))
        self.heartbeat_interval = 1.0
        self.master_grace = 60.0
        self.last_from_master = time.monotonic()
        self.last_beat = 0.0
        self.running = 0  # depth of tasks on the main thread (nested calls)
        self.task_seq = 0  # tasks started so far: an interrupt belongs to one of them
        self.interrupting: tuple[int, int] | None = None  # (task_seq, SIGINTs left to send)
        self.leaving = False
        self.restarted = False
        self._pool: Any = None
        # The scheduler's preemption warning (a signal, see on_preempt): its name once it
        # came; told: the master heard, queued calls went back, the worker leaves when idle
        self.preempted = ""
        self._preempt_told = False
        self._leave_asked = False
        self._checkpointed = 0  # task_seq of the task checkpointed (one hook call per task)

    # --- handshake (main thread, before the I/O thread starts) ------------------------

    def handshake(self, timeout: float, versions: dict[str, str] | None = None) -> dict:
        cn = P.new_nonce()
        self._send_now(Kind.HELLO, {"nonce": cn.hex()})
        challenge = self._expect(Kind.CHALLENGE, timeout)
        try:
            answer = client_auth(self.secret, b"master", b"worker", cn, challenge)
        except AuthError:
            raise AuthError(f"the master at {self.address} holds a different secret than "
                            "this worker (check CLUSTERMGR_COOKIE or --cookie-file); refusing "
                            "to run anything it sends") from None
        probe = shm.probe()  # does the master share our /dev/shm? (it reads this back)
        try:
            self._send_now(Kind.AUTH, {
                **answer, "versions": versions or P.versions(), "launch_id": self.launch_id,
                "host": os.uname().nodename, "pid": os.getpid(), "shm_probe": probe})
            welcome = self._expect(Kind.WELCOME, timeout)
        finally:
            shm.unprobe(probe)
        if welcome.get("shm"):
            shm.enable(P.MASTER_ID)
        self.myid = int(welcome["id"])
        self.topology = str(welcome.get("topology", "all_to_all"))
        self.heartbeat_interval = float(welcome.get("heartbeat_interval", 1.0))
        self.master_grace = float(welcome.get("master_grace", 60.0))
        self.tick_interval = min(0.25, self.heartbeat_interval / 2)  # also paces interrupt repeats
        if welcome.get("mp_authkey"):  # the master's Manager proxies then work here
            from multiprocessing import process

            process.current_process().authkey = bytes.fromhex(welcome.pop("mp_authkey"))
        return welcome

    def _send_now(self, kind: Kind, body: dict) -> None:
        self.dealer.send_multipart([pack_header(kind, 0, self.myid, P.MASTER_ID), P.dump_json(body)])

    def _expect(self, kind: Kind, timeout: float) -> dict:
        if not self.dealer.poll(int(timeout * 1000)):
            hint = (" (with --encrypt, a secret that differs from the master's looks like "
                    "this too)") if self.encrypt else ""
            raise MasterUnreachable(f"no answer from the master at {self.address} within "
                                    f"{timeout} s{hint}")
        frames = self.dealer.recv_multipart(copy=False)  # not authenticated yet: bounded reads
        if len(frames) != 2:
            raise P.ProtocolError(f"the peer at {self.address} sent {len(frames)} frames "
                                  "where the master sends 2; is it a clustermgr master?")
        hdr = P.unpack_header(frames[0])
        body = P.load_json(frames[1])
        if hdr.kind == Kind.REFUSED:
            raise AuthError(f"the master refused this worker: {body.get('reason', '?')}")
        if hdr.kind != kind:
            raise AuthError(f"expected {kind.name} from the master, got {hdr.kind.name}")
        return body

    # --- the Node hooks -----------------------------------------------------------------

    def _route(self, frames: list) -> None:
        self.link.send(frames)

    def _from_network(self, frames: list) -> None:
        hdr = P.unpack_header(frames[0])  # the master is authenticated: trust its framing
        self.last_from_master = time.monotonic()
        if hdr.kind != Kind.BUNDLE:
            self.dispatch(hdr, frames)
            return
        # Calls of a bundle queue (each revocable until it starts) before any runs; only
        # the thread that reads dispatches, so the flag is never set by two at once.
        self._bundled = True
        try:
            for sub, pair in P.unpack_bundle(frames[1]):
                self.dispatch(sub, pair)
        finally:
            self._bundled = False

    def _on_call(self, hdr: Header, frames: list) -> None:
        if self._preempt_told:  # it is leaving: the caller sends the call elsewhere
            self.send([pack_header(Kind.RESULT, Flag.REVOKED, self.myid, hdr.src, 0, hdr.id), b""])
            return
        if threading.get_ident() != self._main:
            with self._revoke_lock:
                self._unstarted.add((hdr.src, hdr.id))
            self.inbox.put((hdr, frames))  # the I/O thread reads: the main thread runs it
        elif self.running < MAX_NESTING and not self.deferred and not self._bundled:
            self.run_task(hdr, frames)  # read by the main thread: run it here and now
        else:
            with self._revoke_lock:
                self._unstarted.add((hdr.src, hdr.id))
            self.deferred.append((hdr, frames))

    def _on_revoke(self, hdr: Header) -> None:
        """A caller withdraws a CALL (its scheduler found a free worker for it): if it is
        still waiting here, it will not run and the caller hears so; if it started, the
        REVOKE is moot and its RESULT comes as usual."""
        key = (hdr.src, hdr.ref)
        with self._revoke_lock:
            if key not in self._unstarted:
                return
            self._unstarted.discard(key)
            self._revoked.add(key)
        self.send([pack_header(Kind.RESULT, Flag.REVOKED, self.myid, hdr.src, 0, hdr.ref), b""])

    def _on_control(self, hdr: Header, frames: list) -> None:
        kind = hdr.kind
        if kind == Kind.REVOKE:
            self._on_revoke(hdr)
        elif kind == Kind.INTERRUPT:
            if self.running:
                self._interrupt()
        elif kind == Kind.SHUTDOWN:
            self.inbox.put(_SHUTDOWN)
        elif kind == Kind.REFUSED:  # a new master on the same address: start over
            self.restarted = True
            self.inbox.put(_SHUTDOWN)
            if self.running:
                self._interrupt()
        elif kind == Kind.MEMBERS:
            msg = P.load_json(frames[1])
            self.members = [int(w) for w in msg.get("workers", [])]
            self.topology = str(msg.get("topology", self.topology))
        elif kind == Kind.PEER_DIED:
            msg = P.load_json(frames[1])
            wid = int(msg["id"])
            self.members = [w for w in self.members if w != wid]
            self.fail_target(wid, ProcessExitedError(wid, str(msg.get("cause", "?"))))

    def _interrupt(self) -> None:
        """Interrupt the running task: read on the main thread (the task waits for a
        Future), it raises at a clean point of the wait; read by the I/O thread, by SIGINT."""
        if threading.get_ident() == self._main:
            self._interrupt_now = True
        else:
            self.interrupting = (self.task_seq, 10)
            self._signal_main()

    def _signal_main(self) -> None:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]

    def _repeat_interrupt(self) -> None:
        """A signal can be swallowed (C code that retries on EINTR): repeat it while the
        same task is still in user code, a few times."""
        seq, left = self.interrupting or (0, 0)
        if threading.get_ident() == self._main:  # the task waits, reading: no signal
            self.interrupting = None
            self._interrupt_now = bool(left and seq == self.task_seq)
        elif left and seq == self.task_seq and self.in_user_code:
            self.interrupting = (seq, left - 1)
            self._signal_main()
        else:
            self.interrupting = None

    def on_preempt(self, signum: int, frame: Any) -> None:
        """The scheduler's preemption warning (``CLUSTERMGR_PREEMPT_SIGNAL``), on the main
        thread.  Only flags it for the I/O thread (which tells the master and hands back the
        queued calls: a handler must not take the link's lock), and, while a task runs that
        offers ``checkpoint()``, calls it and raises ``Preempted`` into the task, so that
        its caller runs the returned ``Resume`` elsewhere (``clustermgr.checkpoint``)."""
        from ..checkpoint import Preempted, running_call

        self.preempted = self.preempted or signal.Signals(signum).name
        with contextlib.suppress(OSError):
            os.write(self.link._w, b"p")  # wake the reader (no lock: it may hold it now)
        if not self.in_user_code or self._checkpointed == self.task_seq:
            return
        call = running_call(frame)
        hook = getattr(call[0], "checkpoint", None) if call else None
        if not callable(hook):
            return  # it runs on: it ends within the warning time, or is re-queued
        self._checkpointed = self.task_seq
        resume = hook(*call[1], **call[2])
        if resume is not None:
            raise Preempted(resume)

    def _after_preempt(self) -> None:
        """After the warning (the link's reader, or the I/O thread while the main thread
        reads): tell the master (no new calls come), hand back every call not started (its
        caller sends it elsewhere), leave once idle."""
        with self._revoke_lock:  # the reader and the I/O thread may both come here
            first, self._preempt_told = not self._preempt_told, True
            keys, self._unstarted = list(self._unstarted), set()
            self._revoked.update(keys)
        if first:
            self.send_msg(Kind.PREEMPT, P.MASTER_ID, (P.dump_json({"signal": self.preempted}),))
        if keys:
            for src, mid in keys:
                self.send([pack_header(Kind.RESULT, Flag.REVOKED, self.myid, src, 0, mid), b""])
        if not self.running and not self._leave_asked:
            self._leave_asked = True
            self.inbox.put(_SHUTDOWN)
            self.link.wake()

    def _after_drain(self) -> None:
        if self.preempted and not self._leave_asked:
            self._after_preempt()

    def _tick(self, now: float) -> None:
        if self.interrupting:
            self._repeat_interrupt()
        if now - self.last_beat >= self.heartbeat_interval:
            self.last_beat = now
            self.link.send([pack_header(Kind.HEARTBEAT, 0, self.myid, 1), b""])
        silent = now - self.last_from_master
        if silent > self.master_grace and not self.leaving:
            os.write(2, f"clustermgr worker {self.myid}: no word from the master for "
                        f"{silent:.1f} s (master_grace={self.master_grace}); exiting\n".encode())
            end_descendants(grace=1.0)  # what its tasks started goes with it
            shm.release()
            shm.sweep()  # what a master that died left in shared memory
            os._exit(EXIT_MASTER_LOST)

    def check_target(self, wid: int) -> None:
        if wid == P.MASTER_ID:
            return
        if self.topology == "master_worker":
            raise TopologyError("topology 'master_worker' forbids calls between workers; "
                                "use addprocs(..., topology='all_to_all')")
        # An id above every one we know may have joined since our last MEMBERS: the
        # master, which knows, refuses it if not; below, it is gone or never was.
        if wid not in self.members and wid < max(self.members, default=0):
            raise ClusterError(f"there is no worker {wid}; the workers are {self.members}")

    def live_ids(self) -> list[int]:
        return list(self.members)

    def least_busy(self) -> int:
        counts = {w: 0 for w in self.members if w != self.myid}
        for _, target in list(self.pending.values()):
            if target in counts:
                counts[target] += 1
        if not counts:
            raise ClusterError("no other workers to run on")
        return min(counts, key=counts.__getitem__)

    def run_here(self, fut: Any, f: Callable, args: tuple, kwargs: dict) -> None:
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="clustermgr-self")
        self._pool.submit(run_local, self, fut, f, args, kwargs)

    def block_until(self, fut: Any, timeout: float | None) -> bool:
        """On the main thread: keep running incoming calls while waiting for *fut*."""
        if threading.get_ident() != self._main:
            return super().block_until(fut, timeout)
        self.results_cork.flush()  # what it answered so far goes out before it waits
        deadline = None if timeout is None else time.monotonic() + timeout
        took = not self._main_reads and self.link.take_role(blocking=False)
        if self._main_reads or took:  # read the link here until fut is done
            self._main_reads = True
            fut.add_done_callback(lambda _: self.link.wake())  # done by another thread
            try:
                return self._serve_main(fut, deadline)
            finally:
                if took:
                    self._main_reads = False
                    self.link.give_role()
        # The I/O thread reads the link: it queues calls for this thread in the inbox.
        fut.add_done_callback(lambda _: self.inbox.put(_WAKE))
        while not fut.done():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            nest = self.running < MAX_NESTING
            if nest and self.deferred:
                item = self.deferred.popleft()
            else:
                try:
                    item = self.inbox.get(timeout=remaining)
                except queue.Empty:
                    return fut.done()
            if item is _SHUTDOWN:
                self.leaving = True
            elif item is not _WAKE:
                if nest:
                    self.run_task(*item)
                else:
                    self.deferred.append(item)
        return True

    # --- the main thread ----------------------------------------------------------------

    def _serve_main(self, fut: Any, deadline: float | None) -> bool:
        """Read the link on the main thread (holding the role) and run what arrives, until
        *fut* is done (True), *deadline* passes (False), or, with no *fut*, the worker is
        asked to leave."""
        link = self.link
        while True:
            if fut is None:
                if self.leaving:
                    return True
            elif fut.done():
                return True
            if self._interrupt_now:
                self._interrupt_now = False
                if self.in_user_code:
                    raise KeyboardInterrupt  # into the task that waits
            if self.deferred and self.running < MAX_NESTING:
                cork = self.results_cork
                if cork.held and time.monotonic() - cork.since >= HOLD_RESULTS:
                    cork.flush()
                self.run_task(*self.deferred.popleft())
                continue
            if not self.inbox.empty():  # queued by the I/O thread: they came first
                item = self.inbox.get()
                if item is _SHUTDOWN:
                    self.leaving = True
                elif item is not _WAKE:
                    self.deferred.append(item)
                continue
            if self.results_cork.held:  # nothing more to run now: the answers go out
                self.results_cork.flush()
            frames = link.recv()
            if frames is not None:
                self._from_network(frames)
                continue
            if self._housekeeping():
                continue
            if not self._wait_on_link(lambda: fut is not None and fut.done(), deadline):
                return fut.done()

    def run_task(self, hdr: Header, frames: list) -> None:
        if self._unstarted or self._revoked:
            key = (hdr.src, hdr.id)
            with self._revoke_lock:
                if key in self._revoked:
                    self._revoked.discard(key)
                    return  # withdrawn while it waited; its caller was told
                self._unstarted.discard(key)
        self.task_seq += 1
        self.running += 1
        reads = self._main_reads
        if reads:  # the I/O thread may read while the task runs long
            self._main_reads = False
            self.link.give_role()
        try:
            execute(self, hdr, frames)
        finally:
            self.running -= 1
            flush_std()
            if reads:
                self._take_role_back()
                self._main_reads = True

    def _take_role_back(self) -> None:
        if self.link.take_role(blocking=False):
            return
        self._want_role = True  # the I/O thread took over: it gives the role back
        self.link.wake()
        self.link.take_role()
        self._want_role = False

    def _run(self) -> None:
        """The I/O thread: reads the link while a task runs longer than TAKEOVER_AFTER."""
        try:
            seen = -1
            while not self._stopping.wait(TAKEOVER_AFTER):
                if self.preempted:
                    self._after_preempt()
                seq = self.task_seq
                if self.running and seq == seen and not self._main_reads \
                        and self.link.take_role(blocking=False):
                    self.results_cork.flush()  # the task runs long: its elders' answers go
                    try:
                        self._read_until(lambda: self._want_role or self._stopping.is_set(), None)
                    finally:
                        self.link.give_role()
                seen = seq
        except Exception:  # the I/O thread must never die silently
            log.exception("clustermgr I/O thread crashed")
            self._on_io_crash()
        finally:
            self._close_sockets()

    def serve(self) -> None:
        """Run tasks until the master asks this worker to leave."""
        self.link.take_role()
        self._main_reads = True
        self._corks[self._main] = self.results_cork
        try:
            while not self.leaving:
                try:
                    self._serve_main(None, None)
                except KeyboardInterrupt:
                    continue  # an interrupt that arrived after its task finished
        finally:
            self._corks.pop(self._main, None)
            self.results_cork.flush()
        self.send_msg(Kind.BYE, P.MASTER_ID)

    def on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT interrupts a task's own code only: never the runtime around it (the reply
        to the caller must always go out).  Only the SIGINTs this worker sends itself (for
        ``interrupt()``, or a restarted master) count: one from outside (a terminal's
        Ctrl-C, LSF's ``bkill``, which sends SIGINT before SIGTERM) is ignored, so a worker
        is stopped by the scheduler's SIGTERM/SIGKILL, and its callers are told so."""
        if self.in_user_code and (self.interrupting is not None or self.restarted):
            self.interrupting = None
            raise KeyboardInterrupt


class ForwardStream(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a worker: complete lines go to the master as OUTPUT
    messages, in order with the task's result (both go through the same outbox)."""

    def __init__(self, node: WorkerNode, stderr: bool) -> None:
        self.node = node
        self.flags = Flag.STDERR if stderr else Flag.NONE
        self.buf: list[str] = []
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        with self.lock:
            self.buf.append(s)
            if "\n" in s:
                text = "".join(self.buf)
                cut = text.rfind("\n") + 1
                self.buf = [text[cut:]] if cut < len(text) else []
                self._send(text[:cut])
        return len(s)

    def flush(self) -> None:
        with self.lock:
            if self.buf:
                text, self.buf = "".join(self.buf), []
                if text:
                    self._send(text)

    def _send(self, text: str) -> None:
        self.node.send_msg(Kind.OUTPUT, P.MASTER_ID, (text.encode(),), flags=self.flags)


def run_worker(address: str, secret: bytes, launch_id: str = "", connect_timeout: float = 60.0,
               encrypt: bool = False) -> int:
    """Join the master at *address* and serve until told to leave; return the exit code."""
    node = WorkerNode(address, secret, launch_id, encrypt)
    try:
        welcome = node.handshake(connect_timeout)
    except MasterUnreachable as exc:
        print(f"clustermgr worker: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (AuthError, P.ProtocolError) as exc:
        print(f"clustermgr worker: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    # A crash in C (a segfault, an abort) leaves the Python stacks in the log, whose tail the
    # master's ProcessExitedError carries; kill -USR1 prints them on demand.
    faulthandler.enable(all_threads=True)
    from ..checkpoint import preempt_signals

    warnings = preempt_signals(os.environ.get("CLUSTERMGR_PREEMPT_SIGNAL", ""))
    if signal.SIGUSR1 not in warnings:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    for sig in warnings:
        signal.signal(sig, node.on_preempt)
    sys.path[:0] = [p for p in welcome.get("sys_path", []) if p not in sys.path]
    set_current_node(node)
    signal.signal(signal.SIGINT, node.on_sigint)
    sys.stdout = ForwardStream(node, stderr=False)
    sys.stderr = ForwardStream(node, stderr=True)
    node.start()
    try:
        node.serve()
    finally:
        flush_std()
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        end_descendants()
        node.stop()
        _term(node.ctx, timeout=3.0)
        set_current_node(None)
    return EXIT_MASTER_RESTARTED if node.restarted else 0


def _term(ctx: zmq.Context, timeout: float) -> None:
    """Let queued messages (the BYE) go out, but never wait for ZeroMQ for long."""
    t = threading.Thread(target=ctx.term, daemon=True, name="clustermgr-term")
    t.start()
    t.join(timeout)


def end_descendants(grace: float = 2.0) -> None:
    """A leaving worker takes what its tasks started with it (even detached processes)."""
    import psutil

    from ..processes import stop_processes

    stop_processes(psutil.Process().children(recursive=True), grace)

"""pmap and preduce.

pmap keeps as many batches in flight per worker as its pipelining window says (``window.py``:
deep for tiny batches, so a worker never waits for its next one; one at a time for long
ones, so a short batch never queues behind a long one), ships ``f`` once per worker, and
treats "f raised" and "the worker died" alike: each failed item is retried per
``retry_delays``/``retry_check``, then handed to ``on_error`` or raised.  Results come back
in input order, each exactly once.  The calling thread reads the results itself while the
map runs (``Node.reading``).
"""

from __future__ import annotations

import collections
import functools
import heapq
import itertools
import math
import queue
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .calls import ErrorPayload, Future, check_timeout, get_node, local_error, remotecall
from .errors import CallRevoked, ClusterError, Preempted, ProcessExitedError, RemoteError
from .pools import FunctionCache, WorkerPool, default_worker_pool
from .transport import Signal
from .window import POLL, Window

PREFETCH = 2
AUTO_BATCHES_PER_WORKER = 4
AUTO_MAX_BATCH = 8192
#: a pmap item whose worker died this many times while running it alone is not retried
#: again, whatever ``retry_delays`` allows (it would take every fresh worker with it)
MAX_ITEM_DEATHS = 3
#: how many times an item lost to the infrastructure (walltime, preemption, a node
#: failure, a worker retired by adapt) is sent again, on top of its ``retry_delays``
INFRA_RETRIES = 5
#: with no worker yet and an adapt that will start some, pmap looks this often
WAIT_FOR_WORKERS = 0.05


class _Failed:
    """An item of a batch whose call raised (the rest of the batch is unaffected)."""

    __slots__ = ("payload",)

    def __init__(self, payload: ErrorPayload) -> None:
        self.payload = payload


def _run_items(f: Callable, items: list, star: bool) -> list[Any]:
    """On a worker: ``[f(*args) for args in items]`` (*star*: items are argument tuples)
    or ``[f(x) for x in items]``, an item that raises giving a ``_Failed`` in its place."""
    from .calls import myid

    out: list[Any] = []
    it = iter(items)
    while True:
        try:  # the loop runs in C; after an item that raised it resumes with the next
            out.extend(itertools.starmap(f, it) if star else map(f, it))
            return out
        except Exception as exc:  # noqa: BLE001 - reported per item
            out.append(_Failed(ErrorPayload(myid(), exc)))


def pmap(f: Callable, *iterables: Iterable, pool: WorkerPool | None = None,
         batch_size: int | str = 1, distributed: bool = True,
         on_error: Callable[[BaseException], Any] | None = None,
         retry_delays: Iterable[float] = (), retry_check: Callable[[BaseException], bool] | None = None,
         progress: bool | str = False, timeout: float | None = None,
         expected_duration: float | None = None, infra_retries: int = INFRA_RETRIES) -> list[Any]:
    """``[f(*args) for args in zip(*iterables)]`` computed on the workers of *pool*.

    batch_size: items per call, or "auto" (large batches for many items).
    retry_delays: the delays (seconds) before each retry of a failed item; its length is
        the number of retries.  A failure is an exception in ``f`` or the death of the
        worker running it.  ``retry_check(exc)`` may veto a retry.  A retry goes to
        another worker than the ones the item failed on, while there is one.  Items in
        flight together on a worker that died are each retried alone (on a worker with
        nothing else in flight), which tells which one killed it; an item that was its
        worker's only call when the worker died, ``MAX_ITEM_DEATHS`` (3) times, is not
        retried again (a "poison" item would take every fresh worker with it); its error
        names it.
    on_error: called with the final exception of an item; its return value takes the
        item's place.  Without it, the first final failure is raised.  Either way the
        exception is a ``RemoteError`` (what ``f`` raised is its ``__cause__``) or a
        ``ProcessExitedError``, with ``distributed`` True or False alike.
    infra_retries: how many times an item whose worker was lost to the infrastructure
        (``ProcessExitedError.infrastructure``: its walltime ran out, it was preempted,
        its node failed, adapt retired it) is sent again at once, without using up
        ``retry_delays`` (those are for errors of the code).  Default ``INFRA_RETRIES``.
    expected_duration: seconds each item may run; an item goes only to a worker with
        that much walltime left (see ``adapt``), and a map no worker could ever take
        fails at once.
    distributed=False: run in this process (same retry and error semantics).
    timeout: seconds for the whole map (``TimeoutError``).  With no worker in the
        cluster and an ``adapt`` that may start some, pmap waits for them (within it).
    progress: True shows a tqdm bar (done, failed, retried, ETA) when stderr is a terminal;
        "always" shows it anywhere.
    """
    _check_args("pmap", f, iterables, on_error=on_error, retry_check=retry_check)
    check_timeout(timeout)
    star = len(iterables) > 1  # one iterable: its items are the arguments, no tuples
    # the shortest iterable ends the map
    items = list(zip(*iterables, strict=False)) if star else list(iterables[0])
    delays = list(retry_delays)
    if not items:
        return []
    if not distributed:
        return _local_map(f, items if star else [(x,) for x in items], delays, retry_check, on_error)
    p = pool if pool is not None else default_worker_pool()  # an empty pool is not None
    size = _batch_size(batch_size, len(items), max(1, len(p.workers())))
    if isinstance(infra_retries, bool) or not isinstance(infra_retries, int) or infra_retries < 0:
        raise ValueError(f"infra_retries must be an int >= 0, not {infra_retries!r}")
    if expected_duration is not None:
        _check_duration(expected_duration, p.workers())
    run = _PMap(f, items, p, size, delays, retry_check, on_error, progress, timeout, star)
    run.expected, run.infra_retries = expected_duration, infra_retries
    return run.run()


def _check_duration(seconds: float, ids: list[int]) -> None:
    """Fail at once when no worker has *seconds* left and no adapt can start one that
    would."""
    from .adaptive import longest_walltime

    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError(f"expected_duration must be a number of seconds > 0, not {seconds!r}")
    node = get_node()
    left = [node.time_left(w) for w in ids]
    if any(t >= seconds for t in left):
        return
    longest = longest_walltime()
    if longest is not None and longest >= seconds:
        return
    have = f"the workers have at most {max(left):.0f} s left" if left else "there is no worker"
    could = ("" if longest is None else
             f", and the workers adapt can start run at most {longest:.0f} s after draining")
    raise ValueError(f"no worker can run a task of expected_duration={seconds} s: {have}{could}; "
                     "ask for a longer walltime (walltime=...), or split the task")


def _check_args(name: str, f: Any, iterables: tuple, **callbacks: Any) -> None:
    """What ``map`` refuses, refused the same way, before any work starts."""
    if not callable(f):
        raise TypeError(f"{name}: the function {f!r} is not callable")
    if not iterables:
        raise TypeError(f"{name}() needs at least one iterable after the function, as map() does")
    for key, value in callbacks.items():
        if value is not None and not callable(value):
            raise TypeError(f"{name}: {key} must be a callable or None, not {value!r}")


def _batch_size(batch_size: int | str, n: int, nworkers: int) -> int:
    if batch_size == "auto":
        return max(1, min(AUTO_MAX_BATCH, math.ceil(n / (nworkers * AUTO_BATCHES_PER_WORKER))))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive int or "auto", not {batch_size!r}')
    return batch_size


def _may_retry(exc: BaseException, attempt: int, delays: Sequence[float],
               check: Callable[[BaseException], bool] | None) -> bool:
    return attempt <= len(delays) and (check is None or bool(check(exc)))


def _local_map(f: Callable, items: list[tuple], delays: list[float],
               check: Callable[[BaseException], bool] | None,
               on_error: Callable[[BaseException], Any] | None) -> list[Any]:
    out = []
    for args in items:
        attempt = 1
        while True:
            try:
                out.append(f(*args))
                break
            except Exception as raw:  # noqa: BLE001
                exc = local_error(raw)  # what a worker's failure looks like, for one behaviour
                if _may_retry(exc, attempt, delays, check):
                    time.sleep(delays[attempt - 1])
                    attempt += 1
                    continue
                if on_error is None:
                    raise exc from raw
                out.append(on_error(exc))
                break
    return out


def _short(args: tuple, limit: int = 60) -> str:
    text = repr(args[0] if len(args) == 1 else args)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _PMap:
    """One pmap call's scheduler; runs in the calling thread."""

    def __init__(self, f: Callable, items: list[tuple], pool: WorkerPool, size: int,
                 delays: list[float], check: Any, on_error: Any, progress: bool | str,
                 timeout: float | None, star: bool = True) -> None:
        self.f, self.items, self.pool = f, items, pool
        self.star = star  # items are argument tuples (else each item is the one argument)
        self.delays, self.check, self.on_error = delays, check, on_error
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self.results: list[Any] = [None] * len(items)
        self.attempts = [1] * len(items)
        self.deaths: dict[int, int] = {}  # item -> workers that died running it alone
        self.dead: set[int] = set()  # workers whose death was charged (or not) already
        # Items in flight with others on a worker that died: which of them killed it is
        # not known (results of finished calls may be lost with it), so each is sent
        # again alone, to a worker with nothing else in flight (isolated until it ends).
        self.suspects: set[int] = set()
        self.isolated: set[int] = set()
        self.todo: list[Sequence[int]] = [range(i, min(i + size, len(items)))
                                          for i in range(0, len(items), size)]
        self.todo.reverse()  # pop() from the end keeps input order
        self.retries: list[tuple[float, int, list[int]]] = []  # heap of (due, seq, batch)
        self.retry_todo: list[list[int]] = []  # due retries, each sent to another worker
        self.failed_on: dict[int, set[int]] = {}  # item -> workers it failed on
        self.inflight: dict[int, int] = {}
        self.window = Window()
        self._ids: list[int] = []  # the pool's workers when last looked at
        self.ready: set[int] = set()  # workers that may have room for another call
        self._next_steal = 0.0
        self.done_q: queue.SimpleQueue = queue.SimpleQueue()
        self.node = get_node()
        self.wake = Signal()  # set by each completion; see _next_completion
        self.remaining = len(items)
        cache = pool.function_cache()  # a CachingPool ships f once per worker, across maps
        self.own_cache = cache is None
        self.shipped = FunctionCache() if cache is None else cache
        self.bar = None
        if progress:
            from .executor import progress_bar

            self.bar = progress_bar(len(items), "pmap", progress)
        self.failed = self.retried = 0
        self._seq = 0
        self.expected: float | None = None  # expected_duration
        self.infra_retries = INFRA_RETRIES
        self.infra: dict[int, int] = {}  # item -> times lost to the infrastructure
        self.resume: dict[int, Any] = {}  # item -> the Resume its checkpoint gave (preempted)

    def backlog(self) -> int:
        """Calls not sent yet (read by adapt)."""
        return len(self.todo) + len(self.retry_todo) + len(self.retries)

    def run(self) -> list[Any]:
        from . import adaptive

        adaptive.add_backlog(self)
        try:
            # This thread reads the results itself, and the calls it sends in one go
            # travel several to a message (BUNDLE), each still a call of its own.
            with self.node.reading(), self.node.corked() as cork:
                while self.remaining:
                    self._submit_ready()
                    cork.flush()
                    self._handle(self._next_completion())
                    while self.remaining and not self.done_q.empty():  # all that came in
                        self._handle(self.done_q.get_nowait())
            return self.results
        finally:
            adaptive.remove_backlog(self)
            if self.own_cache:
                self.shipped.clear()
            if self.bar is not None:
                self.bar.close()

    def _submit_ready(self) -> None:
        now = time.monotonic()
        while self.retries and self.retries[0][0] <= now:
            self.retry_todo.append(heapq.heappop(self.retries)[2])
        ids = self.pool.workers()
        if self.expected is not None:
            ids = [w for w in ids if self.node.time_left(w) >= self.expected]
        if not ids or ids == [1]:  # no worker: workers() is [1], as in Julia
            from .adaptive import expect_workers

            if expect_workers():
                self._ids = []
                return  # adapt is starting some (_next_completion looks again)
        if not ids:
            if self.expected is not None and self.pool.workers():
                raise ClusterError(f"pmap: no worker has expected_duration={self.expected} s of "
                                   "walltime left, and no adapt can start one")
            from .adaptive import paused_reasons

            paused = paused_reasons()
            raise ClusterError("pmap: every worker of the pool is gone" + (
                f", and adapt starts none: {paused}" if paused else ""))
        if ids != self._ids:  # joined or gone: look at every worker again
            for wid in list(self.inflight):
                if wid not in ids:
                    del self.inflight[wid]
                    self.window.forget(wid)
            self._ids, self.ready = ids, set(ids)
        # Only workers that may have room (all at first, then those a call came back from):
        # the work per completion stays the same with 2 workers or 200.
        room = {wid: 0 if wid in self.isolated else self.window.depth(wid) - self.inflight.get(wid, 0)
                for wid in sorted(self.ready)}
        open_ = [wid for wid, r in room.items() if r > 0]
        while open_:  # round robin: every worker with room gets one, then a second...
            for wid in open_:
                if not self.todo and not self.retry_todo:
                    self._steal(ids, now)
                    return
                batch = self._pick(wid, ids)
                if batch is None:  # nothing it may take now (the retries failed on it):
                    room[wid] = 0  # it keeps its room, and its place in self.ready
                    continue
                self._send(batch, wid)
                room[wid] -= 1
                if batch[0] in self.suspects:  # it runs alone: nothing more behind it
                    self.isolated.add(wid)
                    room[wid] = 0
            open_ = [wid for wid in open_ if room[wid] > 0]
        self.ready = {wid for wid in room if wid not in self.isolated
                      and self.window.depth(wid) > self.inflight.get(wid, 0)}
        if not self.todo and not self.retry_todo:
            self._steal(ids, now)

    def _idle(self, ids: list[int]) -> int:
        """How many calls the idle workers of *ids* could take now."""
        return sum(self.window.depth(wid) for wid in ids if not self.inflight.get(wid, 0))

    def _steal(self, ids: list[int], now: float) -> None:
        """Nothing left to send, a worker idles, and batches wait behind a long one on
        another: withdraw them (they come back as ``CallRevoked``, to be sent again).
        Looked at every ``POLL`` seconds at most (it goes over every worker)."""
        if now < self._next_steal:
            return
        self._next_steal = now + POLL
        if self.window.stuck():
            for fut in self.window.steal(self._idle(ids)):
                self.node.revoke(fut)

    def _pick(self, wid: int, ids: list[int]) -> Sequence[int] | None:
        """The next batch for *wid*: a due retry that has not failed on it (unless it has
        failed on every live worker), else the next batch of the input."""
        for k, batch in enumerate(self.retry_todo):
            tried = self.failed_on.get(batch[0], set())
            if wid not in tried or tried.issuperset(ids):
                if batch[0] in self.suspects and self.inflight.get(wid, 0):
                    return None  # a suspect waits for a worker with nothing in flight
                return self.retry_todo.pop(k)
        return self.todo.pop() if self.todo else None

    def _send(self, batch: Sequence[int], wid: int) -> None:
        fn = self.shipped.ref(self.f, wid)
        try:
            if len(batch) == 1 and batch[0] in self.resume:  # preempted: from its checkpoint
                again = self.resume[batch[0]]
                fut = remotecall(again.fn, wid, *again.args, **again.kwargs)
            elif len(batch) == 1:  # one item: f itself is the call
                item = self.items[batch[0]]
                fut = remotecall(fn, wid, *item) if self.star else remotecall(fn, wid, item)
            else:
                args = self.items[batch.start:batch.stop] if isinstance(batch, range) \
                    else [self.items[i] for i in batch]
                fut = remotecall(_run_items, wid, fn, args, self.star)
        except ProcessExitedError as exc:
            self._failed_batch(batch, exc, wid)
            return
        self.inflight[wid] = self.inflight.get(wid, 0) + 1
        token = self.window.sent(wid, fut)
        fut.add_done_callback(lambda fut: self._completed((batch, wid, fut, token)))

    def _completed(self, entry: tuple) -> None:
        self.done_q.put(entry)
        self.wake.set()

    def _next_completion(self) -> tuple[Sequence[int], int, Future, int] | None:
        wait = None
        if self.retries:
            wait = max(0.0, self.retries[0][0] - time.monotonic())
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"pmap did not finish within timeout={self.timeout} s")
            wait = left if wait is None else min(wait, left)
        if not self.todo and not self.retry_todo:  # the tail: look again for batches to move
            wait = POLL if wait is None else min(wait, POLL)
        elif not self._ids or not self.inflight:  # waiting for workers (adapt starts them)
            wait = WAIT_FOR_WORKERS if wait is None else min(wait, WAIT_FOR_WORKERS)
        # Wait through the node, not on the queue: on a worker's main thread (a nested
        # pmap) the node keeps running calls meanwhile, so two workers that pmap onto each
        # other cannot deadlock.
        self.wake = wake = Signal()
        if self.done_q.empty():
            self.node.block_until(wake, wait)
        try:
            return self.done_q.get_nowait()
        except queue.Empty:
            return None

    def _handle(self, done: tuple[Sequence[int], int, Future, int] | None) -> None:
        if done is None:
            return
        batch, wid, fut, token = done
        out = self.inflight.get(wid, 0)  # calls it had in flight, this one included
        self.inflight[wid] = max(0, out - 1)
        self.isolated.discard(wid)
        self.window.done(wid, token, fut.run_time)
        self.ready.add(wid)
        if isinstance(fut._exception, CallRevoked):  # withdrawn unstarted: send it next
            self.todo.append(batch)
            return
        try:
            values = fut.fetch()
        except (RemoteError, ProcessExitedError) as exc:
            if isinstance(exc.__cause__, Preempted) and len(batch) == 1:
                self.resume[batch[0]] = exc.__cause__.resume  # run from its checkpoint
                exc = ProcessExitedError(wid, "its worker was preempted", "", "it was preempted")
            self._failed_batch(batch, exc, wid, alone=out == 1)
            return
        if len(batch) == 1:
            self._store(batch[0], values)
            return
        if isinstance(batch, range) and self.bar is None and not any(type(v) is _Failed for v in values):
            self.results[batch.start:batch.stop] = values  # the common case, without a loop
            self.remaining -= len(values)
            return
        for i, value in zip(batch, values, strict=True):
            if isinstance(value, _Failed):
                self._failed_item(i, value.payload.to_exception(), wid)
            else:
                self._store(i, value)

    def _failed_batch(self, batch: Sequence[int], exc: BaseException, wid: int,
                      alone: bool = False) -> None:
        """*alone*: this was the only call *wid* had in flight.  A dead worker fails all
        its calls; its death is charged to an item only when the item was all it held
        (then it was running it); items it held with others become suspects (see
        ``suspects``), so that a poison item is found by its next death."""
        if isinstance(exc, ProcessExitedError) and exc.infrastructure:
            for i in batch:  # not the items' doing: nobody is suspected or charged
                self._failed_item(i, exc, wid)
            return
        died = isinstance(exc, ProcessExitedError)
        charged = died and alone and len(batch) == 1 and wid not in self.dead
        if died:
            self.dead.add(wid)
        for i in batch:
            if died and not charged:
                self.suspects.add(i)
            self._failed_item(i, exc, wid, alone=charged)

    def _failed_item(self, i: int, exc: BaseException, wid: int, alone: bool = False) -> None:
        attempt = self.attempts[i]
        self.failed_on.setdefault(i, set()).add(wid)
        if isinstance(exc, ProcessExitedError) and exc.infrastructure:
            lost = self.infra[i] = self.infra.get(i, 0) + 1
            if lost <= self.infra_retries:  # again at once, no retry of the code used up
                self.retried += 1
                self._seq += 1
                heapq.heappush(self.retries, (time.monotonic(), self._seq, [i]))
                self._show()
                return
            exc = ProcessExitedError(exc.worker_id, f"{exc.cause}; item {i} was lost to the "
                                     f"infrastructure {lost} times (infra_retries={self.infra_retries})",
                                     exc.log_tail, exc.infrastructure)
        if alone and isinstance(exc, ProcessExitedError):
            self.deaths[i] = self.deaths.get(i, 0) + 1
            if self.deaths[i] >= MAX_ITEM_DEATHS:  # a poison item: no fresh worker for it
                args = self.items[i] if self.star else (self.items[i],)
                exc = ProcessExitedError(exc.worker_id, f"{exc.cause}; item {i} (arguments "
                                         f"{_short(args)}) killed {self.deaths[i]} workers, "
                                         "one after another, so pmap no longer retries it",
                                         exc.log_tail)
                attempt = len(self.delays) + 1
        if _may_retry(exc, attempt, self.delays, self.check):
            self.attempts[i] += 1
            self.retried += 1
            self._seq += 1
            due = time.monotonic() + self.delays[attempt - 1]
            heapq.heappush(self.retries, (due, self._seq, [i]))
            self._show()
            return
        if self.on_error is None:
            raise exc
        self.failed += 1
        self._store(i, self.on_error(exc))

    def _store(self, i: int, value: Any) -> None:
        self.suspects.discard(i)
        self.results[i] = value
        self.remaining -= 1
        if self.bar is not None:
            self.bar.update(1)
            self._show()

    def _show(self) -> None:
        if self.bar is not None and (self.failed or self.retried):
            self.bar.set_postfix(failed=self.failed, retried=self.retried, refresh=False)


def imap(f: Callable, *iterables: Iterable, ordered: bool = True, pool: WorkerPool | None = None,
         in_flight: int | None = None, timeout: float | None = None) -> Iterator[Any]:
    """Lazy parallel map (Julia's ``pgenerate``; multiprocessing's ``imap`` and, with
    ``ordered=False``, ``imap_unordered``): yields ``f(*args)`` for ``args`` in
    ``zip(*iterables)``, computed on the workers of *pool*.

    The input is consumed as results are taken, with at most *in_flight* calls started and
    not yet yielded (default: 2 per worker), so memory stays bounded on an infinite
    generator.  ``ordered=True`` yields in input order; ``False`` as the calls complete.
    *timeout* bounds the wait for each next result (``TimeoutError``).  The first error
    is raised (a ``RemoteError`` or ``ProcessExitedError``, as in pmap).
    """
    _check_args("imap", f, iterables)
    check_timeout(timeout)
    if in_flight is not None and (isinstance(in_flight, bool) or not isinstance(in_flight, int)
                                  or in_flight < 1):
        raise ValueError(f"in_flight must be a positive int, not {in_flight!r}")
    p = pool if pool is not None else default_worker_pool()
    return _IMap(f, zip(*iterables, strict=False), ordered, p, in_flight, timeout).run()


class _IMap:
    """One imap's state; its generator runs in the consuming thread."""

    def __init__(self, f: Callable, source: Iterator[tuple], ordered: bool, pool: WorkerPool,
                 in_flight: int | None, timeout: float | None) -> None:
        self.f, self.source, self.ordered, self.pool, self.timeout = f, source, ordered, pool, timeout
        self.window = in_flight or PREFETCH * max(1, len(pool.workers()))
        cache = pool.function_cache()
        self.own_cache = cache is None
        self.shipped = FunctionCache() if cache is None else cache
        self.node = get_node()
        self.started: collections.deque[tuple[Future, int]] = collections.deque()  # ordered
        self.done_q: queue.SimpleQueue = queue.SimpleQueue()  # unordered
        self.wake = Signal()
        self.load: dict[int, int] = {}
        self.inflight = 0
        self.exhausted = False

    def run(self) -> Iterator[Any]:
        try:
            while True:
                self._fill()
                if not self.inflight:
                    return
                fut, wid = self._next()
                self.inflight -= 1
                self.load[wid] -= 1
                yield fut.fetch()
        finally:
            if self.own_cache:
                self.shipped.clear()

    def _fill(self) -> None:
        while not self.exhausted and self.inflight < self.window:
            try:
                args = next(self.source)
            except StopIteration:
                self.exhausted = True
                return
            ids = self.pool.workers()
            if not ids:
                raise ClusterError("imap: every worker of the pool is gone")
            wid = min(ids, key=lambda w: self.load.get(w, 0))
            fut = remotecall(self.shipped.ref(self.f, wid), wid, *args)
            self.inflight += 1
            self.load[wid] = self.load.get(wid, 0) + 1
            if self.ordered:
                self.started.append((fut, wid))
            else:
                fut.add_done_callback(lambda fut, wid=wid: self._completed((fut, wid)))

    def _completed(self, entry: tuple[Future, int]) -> None:
        self.done_q.put(entry)
        self.wake.set()

    def _next(self) -> tuple[Future, int]:
        if self.ordered:
            fut, wid = self.started.popleft()
            if not self.node.block_until(fut, self.timeout):
                raise TimeoutError(f"imap: no result within timeout={self.timeout} s")
            return fut, wid
        self.wake = wake = Signal()
        if self.done_q.empty() and not self.node.block_until(wake, self.timeout):
            raise TimeoutError(f"imap: no result within timeout={self.timeout} s")
        return self.done_q.get_nowait()


def preduce(op: Callable[[Any, Any], Any], f: Callable[[Any], Any], iterable: Iterable,
            timeout: float | None = None) -> Any:
    """``functools.reduce(op, map(f, iterable))``, split statically across the workers:
    each reduces its contiguous share, then the master reduces the partial results."""
    from .cluster import workers

    items = list(iterable)
    if not items:
        raise TypeError("preduce() of an empty iterable has no value")
    ids = workers()
    share = math.ceil(len(items) / len(ids))
    chunks = [items[i:i + share] for i in range(0, len(items), share)]
    futs = [remotecall(_reduce_chunk, wid, op, f, chunk) for wid, chunk in zip(ids, chunks, strict=False)]
    return functools.reduce(op, [fut.fetch(timeout) for fut in futs])


def _reduce_chunk(op: Callable, f: Callable, chunk: list) -> Any:
    return functools.reduce(op, map(f, chunk))

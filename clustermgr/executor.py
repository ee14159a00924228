"""ClusterExecutor: a ``concurrent.futures.Executor`` whose workers are cluster workers.

Who calls what: user code calls ``submit``/``map``/``shutdown`` from any thread.  One
dispatcher thread per executor owns the queue: it hands pending work to free worker slots
(``remotecall``), turns finished calls into ``concurrent.futures.Future`` outcomes (so user
callbacks run on it, never on the runtime's I/O thread), retires and replaces workers.

Semantics are the stdlib's (the behaviour suite in ``tests/test_executor_behaviour.py``
runs the same cases against ``ProcessPoolExecutor``), with these differences:

- a worker that dies fails only the futures it held, with :class:`WorkerLostError` (a
  ``BrokenProcessPool`` *and* a ``ProcessExitedError``); the executor replaces the worker
  (``replace_workers=True``) and stays usable;
- an error raised by the function re-raises as itself, with the remote traceback as
  ``__cause__``, exactly like the stdlib; an exception class that does not exist in the
  caller arrives as ``RemoteError``;
- ``max_tasks_per_child`` and ``max_memory_per_child`` recycle workers, as loky does.

As with the stdlib: work submitted before the interpreter exits completes (a hook run
before atexit handlers, as ``concurrent.futures`` registers, waits for it), and ``submit``
after that raises ``RuntimeError``; an executor that is garbage collected without
``shutdown`` ends its workers; a failing initializer breaks the pool (its futures fail
with ``BrokenProcessPool``, later submits raise); a completed future's inputs are
released at once; workers' output reaches this process's stdout and stderr as is.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from concurrent.futures import Future as CFuture
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from typing import Any

from .errors import CallRevoked, DecodeError, Preempted, ProcessExitedError, RemoteError, RemoteTraceback
from .mapping import INFRA_RETRIES
from .transport import Signal, current_node
from .window import POLL, Window

log = logging.getLogger("clustermgr")


_executors: weakref.WeakSet[ClusterExecutor] = weakref.WeakSet()
_interpreter_exiting = False


def _python_exit() -> None:
    """Before atexit handlers (and so before the cluster shuts down): let every executor
    finish the work already submitted, as ``concurrent.futures`` does."""
    global _interpreter_exiting
    _interpreter_exiting = True
    for executor in list(_executors):
        executor.shutdown(wait=True)


try:
    threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # an older Python, or imported during shutdown
    import atexit

    atexit.register(_python_exit)


class WorkerLostError(BrokenProcessPool, ProcessExitedError):
    """The worker running this task died; existing ``BrokenProcessPool`` handlers catch it."""

    def __init__(self, worker_id: int, cause: str = "unknown cause", log_tail: str = "",
                 infrastructure: str = "") -> None:
        ProcessExitedError.__init__(self, worker_id, cause, log_tail, infrastructure)

    def __str__(self) -> str:
        return ProcessExitedError.__str__(self)


def parse_bytes(value: int | str | None) -> int | None:
    """``2_000_000``, ``"512MB"``, ``"2GiB"`` -> bytes."""
    if value is None or isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", value)
    if not m:
        raise ValueError(f"memory size {value!r}: write it as bytes or like '512MB', '2GiB'")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " kmgt".index(m.group(2).lower() or " "))


class _Item:
    __slots__ = ("future", "fn", "args", "kwargs", "running", "token", "lost")

    def __init__(self, future: CFuture, fn: Callable, args: tuple, kwargs: dict) -> None:
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs
        self.running = False  # set_running_or_notify_cancel() said yes
        self.token = 0  # its call's token in the dispatcher's pipelining window
        self.lost = 0  # times its worker died under it


class ClusterExecutor(Executor):
    """``ClusterExecutor(max_workers=None, manager=None, **addprocs_kwargs)``.

    - ``max_workers``: local workers to start (default: one per usable CPU), or the ``np``
      given to *manager* when it is a factory.
    - ``manager``: a ``ClusterManager`` (used for the first workers), or a factory
      ``n -> ClusterManager`` (also used for replacements).  Default: local workers.
    - ``workers=[ids]``: run on workers already in the cluster; they are not removed at
      shutdown, and dead ones are not replaced unless *manager* is a factory.
    - ``replace_workers``: start a new worker when one dies or is recycled (default True).
    - ``max_tasks_per_child``, ``max_memory_per_child`` (bytes or ``"2GB"``): recycle a
      worker after that many tasks, or once its RSS exceeds the limit after a task.
    - ``initializer(*initargs)`` runs on every worker the executor starts or adopts.
    - ``adaptive=(minimum, maximum)`` (or a dict of ``adapt`` keywords with them): no
      workers are started up front; ``adapt`` starts and retires *manager*'s workers with
      the tasks waiting, and the executor runs on each as it joins.  A task whose worker
      was lost to the infrastructure (walltime, preemption, retired) is sent again, up
      to ``INFRA_RETRIES`` times, instead of failing.
    - Other keywords go to ``addprocs`` (``python``, ``env``, ``dir``, ``timeout``, ...).
    """

    def __init__(self, max_workers: int | None = None, manager: Any = None, *,
                 workers: Iterable[int] | None = None, replace_workers: bool = True,
                 max_tasks_per_child: int | None = None, max_memory_per_child: int | str | None = None,
                 initializer: Callable[..., Any] | None = None, initargs: tuple = (),
                 mp_context: Any = None, adaptive: tuple[int, int] | dict[str, Any] | None = None,
                 **addprocs_kwargs: Any) -> None:
        from .cluster import addprocs

        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ValueError("max_tasks_per_child must be >= 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if mp_context is not None:
            log.debug("ClusterExecutor ignores mp_context: workers are cluster processes")
        self._factory: Callable[[int], Any] | None = None
        if callable(manager) and not hasattr(manager, "launch"):
            self._factory = manager
        elif manager is None and workers is None:
            self._factory = _local_factory
        self._made: list[Any] = []  # managers this executor made: closed with it
        self._addprocs_kwargs = addprocs_kwargs
        self._replace = replace_workers
        self._max_tasks = max_tasks_per_child
        self._max_memory = parse_bytes(max_memory_per_child)
        self._initializer, self._initargs = initializer, tuple(initargs)

        self._events = _Events()
        self._pending: collections.deque[_Item] = collections.deque()
        self._inflight: dict[int, int] = {}       # worker -> calls in flight
        self._window = Window()                   # how many each may have (dispatcher's)
        self._tasks_done: dict[int, int] = {}     # worker -> tasks finished (recycling)
        self._retiring: set[int] = set()
        self._owned: set[int] = set()
        self._starting = 0                        # replacements on their way
        self._shutdown = False
        self._broken: str | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding = 0                     # futures not yet finished
        self._stop_when_idle = False
        self._stop_now = False
        self._adaptive: Any = None

        if adaptive is not None:
            ids = []
            self._max_workers = self._start_adaptive(adaptive, manager, workers)
        elif workers is not None:
            ids = list(workers)
            if not ids:
                raise ValueError("workers=[] gives the executor nothing to run on")
            self._max_workers = len(ids)
        else:
            n = self._max_workers = max_workers or len(os.sched_getaffinity(0))
            first = manager if manager is not None and self._factory is None else self._make(n)
            ids = addprocs(first, **addprocs_kwargs)
            self._owned.update(ids)
        # The dispatcher holds the executor weakly, so that dropping every reference to it
        # (no shutdown) ends it and its workers, as with the stdlib pool.
        self._thread = threading.Thread(target=_dispatch_loop, args=(weakref.ref(self), self._events),
                                        name="clustermgr-executor", daemon=True)
        self._thread.start()
        # The runtime's view of its workers is ours: a death it sees (an idle worker too)
        # reaches the dispatcher at once, and the worker is replaced without a submit.
        self._listeners = getattr(current_node(), "listeners", None)
        self._listener = functools.partial(_on_cluster_event, self._events)
        if self._listeners is not None:
            self._listeners.append(self._listener)
        weakref.finalize(self, _collected, self._events, self._owned, self._made,
                         self._listeners, self._listener, self._adaptive)
        _executors.add(self)
        if ids:
            self._adopt(ids)

    def _start_adaptive(self, adaptive: Any, manager: Any, workers: Any) -> int:
        """``adaptive=``: an ``adapt`` of *manager* (made by the factory when it is one);
        its workers are adopted as they join (``joined`` events).  The most workers."""
        from .adaptive import adapt, add_backlog

        if workers is not None:
            raise ValueError("adaptive= and workers= do not go together: adapt starts the workers")
        if isinstance(adaptive, dict):
            options = dict(adaptive)
        elif isinstance(adaptive, (tuple, list)) and len(adaptive) == 2:
            options = {"minimum": adaptive[0], "maximum": adaptive[1]}
        else:
            raise TypeError(f"adaptive= takes (minimum, maximum) or a dict of adapt() keywords, "
                            f"not {adaptive!r}")
        if manager is None or self._factory is not None:
            manager = self._make(1)
        self._adaptive = adapt(manager, **options, **self._addprocs_kwargs)
        add_backlog(self)
        return self._adaptive.maximum

    def backlog(self) -> int:
        """Tasks not sent to a worker yet (read by adapt)."""
        return len(self._pending)

    @property
    def _executor_manager_thread(self) -> threading.Thread:
        """The dispatcher thread (the stdlib's name for its equivalent)."""
        return self._thread

    def _make(self, n: int) -> Any:
        manager = self._factory(n)  # type: ignore[misc]
        self._made.append(manager)
        return manager

    # --- the Executor API ----------------------------------------------------------------

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> CFuture:
        with self._lock:
            self._check_open()
            fut: CFuture = CFuture()
            self._outstanding += 1
        fut.add_done_callback(self._one_done)
        self._events.put(("submit", _Item(fut, fn, args, kwargs)))
        return fut

    def _check_open(self) -> None:
        if self._broken:
            raise BrokenProcessPool(self._broken)
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _submit_many(self, fn: Callable, arglists: Iterable[tuple]) -> list[CFuture]:
        """``[submit(fn, *args) for args in arglists]`` as one event for the dispatcher
        (``map``): the same futures, without a hand-off per task."""
        items = [_Item(CFuture(), fn, args, {}) for args in arglists]
        with self._lock:
            self._check_open()
            self._outstanding += len(items)
        futs = []
        for item in items:
            item.future.add_done_callback(self._one_done)
            futs.append(item.future)
        if items:
            self._events.put(("submit_many", items))
        return futs

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None, chunksize: int = 1,
            progress: bool | str = False) -> Iterator:
        """Like ``Executor.map``; ``chunksize`` sends that many items per call;
        ``progress=True`` shows a tqdm bar on a terminal (``"always"``: anywhere)."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1 and not progress:
            return _in_order(self._submit_many(fn, zip(*iterables, strict=False)), timeout)
        chunks = _chunks(zip(*iterables, strict=False), chunksize)
        if not progress:
            results = super().map(_run_chunk, itertools.repeat(fn), chunks, timeout=timeout)
            return itertools.chain.from_iterable(results)
        return self._map_with_bar(fn, list(chunks), timeout, progress)

    def _map_with_bar(self, fn: Callable, chunks: list[list[tuple]], timeout: float | None,
                      progress: bool | str) -> Iterator:
        bar = progress_bar(sum(len(c) for c in chunks), "map", progress)
        failed = [0]

        def tick(size: int) -> Callable[[CFuture], None]:
            def done(fut: CFuture) -> None:
                if not fut.cancelled() and fut.exception() is not None:
                    failed[0] += size
                    bar.set_postfix(failed=failed[0], refresh=False)
                bar.update(size)
            return done

        futs = []
        for chunk in chunks:
            fut = self.submit(_run_chunk, fn, chunk)
            fut.add_done_callback(tick(len(chunk)))
            futs.append(fut)
        return _ordered(futs, timeout, bar)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            self._events.put(("cancel_pending", None))
        self._events.put(("wake", None))
        if wait:
            with self._idle:
                self._idle.wait_for(lambda: self._outstanding == 0)
            self._events.put(("stop", None))
            self._thread.join()
        else:
            self._events.put(("stop_when_idle", None))

    # --- bookkeeping -------------------------------------------------------------------

    def _running_on(self) -> list[int]:
        """The workers running or holding one of this executor's calls now."""
        with self._lock:
            return sorted(w for w, n in self._inflight.items() if n)

    @property
    def workers(self) -> list[int]:
        """The workers this executor runs on now."""
        with self._lock:
            return sorted(w for w in self._inflight if w not in self._retiring)

    def _one_done(self, fut: CFuture) -> None:
        with self._idle:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.notify_all()

    def _adopt(self, ids: list[int]) -> None:
        from .cluster import everywhere

        plain = getattr(current_node(), "plain_output", None)  # on the master (not a worker)
        if plain is not None:
            plain.update(ids)
        if self._initializer is not None:
            try:
                everywhere(_run_initializer, self._initializer, self._initargs, procs=ids)
            except Exception as exc:  # noqa: BLE001 - the pool is broken, as the stdlib's
                cause = exc.exceptions[0] if hasattr(exc, "exceptions") else exc
                why = f"the initializer failed on a worker: {_unwrap(cause)!r}"
                log.error("ClusterExecutor: %s; the executor is broken", why)
                self._events.put(("broken", why))
                return
        with self._lock:
            for wid in ids:
                self._inflight.setdefault(wid, 0)
                self._tasks_done.setdefault(wid, 0)
        self._events.put(("wake", None))

    # --- the dispatcher thread -----------------------------------------------------------

    def _step(self, events: list[tuple[str, Any]]) -> bool:
        """Handle the events that came in (dispatcher thread), then send what can go;
        True when the dispatcher should stop."""
        for kind, what in events:
            if kind == "submit":
                self._pending.append(what)
            elif kind == "submit_many":
                self._pending.extend(what)
            elif kind == "done":
                self._finished(*what)
            elif kind == "adopted":
                self._starting -= 1
            elif kind == "joined":
                self._joined(what)
            elif kind == "left" and what in self._inflight:
                exc = getattr(current_node(), "dead", {}).get(what)
                self._worker_gone(what, exc or ProcessExitedError(what, "it left the cluster"))
            elif kind == "broken":
                self._break(what)
                self._release()
            elif kind == "cancel_pending":
                self._dispatch()  # what was submitted before and can start, starts
                while self._pending:
                    self._pending.popleft().future.cancel()
            elif kind == "stop":
                self._stop_now = True
            elif kind == "stop_when_idle":
                self._stop_when_idle = True
        del events[:]  # nothing of the tasks stays referenced here
        if self._starting:  # a replacement on its way: stop once it joined (or failed),
            self._dispatch()  # so that the workers released include it
            return False
        if self._stop_now:
            return True
        self._dispatch()
        with self._lock:
            idle = self._outstanding == 0 and not self._pending
        return self._stop_when_idle and idle

    def _dispatch(self) -> None:
        if self._pending:
            from .calls import get_node

            with get_node().corked():  # a burst of calls travels several to a message
                self._send_pending()
        if not self._pending and self._window.stuck():
            self._steal()

    def _steal(self) -> None:
        """Idle workers while tasks wait behind a long one elsewhere: withdraw those tasks
        (they come back as ``CallRevoked`` and go to the idle workers)."""
        from .calls import get_node

        with self._lock:
            idle = [w for w, n in self._inflight.items() if not n and w not in self._retiring]
        for fut in self._window.steal(sum(self._window.depth(w) for w in idle)):
            get_node().revoke(fut)

    def poll_interval(self) -> float | None:
        """How long the dispatcher may wait for an event (None: until one comes)."""
        if self._pending or not self._window.queued():
            return None
        with self._lock:
            idle = any(not n for w, n in self._inflight.items() if w not in self._retiring)
        return POLL if idle else None

    def _depth(self, wid: int) -> int:
        """Calls *wid* may hold: its pipelining window, and no more than it has left to
        run under ``max_tasks_per_child`` (a recycled worker takes none past its quota)."""
        depth = self._window.depth(wid)
        if self._max_tasks is not None:
            depth = min(depth, self._max_tasks - self._tasks_done.get(wid, 0))
        return depth

    def _send_pending(self) -> None:
        from .calls import remotecall

        room: dict[int, int] = {}
        while self._pending:
            if self._broken:
                self._break(self._broken)
                return
            if not room:  # who has room, looked at once per round, not once per task
                draining = getattr(current_node(), "draining", None) or ()
                with self._lock:
                    room = {w: self._depth(w) - n for w, n in self._inflight.items()
                            if w not in self._retiring and w not in draining}
                room = {w: r for w, r in room.items() if r > 0}
                if not room:
                    if not self._inflight and not self._starting and not self._will_grow():
                        paused = self._adaptive.paused if self._adaptive is not None else ""
                        self._break("every worker of the executor is gone and none can replace them"
                                    + (f" (adapt: {paused})" if paused else ""))
                    return
            wid = min(room, key=lambda w: self._inflight.get(w, 0))
            item = self._pending.popleft()
            if not item.running:
                if not item.future.set_running_or_notify_cancel():
                    continue  # cancelled while pending
                item.running = True
            try:
                if self._max_memory is None:
                    fut = remotecall(item.fn, wid, *item.args, **item.kwargs)
                else:
                    fut = remotecall(_measured, wid, item.fn, item.args, item.kwargs)
            except ProcessExitedError as exc:
                self._pending.appendleft(item)  # it never reached a worker: send it elsewhere
                room.pop(wid, None)
                self._worker_gone(wid, exc)
                continue
            except BaseException as exc:  # noqa: BLE001 - cannot pickle: fail it in the caller
                item.future.set_exception(exc)
                continue
            with self._lock:
                self._inflight[wid] += 1
            room[wid] -= 1
            if not room[wid]:
                del room[wid]
            item.token = self._window.sent(wid, fut)
            fut.add_done_callback(functools.partial(self._call_done, wid, item))

    def _call_done(self, wid: int, item: _Item, fut: Any) -> None:
        """On the runtime's I/O thread: hand the finished call to the dispatcher."""
        self._events.put(("done", (wid, item, fut)))

    def _finished(self, wid: int, item: _Item, fut: Any) -> None:
        self._window.done(wid, item.token, fut.run_time)
        if isinstance(fut._exception, CallRevoked):  # withdrawn unstarted: to the front
            with self._idle:
                if wid in self._inflight:
                    self._inflight[wid] -= 1
            self._pending.appendleft(item)
            return
        with self._idle:
            if wid in self._inflight:
                self._inflight[wid] -= 1
                self._tasks_done[wid] += 1
            if self._retiring:
                self._idle.notify_all()  # a retiring worker may now be free
        restore = item.fn, item.args, item.kwargs
        item.fn = item.args = item.kwargs = None  # a finished task's inputs go at once
        over_memory = False
        try:
            value = fut.fetch()
            if self._max_memory is not None:
                value, rss = value
                over_memory = rss > self._max_memory
        except ProcessExitedError as exc:
            item.lost += 1
            if exc.infrastructure and item.lost <= INFRA_RETRIES:  # not the task's doing
                item.fn, item.args, item.kwargs = restore
                self._pending.appendleft(item)
            else:
                item.future.set_exception(WorkerLostError(exc.worker_id, exc.cause, exc.log_tail,
                                                          exc.infrastructure))
            self._worker_gone(wid, exc)
            return
        except RemoteError as exc:
            if isinstance(exc.__cause__, Preempted):  # its checkpoint: run that elsewhere
                again = exc.__cause__.resume
                item.fn, item.args, item.kwargs = again.fn, again.args, again.kwargs
                self._pending.appendleft(item)
            else:
                item.future.set_exception(_unwrap(exc))
        except DecodeError as exc:  # the stdlib's pool breaks here; ours fails this task only
            item.future.set_exception(_broken_task(exc))
        except BaseException as exc:  # noqa: BLE001 - whatever it is, it belongs to the task
            item.future.set_exception(exc)
        else:
            item.future.set_result(value)
        finally:
            del fut, item, restore
        if over_memory:
            log.info("worker %d exceeded max_memory_per_child: recycling it", wid)
            self._recycle(wid)
        elif self._max_tasks is not None and self._tasks_done.get(wid, 0) >= self._max_tasks:
            self._recycle(wid)

    def _recycle(self, wid: int) -> None:
        with self._lock:
            if wid in self._retiring:
                return
            self._retiring.add(wid)
        self._replace_one()
        threading.Thread(target=self._retire, args=(wid,), daemon=True,
                         name="clustermgr-executor-retire").start()

    def _retire(self, wid: int) -> None:
        """Wait until *wid* has no call in flight, then remove it."""
        from .cluster import rmprocs

        with self._idle:
            self._idle.wait_for(lambda: self._inflight.get(wid, 0) == 0, timeout=600)
            self._inflight.pop(wid, None)
        if wid in self._owned:
            rmprocs(wid)
            self._owned.discard(wid)
        self._retiring.discard(wid)
        self._events.put(("wake", None))

    def _worker_gone(self, wid: int, exc: ProcessExitedError) -> None:
        self._window.forget(wid)
        with self._lock:
            known = self._inflight.pop(wid, None) is not None
            self._owned.discard(wid)
            self._retiring.discard(wid)
        if not known:
            return
        removed = "removed by rmprocs" in exc.cause
        if self._shutdown or removed or exc.infrastructure:
            log.info("executor worker %d left (%s)", wid, exc.cause)
        else:
            log.warning("executor worker %d died (%s)", wid, exc.cause)
        if not removed and self._adaptive is None:  # adapt replaces what it keeps
            self._replace_one()

    def _will_grow(self) -> bool:
        """Whether workers will still come (an adapt that may start them)."""
        return self._adaptive is not None and self._adaptive.can_grow()

    def _joined(self, wid: int) -> None:
        """A worker joined the cluster: adopt it when our adapt started it."""
        if self._adaptive is None or self._shutdown:
            return
        w = getattr(current_node(), "workers", {}).get(wid)
        if w is None or w.launch is None or w.launch.manager is not self._adaptive.manager:
            return
        with self._lock:
            self._owned.add(wid)
        if self._initializer is None:
            self._adopt([wid])
        else:  # the initializer runs through everywhere(): not on the dispatcher
            threading.Thread(target=self._adopt, args=([wid],), daemon=True,
                             name="clustermgr-executor-adopt").start()

    def _replace_one(self) -> None:
        """Start a worker in place of one that died or retires (dispatcher thread).  After
        ``shutdown`` only while submitted work still waits: it completes, as the stdlib's."""
        if not self._replace or self._factory is None or (self._shutdown and not self._pending):
            return
        self._starting += 1
        threading.Thread(target=self._start_replacement, daemon=True,
                         name="clustermgr-executor-replace").start()

    def _start_replacement(self) -> None:
        from .cluster import addprocs

        try:
            ids = addprocs(self._make(1), **self._addprocs_kwargs)
            with self._lock:
                self._owned.update(ids)
            self._adopt(ids)
        except Exception as exc:  # noqa: BLE001 - the pool shrinks; logged
            log.error("executor could not replace a worker: %s", exc)
        self._events.put(("adopted", None))

    def _break(self, why: str) -> None:
        self._broken = why
        while self._pending:
            item = self._pending.popleft()
            if item.running or item.future.set_running_or_notify_cancel():
                item.future.set_exception(BrokenProcessPool(why))

    def _release(self) -> None:
        _forget_listener(self._listeners, self._listener)
        if self._adaptive is not None:
            from .adaptive import remove_backlog

            self._adaptive.stop()
            remove_backlog(self)
        _release(self._owned, self._made)


def _on_cluster_event(events: queue.SimpleQueue, kind: str, wid: int) -> None:
    """A cluster listener (the master's I/O thread): a worker joined, or left or died."""
    if kind == "leave":
        events.put(("left", wid))
    elif kind == "join":
        events.put(("joined", wid))
    elif kind == "ready":  # a draining worker takes calls again
        events.put(("wake", None))


def _forget_listener(listeners: list | None, listener: Any) -> None:
    if listeners is not None:
        with contextlib.suppress(ValueError):
            listeners.remove(listener)


def _release(owned: set[int], made: list[Any]) -> None:
    """Remove the workers an executor started and close the managers it made."""
    from .cluster import release_manager, rmprocs, workers

    ids = sorted(owned)
    owned.clear()
    try:
        live = [w for w in ids if w in workers()]  # the cluster may have ended already
        if live:
            rmprocs(live)
        while made:
            release_manager(made.pop())
    except Exception:  # noqa: BLE001 - may run on a background thread: say so, go on
        log.exception("ClusterExecutor: releasing its workers failed")


class _Events:
    """The dispatcher's inbox.  The dispatcher waits for it through the node
    (``Node.block_until``), so while nobody else reads the link it reads it itself:
    results complete on its own thread, with no hand-off from the I/O thread and no
    contention for the link, and a ``put`` from another thread wakes it through the link."""

    def __init__(self) -> None:
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.signal: Signal | None = None  # set while the dispatcher waits on the link

    def put(self, item: tuple[str, Any]) -> None:
        self.q.put(item)
        sig = self.signal
        if sig is not None:
            sig.set()

    def get_many(self, timeout: float | None, node: Any, most: int = 256) -> list[tuple[str, Any]]:
        """The events that are in (at least one, at most *most*); ``queue.Empty`` after
        *timeout* seconds.  *node*: the node whose link this thread reads (None: it does
        not)."""
        q = self.q
        if q.empty():
            if node is None:
                first = [q.get(timeout=timeout)]
            else:
                self.signal = sig = Signal()  # before looking again: a put now sets it
                try:
                    if q.empty():
                        node.block_until(sig, timeout)
                finally:
                    self.signal = None
                first = [q.get_nowait()]
        else:
            first = [q.get_nowait()]
        while len(first) < most and not q.empty():
            first.append(q.get_nowait())
        return first


def _dispatch_loop(ref: weakref.ref[ClusterExecutor], events: _Events) -> None:
    """The dispatcher thread: one event at a time, holding the executor only meanwhile.
    While the executor has tasks out, it reads the link as it waits when nobody else does
    (see :class:`_Events`); idle, it leaves the link to others."""
    poll: float | None = None
    busy = False
    while True:
        node = current_node() if busy else None  # idle, it leaves the link to others
        if node is not None and node._stopping.is_set():
            node = None  # the cluster is shutting down: nothing more to read
        try:
            batch = events.get_many(poll, node)
        except queue.Empty:  # a worker idles while tasks wait behind a long one: look again
            batch = [("wake", None)]
        executor = ref()
        if executor is None:
            return  # collected: _collected() ends its workers
        try:
            stop = executor._step(batch)
            poll = executor.poll_interval()
            busy = executor._outstanding > 0
        except Exception:  # noqa: BLE001 - the dispatcher must not die silently
            log.exception("ClusterExecutor dispatcher failed")
            stop, poll, busy = False, None, False
        if stop:
            executor._release()
            return
        del executor, batch  # nothing of the last tasks stays referenced here


def _collected(events: _Events, owned: set[int], made: list[Any],
               listeners: list | None, listener: Any, adaptive: Any = None) -> None:
    """The executor was garbage collected without shutdown: end what it started."""
    _forget_listener(listeners, listener)
    if adaptive is not None:
        adaptive.stop()
    events.put(("stop", None))
    if owned or made:
        threading.Thread(target=_release, args=(owned, made), daemon=True,
                         name="clustermgr-executor-release").start()


# --- helpers that run on the workers ---------------------------------------------------

def _run_chunk(fn: Callable, chunk: list[tuple]) -> list:
    return [fn(*args) for args in chunk]


def _run_initializer(fn: Callable, args: tuple) -> None:
    """On a worker: the executor's initializer; a failure is logged where the stdlib's
    workers log it (the ``concurrent.futures`` logger, CRITICAL) and raised."""
    try:
        fn(*args)
    except BaseException:
        logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
        raise


def _measured(fn: Callable, args: tuple, kwargs: dict) -> tuple[Any, int]:
    import psutil

    value = fn(*args, **kwargs)
    return value, psutil.Process().memory_info().rss


# --- helpers on the caller's side -------------------------------------------------------

def _local_factory(n: int) -> Any:
    from .managers.local import LocalManager

    return LocalManager(n)


def _broken_task(exc: BaseException) -> BrokenProcessPool:
    """A task whose call or result could not be deserialized: the stdlib's pool breaks
    with BrokenProcessPool there; ours fails this task alone, with that type."""
    err = BrokenProcessPool(f"A task could not be deserialized: {exc}")
    err.__cause__ = exc.__cause__ or exc
    return err


def _unwrap(exc: BaseException) -> BaseException:
    """The user's own exception (its remote traceback as ``__cause__``), as the stdlib
    reports; the RemoteError itself when the class does not exist here."""
    cause = exc.__cause__
    if cause is None or isinstance(cause, RemoteTraceback):
        return exc
    if isinstance(cause, DecodeError):  # the call could not be unpickled on the worker
        return _broken_task(cause)
    tb = cause.__cause__
    if isinstance(tb, RemoteTraceback):  # the stdlib's class, for code that checks it
        cause.__cause__ = _RemoteTraceback(tb.tb)
    return cause


def _in_order(futs: list[CFuture], timeout: float | None) -> Iterator:
    """``Executor.map``'s iterator over *futs*: results in order, the first error raised,
    *timeout* counted from the call; the futures not yet reached are cancelled when the
    iterator is closed or dropped."""
    end = None if timeout is None else time.monotonic() + timeout

    def results() -> Iterator:
        try:
            futs.reverse()  # pop() from the end, dropping each future as it is done with
            while futs:
                # nothing here keeps a result once it is yielded (no local names it)
                yield _result_or_cancel(futs.pop(), None if end is None else end - time.monotonic())
        finally:
            for fut in futs:
                fut.cancel()

    return results()


def _result_or_cancel(fut: CFuture, timeout: float | None) -> Any:
    try:
        try:
            return fut.result(timeout)
        finally:
            fut.cancel()
    finally:
        del fut  # the future holds the result: not past here


def _chunks(it: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    it = iter(it)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _ordered(futs: list[CFuture], timeout: float | None, bar: Any) -> Iterator:
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        for fut in futs:
            left = None if deadline is None else deadline - time.monotonic()
            yield from fut.result(left)
    finally:
        for fut in futs:
            fut.cancel()
        bar.close()


def progress_bar(total: int, desc: str, progress: bool | str) -> Any:
    """A tqdm bar: on a terminal for ``progress=True``, anywhere for ``"always"``."""
    from tqdm import tqdm

    return tqdm(total=total, unit="task", desc=desc, dynamic_ncols=True,
                disable=None if progress is True else False)

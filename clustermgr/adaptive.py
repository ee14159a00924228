"""adapt: a manager's workers grow and shrink with the work waiting in the runtime.

Who calls what, and when:

- A user calls :func:`adapt` (or ``ClusterExecutor(adaptive=...)``, ``start_session(...,
  adaptive=...)``); it returns a started :class:`Adaptive` at once, whose thread looks at
  the cluster every ``interval`` seconds until :meth:`Adaptive.stop` (or ``shutdown``).
- The runtime's schedulers tell it what they hold unsent: ``pmap`` and the executor's
  dispatcher call :func:`add_backlog` with an object whose ``backlog()`` says how many
  calls wait in it, and :func:`remove_backlog` when done.  Calls queued on a worker
  behind its running one (the master's ``load``) count as waiting too.
- Schedulers ask :func:`expect_workers` whether an empty cluster will get workers (then
  they wait for them instead of failing) and :func:`longest_walltime` whether a task
  that says how long it runs can ever be placed.

One tick: (1) launches that failed are counted, and after ``max_failures`` submissions in
a row whose every worker failed before joining, submitting pauses for ``failure_pause``
seconds (``paused`` says why); (2) workers within ``drain`` seconds (plus a random
``stagger``) of their job's end get no new calls and leave once idle; they stop counting
as capacity ``lead`` seconds earlier (the time a job of this manager took to start and
join), so their replacement is in place before they go; (3) the capacity - workers not
draining nor expiring, plus launches not yet joined - is kept at least ``minimum``, and
grown towards ``maximum`` while calls have waited longer than ``wait`` seconds, by at most
the number waiting, with at most ``max_pending`` launches not yet joined and one
submission per ``submit_interval``; (4) when nothing has waited for ``idle_timeout``
seconds, launches not yet joined are cancelled and workers idle that long are retired
(down to ``minimum``), never one with a call in flight: a retired worker first gets no new
calls, and leaves at the next tick if it still has none.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .managers.base import ClusterManager

log = logging.getLogger("clustermgr")

_sources: weakref.WeakSet = weakref.WeakSet()  # objects with backlog() -> int
_active: list[Adaptive] = []
_lock = threading.Lock()


def add_backlog(source: Any) -> None:
    """A scheduler (pmap, an executor) holds calls not yet sent: ``source.backlog()``
    says how many.  Any thread."""
    _sources.add(source)


def remove_backlog(source: Any) -> None:
    _sources.discard(source)


def waiting_calls(master: Any) -> int:
    """Calls waiting for a worker: held by schedulers unsent, or queued on a worker
    behind the one it runs."""
    held = 0
    for source in list(_sources):
        try:
            held += int(source.backlog())
        except Exception:  # noqa: BLE001 - a scheduler that is ending
            continue
    queued = sum(max(0, n - 1) for n in list(master.load.values()))
    return held + queued


def expect_workers() -> bool:
    """Will workers come without anyone calling addprocs?  (An adapt can still start
    some.)  Schedulers that find no worker wait instead of failing when it is so."""
    with _lock:
        return any(a.can_grow() for a in _active)


def paused_reasons() -> str:
    """Why adapts that could start workers do not (their pauses), for error messages."""
    with _lock:
        said = [f"{a!r}: {a.paused}" for a in _active if a.paused and not a.can_grow()]
    return "; ".join(said)


def longest_walltime() -> float | None:
    """The longest time a worker that some adapt could start may run (``inf``: no
    limit); None when no adapt runs."""
    with _lock:
        growing = [a for a in _active if a.can_grow()]
    if not growing:
        return None
    return max(a.usable_time() for a in growing)


def _tell(master: Any, kind: str, wid: int) -> None:
    """Tell the cluster's listeners (I/O thread); ``"ready"``: a draining worker takes
    calls again (a scheduler waiting for room looks again)."""
    for listener in list(master.listeners):
        listener(kind, wid)


def stop_all() -> None:
    """At shutdown, before the managers close: no adapt starts anything more."""
    with _lock:
        active = list(_active)
    for a in active:
        a.stop()


@dataclass
class _Submission:
    """One launch: its workers' ``Launch`` records, as ``start_workers`` gave them."""

    launches: list[Any]
    at: float
    counted: bool = False  # its outcome went into the failure count
    cancelled: bool = False

    def pending(self) -> list[Any]:
        return [launch for launch in self.launches if not launch.wid and not launch.error]


@dataclass
class AdaptiveStats:
    """What an ``Adaptive`` did (counts since it started)."""

    submissions: int = 0      # submit commands (one may start several workers)
    workers_requested: int = 0
    cancelled: int = 0        # launches cancelled before they joined
    retired: int = 0          # workers retired idle
    drained: int = 0          # workers drained before their walltime
    failures: int = 0         # submissions whose every worker failed before joining
    joined: int = 0
    history: list[tuple[float, str, int]] = field(default_factory=list)  # (time, what, n)


class Adaptive:
    """Keeps *manager*'s workers between *minimum* and *maximum* with the work waiting.

    Made and started by :func:`adapt` (see it for the options); ``stop()`` ends the
    adapting (its workers stay, launches not yet joined are cancelled).  ``stats``
    counts what it did; ``status()`` and ``explain()`` say where it stands.
    """

    def __init__(self, manager: ClusterManager, minimum: int = 0, maximum: int | None = None, *,
                 idle_timeout: float = 60.0, wait: float = 1.0, interval: float = 1.0,
                 max_pending: int | None = None, submit_interval: float = 1.0,
                 max_failures: int = 3, failure_pause: float = 300.0, drain: float | None = None,
                 stagger: float | None = None, lead: float | None = None,
                 **addprocs_kwargs: Any) -> None:
        from .cluster import AddprocsOptions

        if not isinstance(manager, ClusterManager):
            raise TypeError(f"adapt needs a ClusterManager, not {manager!r}")
        if not manager.scalable:
            raise TypeError(f"adapt needs a manager that can start more workers a job at a time; "
                            f"{type(manager).__name__} cannot (its workers are numbered by one "
                            "launch); use LocalManager or a batch scheduler's manager")
        if maximum is None:
            raise TypeError("adapt needs maximum= (the most workers it may start)")
        for name, value in (("minimum", minimum), ("maximum", maximum)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"adapt: {name} must be an int >= 0, not {value!r}")
        if maximum < max(1, minimum):
            raise ValueError(f"adapt: maximum ({maximum}) must be >= 1 and >= minimum ({minimum})")
        for name, value in (("idle_timeout", idle_timeout), ("wait", wait), ("interval", interval),
                            ("submit_interval", submit_interval), ("failure_pause", failure_pause)):
            if not isinstance(value, (int, float)) or value < 0 or (name == "interval" and value == 0):
                raise ValueError(f"adapt: {name} must be a number of seconds > 0, not {value!r}")
        if max_failures < 1:
            raise ValueError("adapt: max_failures must be >= 1")
        self.manager, self.minimum, self.maximum = manager, minimum, maximum
        self.idle_timeout, self.wait, self.interval = idle_timeout, wait, interval
        self.max_pending = maximum if max_pending is None else max_pending
        if self.max_pending < 1:
            raise ValueError("adapt: max_pending must be >= 1")
        self.submit_interval = submit_interval
        self.max_failures, self.failure_pause = max_failures, failure_pause
        wall = manager.walltime_seconds
        self.drain = drain if drain is not None else (min(600.0, 0.1 * wall) if wall else 0.0)
        self.stagger = stagger if stagger is not None else (min(self.drain, 0.05 * wall) if wall else 0.0)
        self._lead = lead  # None: measured (submit -> join), 30 s until measured
        if wall is not None and self.drain >= wall:
            raise ValueError(f"adapt: drain={self.drain} s leaves no time to work in a walltime of {wall} s")
        self.opts = AddprocsOptions.parse(addprocs_kwargs)
        self.stats = AdaptiveStats()
        self.paused = ""  # why submitting is paused ("" when it is not)
        self._paused_until = 0.0
        self._in_a_row = 0  # failed submissions since the last join
        self._subs: list[_Submission] = []
        self._jitter: dict[int, float] = {}  # worker -> its share of the stagger
        self._marked: dict[int, float] = {}  # draining worker -> when first seen idle
        self._left: set[int] = set()  # workers asked to leave
        self._seen: set[int] = set()  # id() of the launches whose join was counted
        self._starts: list[float] = []  # submit -> join of recent workers, seconds
        self._waiting_since: float | None = None
        self._quiet_since = time.monotonic()  # nothing has waited since then
        self._last_submit = -math.inf
        self._last_error = ""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: Any = None

    def __repr__(self) -> str:
        return (f"Adaptive({self.manager!r}, minimum={self.minimum}, maximum={self.maximum}"
                f"{', paused' if self.paused else ''})")

    # --- life ----------------------------------------------------------------------------

    def start(self) -> Adaptive:
        from .cluster import master, register_manager

        self._master = master()
        register_manager(self.manager)
        with _lock:
            _active.append(self)
        self._thread = threading.Thread(target=self._run, name="clustermgr-adapt", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop adapting: nothing more is started or retired; launches not yet joined
        are cancelled; the workers stay (``rmprocs`` or ``shutdown`` removes them)."""
        self._stop.set()
        self._wake.set()
        with _lock:
            if self in _active:
                _active.remove(self)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._cancel([s for s in self._subs if s.pending()], "adapt stopped")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poke(self) -> None:
        """Look again now (a scheduler has just queued work)."""
        self._wake.set()

    def can_grow(self) -> bool:
        """Whether it may still start workers (running, not paused)."""
        return not self._stop.is_set() and (not self.paused or time.monotonic() >= self._paused_until)

    def usable_time(self) -> float:
        """How long a fresh worker of this manager can run tasks (``inf``: no walltime)."""
        wall = self.manager.walltime_seconds
        return math.inf if wall is None else wall - self.drain - self.stagger

    # --- what it sees --------------------------------------------------------------------

    def workers(self) -> list[int]:
        """This manager's workers in the cluster now (draining ones included)."""
        return sorted(w.id for w in self._mine())

    def _mine(self) -> list[Any]:
        m = self._master
        return [w for w in list(m.workers.values())
                if w.state == "up" and w.launch is not None and w.launch.manager is self.manager]

    def pending(self) -> int:
        """Workers it launched that have not joined yet (queued or starting)."""
        return sum(len(s.pending()) for s in self._subs)

    def lead(self) -> float:
        """Seconds from a submission to its worker's joining: the slowest of the last few
        measured (until one is, ``lead=`` or 30 s)."""
        if self._lead is not None:
            return self._lead
        return max(self._starts[-5:]) if self._starts else 30.0

    def status(self) -> dict[str, Any]:
        m = self._master
        mine = self._mine() if m is not None else []
        return {"workers": len(mine), "draining": sum(w.id in m.draining for w in mine) if mine else 0,
                "pending": self.pending(), "waiting_calls": waiting_calls(m) if m is not None else 0,
                "minimum": self.minimum, "maximum": self.maximum, "paused": self.paused,
                "submissions": self.stats.submissions, "cancelled": self.stats.cancelled,
                "retired": self.stats.retired, "drained": self.stats.drained,
                "failures": self.stats.failures}

    def explain(self) -> str:
        """Where it stands and why, then the manager's own account of its jobs."""
        st = self.status()
        lines = [f"{self!r}: {st['workers']} worker(s) ({st['draining']} draining), "
                 f"{st['pending']} launch(es) not joined yet, {st['waiting_calls']} call(s) waiting"]
        if self.paused:
            lines.append(f"  submitting is paused: {self.paused}")
        if self._last_error and not self.paused:
            lines.append(f"  last failed launch: {self._last_error}")
        lines.append(f"  so far: {st['submissions']} submission(s), {st['cancelled']} cancelled, "
                     f"{st['retired']} retired idle, {st['drained']} drained before their walltime")
        lines.append(self.manager.explain())
        return "\n".join(lines)

    # --- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick(time.monotonic())
            except Exception:  # noqa: BLE001 - adapting goes on; the error is logged
                log.exception("adapt: a tick failed")
            self._wake.wait(self.interval)
            self._wake.clear()

    def tick(self, now: float) -> None:
        """One look at the cluster (the adapt thread; see the module docstring)."""
        m = self._master
        self._account(now)
        mine = self._mine()
        waiting = waiting_calls(m)
        if waiting:
            self._waiting_since = self._waiting_since or now
            self._quiet_since = now
        else:
            self._waiting_since = None
        active = self._walltimes(mine, waiting)
        self._retire_idle(mine, active, waiting, now)
        capacity = len(active) + self.pending()
        want = self.minimum - capacity
        waited = self._waiting_since is not None and now - self._waiting_since >= self.wait
        if waited:
            want = max(want, min(self.maximum, capacity + max(0, waiting - self.pending())) - capacity)
        want = min(want, self.maximum - capacity, self.max_pending - self.pending())
        if want > 0:
            self._submit(want, now)

    def _account(self, now: float) -> None:
        """Count joins and failures of the launches so far; pause after repeated failure."""
        m = self._master
        for s in self._subs:
            for launch in s.launches:
                if launch.wid and id(launch) not in self._seen:
                    self._seen.add(id(launch))
                    self.stats.joined += 1
                    self._in_a_row = 0
                    self._starts.append(m.workers[launch.wid].joined_at - s.at)
                    del self._starts[:-20]
                elif (not launch.wid and not launch.error and not launch.queued
                      and now - launch.started > self.opts.timeout):
                    launch.error = f"did not join within timeout={self.opts.timeout} s"
                    self._kill(launch)
            if not s.counted and not s.pending():
                s.counted = True
                if not s.cancelled and not any(launch.wid for launch in s.launches):
                    self._failed(next((launch.error for launch in s.launches if launch.error), "?"), now)
        keep = [s for s in self._subs if not s.counted or now - s.at < 3600]
        if len(keep) < len(self._subs):
            self._seen = {id(launch) for s in keep for launch in s.launches} & self._seen
        self._subs = keep
        gone = [wid for wid in self._marked if wid not in m.workers or m.workers[wid].state == "dead"]
        for wid in gone:
            self._marked.pop(wid, None)
            self._left.discard(wid)
            self._jitter.pop(wid, None)
        if self.paused and now >= self._paused_until:
            log.info("adapt: resuming submissions after a pause (%s)", self.paused)
            self.paused, self._in_a_row = "", 0

    def _failed(self, why: str, now: float) -> None:
        self.stats.failures += 1
        self._in_a_row += 1
        self._last_error = why
        if self._in_a_row >= self.max_failures and not self.paused:
            self.paused = (f"{self._in_a_row} submissions in a row failed before any worker joined; "
                           f"the last: {why.strip()[:500]}. Submitting again in {self.failure_pause:.0f} s "
                           "(or call resume())")
            self._paused_until = now + self.failure_pause
            log.warning("adapt %r: %s", self.manager, self.paused)

    def resume(self) -> None:
        """Submit again now after a pause (once the cause is fixed)."""
        self.paused, self._in_a_row, self._paused_until = "", 0, 0.0
        self._wake.set()

    def _walltimes(self, mine: list[Any], waiting: int) -> list[Any]:
        """Drain workers near their end, let the drained ones leave; the workers that
        still count as capacity.  A worker retired idle that has not left yet is taken
        back when work comes (rather than started anew)."""
        m = self._master
        lead = self.lead() + self.interval
        active = []
        for w in mine:
            if m.draining.get(w.id) == "idle" and waiting and w.id not in self._left:
                del m.draining[w.id]
                m.retired.pop(w.id, None)
                self._marked.pop(w.id, None)
                self.stats.retired -= 1
                m.call_soon(lambda wid=w.id: _tell(m, "ready", wid))
            if w.id in m.draining:
                self._leave_if_idle(w)
                continue
            left = m.time_left(w.id)
            if left == math.inf:
                active.append(w)
                continue
            jitter = self._jitter.setdefault(w.id, random.uniform(0.0, self.stagger))
            if left <= self.drain + jitter:
                log.info("adapt: worker %d has %.0f s of walltime left; it gets no new tasks", w.id, left)
                m.draining[w.id] = "walltime"
                m.retired[w.id] = "its walltime ran out (it was drained first)"
                self.stats.drained += 1
                self._leave_if_idle(w)
            elif left > self.drain + jitter + lead:
                active.append(w)  # else: expiring, its replacement is due
        return active

    def _retire_idle(self, mine: list[Any], active: list[Any], waiting: int, now: float) -> None:
        if waiting or now - self._quiet_since < self.idle_timeout:
            return
        pending = [s for s in self._subs if s.pending()]
        extra = len(active) + self.pending() - self.minimum
        for s in pending:  # launches first: they hold no work
            if extra <= 0:
                return
            extra -= len(s.pending())
            self._cancel([s], "not needed any more")
        m = self._master
        idle = [w for w in active if not m.load.get(w.id, 0)
                and now - max(m.idle_at.get(w.id, 0.0), w.joined_at) >= self.idle_timeout]
        for w in sorted(idle, key=lambda w: m.idle_at.get(w.id, w.joined_at))[:max(0, extra)]:
            log.info("adapt: retiring worker %d (idle for %.0f s)", w.id, self.idle_timeout)
            m.draining[w.id] = "idle"
            m.retired[w.id] = "retired by adapt (idle)"
            self.stats.retired += 1

    def _leave_if_idle(self, w: Any) -> None:
        """A draining worker without calls in flight leaves (at the tick after it was
        marked: a call sent just before that reaches it, or it is seen in ``load``)."""
        from .cluster import rmprocs

        m = self._master
        if m.load.get(w.id, 0) or w.state != "up" or w.id in self._left:
            return
        first = self._marked.setdefault(w.id, time.monotonic())
        if time.monotonic() - first < self.interval * 0.5:
            return
        self._left.add(w.id)
        rmprocs(w.id, waitfor=0)

    # --- acting --------------------------------------------------------------------------

    def _submit(self, n: int, now: float) -> None:
        from .cluster import start_workers
        from .errors import LaunchError

        if not self.can_grow() or now - self._last_submit < self.submit_interval:
            return
        self._last_submit = now
        self.stats.submissions += 1
        self.stats.workers_requested += n
        self.stats.history.append((time.time(), "submit", n))
        log.info("adapt %r: starting %d worker(s)", self.manager, n)
        try:
            _, launches = start_workers(self.manager, self.opts, n)
        except LaunchError as exc:
            self._failed(str(exc), now)
            return
        self._subs.append(_Submission(launches, now))

    def _cancel(self, subs: Iterable[_Submission], why: str) -> None:
        for s in subs:
            s.cancelled = True
            for launch in s.pending():
                launch.error = f"cancelled by adapt ({why})"
                self.stats.cancelled += 1
                self.stats.history.append((time.time(), "cancel", 1))
                self._kill(launch)

    def _kill(self, launch: Any) -> None:
        if launch.handle is not None:
            threading.Thread(target=launch.manager.kill, args=(launch.handle, 0.0),
                             name="clustermgr-adapt-cancel", daemon=True).start()


def adapt(manager: ClusterManager, minimum: int = 0, maximum: int | None = None, *,
          idle_timeout: float = 60.0, wait: float = 1.0, interval: float = 1.0,
          max_pending: int | None = None, submit_interval: float = 1.0, max_failures: int = 3,
          failure_pause: float = 300.0, drain: float | None = None, stagger: float | None = None,
          lead: float | None = None, **addprocs_kwargs: Any) -> Adaptive:
    """Start and stop *manager*'s workers with the work waiting; returns at once.

    The work is what the runtime holds: ``pmap`` items, ``ClusterExecutor`` tasks, calls
    queued on busy workers.  Workers go and come one job at a time.

    minimum, maximum: the bounds (``minimum == maximum``: keep that many, replacing workers
        that die or reach their walltime).
    wait: seconds work must have waited before more workers are started.
    idle_timeout: seconds a worker must have been idle (and no work waited) before it is
        retired; launches not joined by then are cancelled.
    max_pending: launches not yet joined at once (default: maximum); submit_interval: the
        least seconds between two submissions.
    max_failures, failure_pause: after that many submissions in a row failed before any
        worker joined, submitting pauses that long (``.paused`` says why; ``.resume()``).
    drain: seconds before its job's end a worker gets no new tasks (default: a tenth of
        the manager's walltime, at most 600 s); stagger: up to that many more, at random
        per worker, so that workers started together do not end together (default:
        5 % of the walltime, at most ``drain``); lead: how early a replacement is started
        (default: measured).
    interval: seconds between two looks.  Other keywords go to the launches as to
        ``addprocs`` (``timeout``: join timeout of a running job, ``env``, ...).
    """
    return Adaptive(manager, minimum, maximum, idle_timeout=idle_timeout, wait=wait, interval=interval,
                    max_pending=max_pending, submit_interval=submit_interval,
                    max_failures=max_failures, failure_pause=failure_pause, drain=drain,
                    stagger=stagger, lead=lead, **addprocs_kwargs).start()

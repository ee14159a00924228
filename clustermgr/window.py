"""How many calls to keep in flight on each worker: the pipelining window.

Who uses it: the schedulers that feed workers many calls — ``pmap`` and the
``ClusterExecutor`` dispatcher (``imap`` keeps its own ``in_flight`` bound) — ask
:meth:`Window.depth` before sending a worker another call, and report each call with
:meth:`Window.sent` and :meth:`Window.done`.

The depth comes from two measures per worker:

- *run*: how long its calls run, as the worker itself timed them (carried back in the
  RESULT header, ``Future.run_time``), smoothed;
- *latency*: what a call costs besides running (the round trip, the encoding at both
  ends), the smallest ``round trip - run`` of recent calls sent to the worker while it had
  nothing else to do (a call queued behind others would count their run times too).

A worker needs ``1 + ceil(latency / run)`` calls in flight never to idle between them;
tiny calls get a deep window (up to ``MAX_DEPTH``), calls far longer than the latency get
one at a time, so that a short call is never queued behind a long one on one worker while
another worker could run it.  A worker whose oldest call has been out far longer than its
calls usually run gets nothing more until it is done: a call that turns out long stops
more calls from queuing behind it.  The calls already queued behind it are offered by
:meth:`Window.steal` while another worker idles: the scheduler withdraws them (a REVOKE,
which only an unstarted call obeys) and sends them there.  POLL is how often a scheduler
with such a worker looks again.  A worker with no measure yet gets one call: the first
calls also find out which workers are slow.
"""

from __future__ import annotations

import math
import time

MAX_DEPTH = 64
#: a call longer than this many latencies runs alone on its worker (idle time < 1/this)
ALONE_AFTER = 50
_SMOOTH = 0.25  # weight of the newest run time in the running estimate
_LATENCY_SAMPLES = 32  # the latency is the minimum over this many recent calls
POLL = 0.01


class _Worker:
    __slots__ = ("run", "latency", "samples", "out", "withdrawn")

    def __init__(self) -> None:
        self.run: float | None = None
        self.latency: float | None = None
        self.samples: list[float] = []
        self.out: dict[int, tuple[float, bool, object]] = {}  # token -> (sent, alone, what)
        self.withdrawn: set[int] = set()  # tokens offered by steal()

    def overdue(self, now: float) -> bool:
        """Its oldest call has been out far longer than its calls run."""
        if not self.out or self.run is None or self.latency is None:
            return False
        latency = max(self.latency, 1e-6)
        age = now - next(iter(self.out.values()))[0] - latency
        return age >= max(ALONE_AFTER * latency, 4 * self.run)

    def queued(self) -> bool:
        """Calls not yet offered by steal() wait behind its oldest."""
        return len(self.out) - len(self.withdrawn) > 1


class Window:
    """Per-worker pipelining depths for one scheduler (not thread-safe: one owner)."""

    def __init__(self, max_depth: int = MAX_DEPTH) -> None:
        self.max_depth = max_depth
        self._workers: dict[int, _Worker] = {}
        self._token = 0

    def sent(self, wid: int, what: object = None) -> int:
        """A call went to *wid*; returns the token to give :meth:`done`.  *what* is the
        scheduler's handle on it, handed back by :meth:`steal`."""
        self._token += 1
        w = self._workers.setdefault(wid, _Worker())
        w.out[self._token] = (time.perf_counter(), not w.out, what)
        return self._token

    def done(self, wid: int, token: int, run_time: float | None) -> None:
        """The call *token* on *wid* completed; *run_time* as the worker measured it
        (None when unknown: an error raised before the call ran, a lost worker)."""
        w = self._workers.get(wid)
        if w is None:
            return
        entry = w.out.pop(token, None)
        w.withdrawn.discard(token)
        if entry is None or run_time is None:
            return
        w.run = run_time if w.run is None else (1 - _SMOOTH) * w.run + _SMOOTH * run_time
        started, alone, _ = entry
        if alone:
            w.samples.append(max(0.0, time.perf_counter() - started - run_time))
            if len(w.samples) > _LATENCY_SAMPLES:
                del w.samples[0]
            w.latency = min(w.samples)

    def forget(self, wid: int) -> None:
        """*wid* is gone."""
        self._workers.pop(wid, None)

    def depth(self, wid: int) -> int:
        """How many calls *wid* should have in flight now."""
        w = self._workers.get(wid)
        if w is None or w.run is None or w.latency is None:
            return 1
        run, latency = w.run, max(w.latency, 1e-6)
        if w.overdue(time.perf_counter()):
            return 1  # its oldest call turns out long: queue nothing more behind it
        if run >= ALONE_AFTER * latency:
            return 1
        return min(self.max_depth, 1 + math.ceil(latency / max(run, 1e-9) - 1e-6))

    def stuck(self) -> bool:
        """Some worker has calls queued behind an overdue one (:meth:`steal` has some)."""
        now = time.perf_counter()
        return any(w.queued() and w.overdue(now) for w in self._workers.values())

    def queued(self) -> bool:
        """Some worker has calls queued behind another: one may become :meth:`stuck`, so a
        scheduler with an idle worker polls (every ``POLL`` s) rather than waits."""
        return any(w.queued() for w in self._workers.values())

    def steal(self, n: int) -> list[object]:
        """Up to *n* calls (their *what*) queued behind an overdue call, newest first, one
        per worker per round; each is offered once.  The scheduler withdraws them; the
        worker's answer (withdrawn, or the result if the call had started) ends each."""
        now = time.perf_counter()
        found: list[object] = []
        while len(found) < n:
            before = len(found)
            for w in self._workers.values():
                if len(found) >= n or not w.queued() or not w.overdue(now):
                    continue
                oldest = next(iter(w.out))
                for token in reversed(w.out):
                    if token == oldest:
                        break
                    if token not in w.withdrawn:
                        w.withdrawn.add(token)
                        found.append(w.out[token][2])
                        break
            if len(found) == before:
                break
        return found

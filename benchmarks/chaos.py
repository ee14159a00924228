"""Chaos: ``kill -9`` of a random worker at a fixed rate while pmap, the executor and a
session run many small tasks; what was lost, run twice, stored twice, and how long the
pool took to get its workers back.

    python -m benchmarks.chaos [--tasks 20000] [--workers 4] [--interval 0.3] [--out DIR]

Each scenario keeps ``--workers`` local workers while a killer thread sends SIGKILL to one
of them, chosen at random, every ``--interval`` seconds until the work is done:

- **pmap**: one ``pmap`` with ``retry_delays`` (a lost batch goes to another worker); the
  script replaces each dead worker with ``addprocs(1)`` from a runtime listener, as a user
  would (adaptive scaling that does this for them is issue #15).
- **executor**: ``ClusterExecutor`` (which replaces dead workers itself); the script
  resubmits every future that failed with ``WorkerLostError``, as the stdlib pool's users do.
- **session**: ``Session.map`` in a session daemon (which replaces dead workers and re-runs
  their tasks, up to ``max_attempts``); ``collect(wait=True)``.

Every task appends its index to a log when it starts and when it finishes (O_APPEND, so
concurrent writes stay whole lines).  Counted: **lost** (an index with no result),
**wrong** (a result out of order or with the wrong value), **re-run** (started more than
once: the expected cost of a kill), **completed twice** (ran to its end more than once: a
kill between the end of a task and the arrival of its result; at-least-once execution),
**stored twice** (more results than tasks: must be 0), and **recovery**: from the last kill
to all ``--workers`` workers live again.  Each scenario also runs once without kills, for
the time the kills cost.  Results go to ``benchmarks/results/chaos.{json,md}``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import benchmarks/

RESULTS = Path(__file__).resolve().parent / "results"


def _append(path: str, i: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"%d\n" % i)
    finally:
        os.close(fd)


def work(i: int, log: str, seconds: float) -> int:
    """One task: logged at start and end, a little sleep (a short I/O-bound task), i*i."""
    _append(log + ".start", i)
    time.sleep(seconds)
    _append(log + ".end", i)
    return i * i


class Killer(threading.Thread):
    """SIGKILL one of ``pids()`` every *interval* seconds until ``stop()``."""

    def __init__(self, pids: Callable[[], list[int]], interval: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.pids, self.interval, self.rng = pids, interval, random.Random(seed)
        self.halt = threading.Event()
        self.kills: list[float] = []

    def run(self) -> None:
        if self.interval <= 0:  # a calm run, for the time without kills
            return
        while not self.halt.wait(self.interval):
            live = self.pids()
            if live:
                try:
                    os.kill(self.rng.choice(live), signal.SIGKILL)
                    self.kills.append(time.monotonic())
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        self.halt.set()
        self.join()


def _until(check: Callable[[], bool], timeout: float = 120.0) -> float:
    """Seconds until *check()* holds (polled: a process count has no event to wait on)."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            return float("nan")
        time.sleep(0.01)
    return time.monotonic() - t0


def _live(pids: list[int]) -> list[int]:
    """*pids* that run (a killed worker stays a zombie until its parent reaps it)."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def _master_worker_pids() -> list[int]:
    from clustermgr.transport import current_node

    return _live([w.pid for w in list(current_node().workers.values()) if w.state != "dead" and w.pid])


def _recovery(killer: Killer, count: Callable[[], int], workers: int) -> float:
    """Seconds from the last kill until *workers* workers run again."""
    _until(lambda: count() >= workers)
    return time.monotonic() - killer.kills[-1] if killer.kills else 0.0


def _counts(log: str) -> tuple[collections.Counter, collections.Counter]:
    def read(path: str) -> collections.Counter:
        with open(path) as fh:
            return collections.Counter(int(line) for line in fh if line.strip())
    return read(log + ".start"), read(log + ".end")


def run_pmap(n: int, workers: int, interval: float, seconds: float, log: str) -> dict:
    import clustermgr as cm
    from clustermgr.transport import current_node

    cm.addprocs(workers)
    stopping = threading.Event()
    starters: list[threading.Thread] = []

    def replace(kind: str, wid: int) -> None:
        if kind == "leave" and not stopping.is_set():
            starters.append(threading.Thread(target=cm.addprocs, args=(1,), daemon=True))
            starters[-1].start()

    current_node().listeners.append(replace)
    killer = Killer(_master_worker_pids, interval, seed=1)
    t0 = time.monotonic()
    killer.start()
    try:
        got = cm.pmap(functools.partial(work, log=log, seconds=seconds), range(n),
                      retry_delays=[0.0] * 100, timeout=600)
    finally:
        killer.stop()
    elapsed = time.monotonic() - t0
    recovery = _recovery(killer, lambda: min(len(_master_worker_pids()), len(cm.workers())), workers)
    stopping.set()
    current_node().listeners.remove(replace)
    for t in starters:  # a replacement still joining would outlive the shutdown
        t.join()
    cm.shutdown()
    wrong = sum(1 for i, v in enumerate(got) if v != i * i)
    return {"elapsed_s": elapsed, "kills": len(killer.kills), "results": len(got), "wrong": wrong,
            "lost": n - len(got) + sum(1 for v in got if v is None), "recovery_s": recovery}


def run_executor(n: int, workers: int, interval: float, seconds: float, log: str) -> dict:
    from clustermgr import ClusterExecutor
    from clustermgr.executor import WorkerLostError

    task = functools.partial(work, log=log, seconds=seconds)
    results: dict[int, int] = {}
    stored = resubmitted = 0
    with ClusterExecutor(workers) as ex:
        killer = Killer(lambda: _master_worker_pids() if ex.workers else [], interval, seed=2)
        t0 = time.monotonic()
        killer.start()
        try:
            todo = list(range(n))
            while todo:
                futures = {ex.submit(task, i): i for i in todo}
                todo = []
                for f, i in futures.items():
                    try:
                        value = f.result(timeout=600)
                    except WorkerLostError:
                        todo.append(i)
                        continue
                    stored += 1
                    results[i] = value
                resubmitted += len(todo)
        finally:
            killer.stop()
        elapsed = time.monotonic() - t0
        recovery = _recovery(killer, lambda: min(len(_master_worker_pids()), len(ex.workers)), workers)
    wrong = sum(1 for i, v in results.items() if v != i * i)
    return {"elapsed_s": elapsed, "kills": len(killer.kills), "results": stored, "wrong": wrong,
            "lost": n - len(results), "resubmitted": resubmitted, "recovery_s": recovery}


def run_session(n: int, workers: int, interval: float, seconds: float, log: str) -> dict:
    """Workers killed all along, and the session daemon itself killed once, half-way."""
    import psutil

    import clustermgr as cm

    s = cm.start_session(nworkers=workers, max_attempts=100, release_after=None)

    def daemon() -> psutil.Process:
        return psutil.Process(int(json.loads((s.dir / "credential").read_text())["pid"]))

    master = [daemon()]

    def pids() -> list[int]:
        """The daemon's workers: its descendants but the fork server they are forked from."""
        out, d = [], master[0]
        try:
            kids = d.children(recursive=True)
        except psutil.Error:
            return []
        for p in kids:
            try:
                if not (p.ppid() == d.pid and "clustermgr.managers.forkserver" in p.cmdline()):
                    out.append(p.pid)
            except psutil.Error:
                pass
        return _live(out)

    killer = Killer(pids, interval, seed=3)
    resumed, orphans = float("nan"), []
    t0 = time.monotonic()
    killer.start()
    try:
        ids = s.map(functools.partial(work, log=log, seconds=seconds), range(n))
        if interval > 0:
            _until(lambda: s._read_store(lambda st: st.counts())["completed"] >= n // 2, timeout=600)
            orphans = master[0].children(recursive=True)
            t1 = time.monotonic()
            master[0].kill()
            master[0].wait(10)
            s = cm.attach_session(s.id, resume=True)
            resumed = time.monotonic() - t1
            master[0] = daemon()
        done = s.collect(wait=True, timeout=600)
    finally:
        killer.stop()
    elapsed = time.monotonic() - t0
    recovery = _recovery(killer, lambda: len(pids()), workers)
    index = {tid: i for i, tid in enumerate(ids)}
    good = {index[tid]: v for tid, v in done.items() if tid in index}
    wrong = sum(1 for i, v in good.items() if v != i * i)
    s.cleanup()
    for p in orphans:  # the killed daemon's workers would leave after master_grace (60 s)
        try:
            p.kill()
        except psutil.Error:
            pass
    return {"elapsed_s": elapsed, "kills": len(killer.kills), "results": len(done), "wrong": wrong,
            "lost": n - len(good), "recovery_s": recovery, "daemon_resumed_s": resumed}


SCENARIOS = {"pmap": run_pmap, "executor": run_executor, "session": run_session}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.3, help="seconds between kills")
    parser.add_argument("--task-seconds", type=float, default=0.001)
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("CLUSTERMGR_HOME", tempfile.mkdtemp(prefix="cm-chaos-home-"))
    import clustermgr as cm

    cm.configure(output=None)
    rows = {}
    for name in args.only:
        with tempfile.TemporaryDirectory(prefix=f"cm-chaos-{name}-") as tmp:
            log = os.path.join(tmp, "log")
            for suffix in (".start", ".end", ".calm.start", ".calm.end"):
                Path(log + suffix).touch(mode=0o600)
            calm = SCENARIOS[name](args.tasks, args.workers, 0, args.task_seconds, log + ".calm")
            row = SCENARIOS[name](args.tasks, args.workers, args.interval, args.task_seconds, log)
            starts, ends = _counts(log)
        row["calm_s"] = calm["elapsed_s"]
        row["kills_per_min"] = 60 * row["kills"] / row["elapsed_s"]
        row["rerun"] = sum(1 for c in starts.values() if c > 1)
        row["completed_twice"] = sum(1 for c in ends.values() if c > 1)
        row["stored_twice"] = max(0, row["results"] - args.tasks)
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"tasks": args.tasks, "workers": args.workers, "interval_s": args.interval,
            "task_s": args.task_seconds, "cpus": os.cpu_count(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (args.out / "chaos.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"{args.tasks:,} tasks of {args.task_seconds * 1e3:g} ms on {args.workers} local workers, "
             f"`kill -9` of a random worker every {args.interval:g} s ({meta['when']}, "
             f"{meta['cpus']} CPUs)", "",
             "| scenario | time without kills (s) | with kills (s) | kills | kills/min | lost | wrong "
             "| re-run | completed twice | stored twice | recovery (s) |", "|---" * 11 + "|"]
    keys = ["lost", "wrong", "rerun", "completed_twice", "stored_twice"]
    for name, r in rows.items():
        counts = " | ".join(str(r[k]) for k in keys)
        lines.append(f"| {name} | {r['calm_s']:.1f} | {r['elapsed_s']:.1f} | {r['kills']} "
                     f"| {r['kills_per_min']:.0f} | {counts} | {r['recovery_s']:.2f} |")
    if "session" in rows:
        lines += ["", f"In the session run the daemon itself was also killed (`kill -9`) once, half-way: "
                      f"resumed and answering again after {rows['session']['daemon_resumed_s']:.1f} s."]
    (args.out / "chaos.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

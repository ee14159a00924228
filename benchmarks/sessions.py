"""Sessions: how fast tasks go into a session, and how long a killed daemon takes to resume.

    python -m benchmarks.sessions [--tasks 10000] [--repeats 3]

Uses a private CLUSTERMGR_HOME in a temporary folder; sessions are ended and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time


def noop(x: int) -> int:
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["CLUSTERMGR_HOME"] = tempfile.mkdtemp(prefix="cm-bench-home-")
    import clustermgr as cm

    s = cm.start_session(nworkers=2)
    t0 = time.perf_counter()
    s.map(noop, range(args.tasks))
    s.collect(wait=True, timeout=600)
    executed = args.tasks / (time.perf_counter() - t0)
    mapped, single, killed = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        s.map(noop, range(args.tasks))
        mapped.append(args.tasks / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(1000):
            s.submit(noop, i)
        single.append(1000 / (time.perf_counter() - t0))
    s.collect(wait=True, timeout=600)
    for _ in range(args.repeats):
        pid = int(json.loads((s.dir / "credential").read_text())["pid"])
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while cm.session.client.daemon_alive(s.dir):
            time.sleep(0.001)
        s = cm.attach_session(s.id, resume=True)
        answering = time.perf_counter() - t0
        s.wait_for_workers(2, timeout=120)
        killed.append((answering, time.perf_counter() - t0))
    s.cleanup()
    print("| measure | median |")
    print("|---|---|")
    print(f"| submit rate, Session.map of {args.tasks:,} tasks | {statistics.median(mapped):,.0f} tasks/s |")
    print(f"| submit rate, one Session.submit per task | {statistics.median(single):,.0f} tasks/s |")
    print(f"| tiny tasks submitted and run to stored results, 2 workers | {executed:,.0f} tasks/s |")
    answering, back = (statistics.median(k[i] for k in killed) for i in (0, 1))
    print(f"| kill -9 of the daemon to resumed and answering | {answering:.2f} s |")
    print(f"| kill -9 of the daemon to its workers back | {back:.2f} s |")


if __name__ == "__main__":
    main()

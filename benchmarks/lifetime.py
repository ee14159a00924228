"""Object lifetime: memory and file descriptors stay flat under a long run.

    python -m benchmarks.lifetime [--calls 1000000] [--futures 100000] [--channels 10000]
    python -m benchmarks.lifetime --quick          # a smoke run of the same code

Three phases on 2 local workers, each sampling the RSS and open fds of the master and the
workers after a warm-up (the first tenth of the phase) and at its end:
  calls     tiny remotecalls (1,000 in flight at a time), fetched on the master;
  futures   Future()s set on the master, passed to a worker and fetched there;
  channels  RemoteChannels created on a worker, used from the master, then dropped.
Reports the growth after warm-up, per million calls for the first phase, and how many
objects the owners still hold (distributed reference counting should leave none).
Writes benchmarks/results/lifetime.json and .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import psutil

RESULTS = Path(__file__).with_name("results")
WINDOW = 1000


def noop(x: int) -> int:
    return x


def fetch_it(fut):  # runs on a worker
    return fut.fetch()


def owned_here() -> int:
    from clustermgr.transport import current_node

    gc.collect()
    return current_node().refs.sizes()["owned"] + len(current_node().channels.channels)


def sample(procs: list[psutil.Process]) -> dict[str, float]:
    rss = [p.memory_info().rss / 2**20 for p in procs]
    fds = [p.num_fds() for p in procs]
    return {"master_rss": rss[0], "worker_rss": max(rss[1:]), "master_fds": fds[0],
            "worker_fds": max(fds[1:])}


def run_phase(name: str, total: int, step, procs: list[psutil.Process]) -> dict[str, object]:
    warm = max(WINDOW, total // 10)
    done = 0
    while done < warm:
        done += step(min(WINDOW, warm - done), done)
    gc.collect()
    before = sample(procs)
    while done < total:
        done += step(min(WINDOW, total - done), done)
    gc.collect()
    after = sample(procs)
    growth = {k: round(after[k] - before[k], 2) for k in before}
    print(f"{name:9s} {total:>9,}  growth after warm-up: {growth}", flush=True)
    return {"phase": name, "count": total, "before": before, "after": after, "growth": growth}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--futures", type=int, default=100_000)
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="a smoke run (10k/2k/500)")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.futures, args.channels = 10_000, 2_000, 500
    import clustermgr as cm
    from clustermgr.cluster import master

    ids = cm.addprocs(2)
    procs = [psutil.Process()] + [psutil.Process(cm.remotecall_fetch(os.getpid, w)) for w in ids]

    def calls(n: int, offset: int) -> int:
        futs = [cm.remotecall(noop, ids[(offset + i) % 2], i) for i in range(n)]
        for f in futs:
            f.fetch()
        return n

    def futures(n: int, offset: int) -> int:
        futs = []
        for i in range(n):
            fut = cm.Future()
            fut.put(i)
            futs.append(cm.remotecall(fetch_it, ids[i % 2], fut))
        assert [f.fetch() for f in futs] == list(range(n))
        return n

    def channels(n: int, offset: int) -> int:
        for i in range(n):
            chan = cm.RemoteChannel(ids[i % 2])
            chan.put(i)
            assert chan.take() == i
        return n

    rows = [run_phase("calls", args.calls, calls, procs),
            run_phase("futures", args.futures, futures, procs),
            run_phase("channels", args.channels, channels, procs)]
    m = master()
    gc.collect()
    import time

    time.sleep(1.0)  # the last releases go out on the next ticks
    held = {"master": m.refs.sizes()["owned"] + len(m.channels.channels),
            **{f"worker {w}": cm.remotecall_fetch(owned_here, w) for w in ids}}
    per_million = round(rows[0]["growth"]["master_rss"] * 1_000_000 / max(1, args.calls * 0.9), 2)
    result = {"phases": rows, "still_owned": held, "master_rss_growth_per_million_calls_mib": per_million}
    print(f"objects still owned: {held}; master RSS growth per million calls: {per_million} MiB")
    cm.shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lifetime.json").write_text(json.dumps(result, indent=2))
    lines = ["| phase | count | master RSS (MiB) before → after | worker RSS (MiB) "
             "| master fds | worker fds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(f"| {r['phase']} | {r['count']:,} | {b['master_rss']:.1f} → {a['master_rss']:.1f} | "
                     f"{b['worker_rss']:.1f} → {a['worker_rss']:.1f} "
                     f"| {b['master_fds']} → {a['master_fds']} | {b['worker_fds']} → {a['worker_fds']} |")
    (RESULTS / "lifetime.md").write_text("\n".join(lines) + f"\n\nStill owned at the end: {held}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Runtime figures: one call's latency, tiny-task pmap throughput, startup of N workers.

    python -m benchmarks.runtime [--quick]

Prints a markdown table and writes ``benchmarks/results/runtime.json``.  Medians and
p90/p99 over repeats; every row also shows its ratio to the raw pyzmq floor measured in
the same run (``benchmarks/floor.py``).  Timing lives here, never in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import clustermgr as cm

from .floor import Floor

RESULTS = Path(__file__).parent / "results"


def noop(x=None):
    return x


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {"p50": statistics.median(s), "p90": pick(0.90), "p99": pick(0.99)}


def latency(call, n: int) -> dict[str, float]:
    for _ in range(50):
        call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return {k: v * 1e6 for k, v in percentiles(samples).items()}  # microseconds


def startup(n: int, repeats: int) -> dict[str, float]:
    """Seconds from addprocs(n) to the first result from every worker."""
    samples = []
    for _ in range(repeats):
        cm.shutdown()
        t0 = time.perf_counter()
        ids = cm.addprocs(n)
        cm.everywhere(noop)
        samples.append(time.perf_counter() - t0)
        cm.rmprocs(ids)
    return percentiles(samples)


def pmap_rate(n: int, batch_size, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cm.pmap(noop, range(n), batch_size=batch_size)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def run(quick: bool) -> dict:
    calls, tasks, repeats = (500, 5_000, 2) if quick else (2_000, 20_000, 3)
    floor = Floor()
    try:
        floor_lat = latency(lambda: floor.call(noop, 1), calls)
        floor_rate = statistics.median(floor.throughput(noop, tasks) for _ in range(repeats))
    finally:
        floor.close()
    results = {"startup_2": startup(2, repeats), "startup_8": startup(8, repeats)}
    cm.shutdown()
    cm.addprocs(2)
    results["latency_us"] = latency(lambda: cm.remotecall_fetch(noop, 2, 1), calls)
    results["pmap_batch1_per_s"] = pmap_rate(tasks, 1, repeats)
    results["pmap_auto_per_s"] = pmap_rate(tasks * 5, "auto", repeats)
    cm.shutdown()
    results["floor"] = {"latency_us": floor_lat, "rate_per_s": floor_rate}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()}
    return results


def table(r: dict) -> str:
    f = r["floor"]
    lat, flat = r["latency_us"], f["latency_us"]
    rows = [
        ("remotecall_fetch latency (µs, p50 / p90 / p99)",
         f"{lat['p50']:.0f} / {lat['p90']:.0f} / {lat['p99']:.0f}",
         f"{flat['p50']:.0f} / {flat['p90']:.0f} / {flat['p99']:.0f}",
         f"{lat['p50'] / flat['p50']:.2f}× floor"),
        ("pmap, batch_size=1 (tasks/s)", f"{r['pmap_batch1_per_s']:,.0f}", f"{f['rate_per_s']:,.0f}",
         f"{r['pmap_batch1_per_s'] / f['rate_per_s']:.2f}× floor"),
        ('pmap, batch_size="auto" (tasks/s)', f"{r['pmap_auto_per_s']:,.0f}", f"{f['rate_per_s']:,.0f}",
         f"{r['pmap_auto_per_s'] / f['rate_per_s']:.1f}× floor"),
        ("startup to first result, 2 workers (s, p50)", f"{r['startup_2']['p50']:.2f}", "", ""),
        ("startup to first result, 8 workers (s, p50)", f"{r['startup_8']['p50']:.2f}", "", ""),
    ]
    out = ["| measure | clustermgr | raw pyzmq floor | ratio |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    m = r["machine"]
    out.append(f"\n{m['cpus']} CPUs, Python {m['python']}, {m['platform']}; 2 workers unless noted.")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    cm.configure(output=None)
    results = run(args.quick)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "runtime.json").write_text(json.dumps(results, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()

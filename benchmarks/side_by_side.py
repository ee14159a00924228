"""clustermgr next to the peers a user would pick, measured in one run on one machine.

    python -m benchmarks [--quick] [--only NAME ...] [--skip NAME ...]

Measures (medians; latency also p90/p99):
1. startup to first result from every worker, 2 and 8 workers;
2. latency of one tiny call (2,000 sequential calls, fewer for slow systems: 5 s budget);
3. throughput of tiny tasks: one task per item, and each system at its best chunking
   (100,000 items);
4. bandwidth: a 100 MB float64 array to a worker and back (array bytes / round-trip time);
5. 1,000 tasks sleeping 10 ms on 8 workers (ideal 1.25 s);
6. memory: RSS of the master and of one idle worker;
7. scale (clustermgr only): 200 workers joining, then pmap across all of them.
Writes ``benchmarks/results/side_by_side.json`` and ``.md`` and prints the table with the
ratios the project's targets are stated in.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import psutil

from . import peers
from .peers import Adapter, nap, noop

RESULTS = Path(__file__).parent / "results"


def pct(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50": statistics.median(s), "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
            "p99": s[min(len(s) - 1, int(0.99 * len(s)))]}


def identity(x: Any) -> Any:
    return x


class Runner:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.repeats = 1 if quick else 3
        self.calls = 300 if quick else 2000
        self.items = 20_000 if quick else 100_000

    def measure(self, a: Adapter) -> dict[str, Any]:
        r: dict[str, Any] = {}
        for n in (2, 8):
            if a.workers_max and n > a.workers_max:
                continue
            times = []
            for _ in range(self.repeats if a.name not in ("ipyparallel", "ray") else 1):
                t0 = time.perf_counter()
                a.start(n)
                times.append(time.perf_counter() - t0)
                if n == 8 and not a.workers_max:
                    r["sleep_1000x10ms_s"] = self.sleeps(a)
                a.stop()
                gc.collect()
            r[f"startup_{n}_s"] = statistics.median(times)
        a.start(2 if not a.workers_max else 1)
        try:
            r["latency_us"] = self.latency(a)
            r["one_per_item_per_s"] = self.rate(a, 1)
            best = max((self.rate(a, c), c) for c in self.chunkings(a))
            r["best_chunked_per_s"], r["best_chunksize"] = best
            r["rss_master_MiB"] = psutil.Process().memory_info().rss / 2**20
            r["rss_worker_MiB"] = min(psutil.Process(p).memory_info().rss for p in a.pids()) / 2**20
            r["roundtrip_100MB_GBps"] = self.bandwidth(a)
        finally:
            a.stop()
        return r

    def chunkings(self, a: Adapter) -> list[Any]:
        if isinstance(a, peers.ClusterRemotecall) and not isinstance(a, peers.ClusterExecutorAdapter):
            return ["auto", 1000]
        return [100, 1000, 5000]

    def latency(self, a: Adapter) -> dict[str, float]:
        for _ in range(20):
            a.call(noop, 1)
        samples: list[float] = []
        budget = time.perf_counter() + 5
        while len(samples) < self.calls and (time.perf_counter() < budget or len(samples) < 100):
            t0 = time.perf_counter()
            a.call(noop, 1)
            samples.append(time.perf_counter() - t0)
        return {k: v * 1e6 for k, v in pct(samples).items()} | {"n": len(samples)}

    def rate(self, a: Adapter, chunksize: Any) -> float:
        n = self.items
        if chunksize == 1:  # probe, then size the run to about 3 s
            t0 = time.perf_counter()
            a.map(noop, list(range(200)), 1)
            probe = 200 / (time.perf_counter() - t0)
            n = int(min(self.items, max(500, probe * 3)))
        rates = []
        for _ in range(self.repeats):
            items = list(range(n))
            t0 = time.perf_counter()
            out = a.map(noop, items, chunksize)
            rates.append(n / (time.perf_counter() - t0))
            assert out == items, f"{a.name} lost or reordered results"
        return statistics.median(rates)

    def bandwidth(self, a: Adapter) -> float:
        import numpy as np

        arr = np.random.default_rng(0).random(100 * 2**20 // 8)
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            back = a.call(identity, arr)
            times.append(time.perf_counter() - t0)
            assert back.shape == arr.shape
            del back
        return arr.nbytes / statistics.median(times) / 1e9

    def sleeps(self, a: Adapter) -> float:
        a.map(nap, [0.0] * 8, 1)
        t0 = time.perf_counter()
        a.map(nap, [0.01] * 1000, 1)
        return time.perf_counter() - t0


def scale(n: int) -> dict[str, float]:
    import clustermgr as cm

    cm.configure(output=None)
    t0 = time.perf_counter()
    ids = cm.addprocs(n, timeout=300)
    joined = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = cm.pmap(lambda x: (x, cm.myid()), range(20 * n))
    mapped = time.perf_counter() - t0
    lost = sum(1 for i, (x, _) in enumerate(out) if x != i)
    used = len({w for _, w in out})
    cm.shutdown()
    return {"workers": len(ids), "join_s": joined, "pmap_s": mapped, "tasks": 20 * n,
            "lost": lost, "workers_used": used}


def table(res: dict[str, Any]) -> str:
    rows = res["systems"]

    def cell(name: str, key: str, fmt: str) -> str:
        v = rows.get(name, {}).get(key)
        return "—" if v is None else format(v, fmt)

    lines = ["| system | startup 2 / 8 (s) | latency p50 / p90 / p99 (µs) | one task per item (tasks/s) "
             "| best chunked (tasks/s) | 100 MB round trip (GB/s) | 1000×10 ms on 8 (s) "
             "| RSS master / idle worker (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |||||||")
            continue
        lat = r["latency_us"]
        lines.append(
            f"| {name} | {cell(name, 'startup_2_s', '.2f')} / {cell(name, 'startup_8_s', '.2f')} "
            f"| {lat['p50']:,.0f} / {lat['p90']:,.0f} / {lat['p99']:,.0f} "
            f"| {r['one_per_item_per_s']:,.0f} "
            f"| {r['best_chunked_per_s']:,.0f} (chunk {r['best_chunksize']}) "
            f"| {r['roundtrip_100MB_GBps']:.2f} | {cell(name, 'sleep_1000x10ms_s', '.2f')} "
            f"| {r['rss_master_MiB']:.0f} / {r['rss_worker_MiB']:.0f} |")
    m = res["machine"]
    lines.append(f"\n{m['cpus']} CPUs, {m['memory_GiB']:.0f} GiB, Python {m['python']}, {m['platform']}; "
                 f"latency, throughput, bandwidth and RSS with 2 workers (the floor: 1).")
    if "scale" in res:
        s = res["scale"]
        lines.append(f"\nScale: {s['workers']} clustermgr workers joined in {s['join_s']:.1f} s; pmap of "
                     f"{s['tasks']:,} tasks over them took {s['pmap_s']:.1f} s, used {s['workers_used']} "
                     f"workers and lost {s['lost']} tasks.")
    lines.append("\n" + targets(res))
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> str:
    """The project's targets, as ratios within this run."""
    r = res["systems"]
    floor, ours, ex = r.get("raw pyzmq floor", {}), r.get("clustermgr (remotecall / pmap)", {}), \
        r.get("clustermgr ClusterExecutor", {})
    if not floor or not ours or "error" in ours:
        return ""
    peers_lat = {k: v["latency_us"]["p50"] for k, v in r.items()
                 if "latency_us" in v and not k.startswith(("clustermgr", "raw"))}
    loky, ppe = r.get("loky", {}), r.get("ProcessPoolExecutor", {})
    spawn = r.get("multiprocessing.Pool (spawn)", {})
    ray = r.get("ray", {})
    out = ["| target | measured | met |", "|---|---|---|"]

    def row(text: str, value: str, ok: bool | None) -> None:
        out.append(f"| {text} | {value} | {'yes' if ok else ('—' if ok is None else 'no')} |")

    lat = ours["latency_us"]["p50"]
    row("remotecall_fetch p50 ≤ 1.3× raw pyzmq floor", f"{lat / floor['latency_us']['p50']:.2f}×",
        lat <= 1.3 * floor["latency_us"]["p50"])
    best_peer = min(peers_lat.items(), key=lambda kv: kv[1]) if peers_lat else ("", 0)
    row("remotecall_fetch p50 below every peer", f"{lat:,.0f} µs vs best peer {best_peer[0]} "
        f"{best_peer[1]:,.0f} µs", lat < best_peer[1] if peers_lat else None)
    one = ours["one_per_item_per_s"]
    row("pmap batch_size=1 ≥ 0.9× floor's rate", f"{one / floor['one_per_item_per_s']:.2f}×",
        one >= 0.9 * floor["one_per_item_per_s"])
    if loky and "error" not in loky:
        row("pmap batch_size=1 ≥ 3× loky's", f"{one / loky['one_per_item_per_s']:.2f}×",
            one >= 3 * loky["one_per_item_per_s"])
        best = ours["best_chunked_per_s"]
        rivals = [x["best_chunked_per_s"] for x in (loky, ppe) if x and "error" not in x]
        row('pmap batch_size="auto" ≥ loky and ProcessPoolExecutor at their best chunking',
            f"{best:,.0f} vs {max(rivals):,.0f} tasks/s", best >= max(rivals))
    bw = ours["roundtrip_100MB_GBps"]
    row("100 MB round trip ≥ 0.8× floor", f"{bw / floor['roundtrip_100MB_GBps']:.2f}×",
        bw >= 0.8 * floor["roundtrip_100MB_GBps"])
    if ray and "error" not in ray:
        row("worker-to-worker shared memory beats ray's object store", "not built", False)
    sl = ours.get("sleep_1000x10ms_s")
    if sl:
        row("1,000 × 10 ms on 8 workers within 5% of 1.25 s", f"{sl:.2f} s ({sl / 1.25 - 1:+.0%})",
            sl <= 1.3125)
    if spawn and "error" not in spawn:
        row("startup of 8 ≤ spawn Pool's", f"{ours['startup_8_s']:.2f} vs {spawn['startup_8_s']:.2f} s",
            ours["startup_8_s"] <= spawn["startup_8_s"])
    if loky and "error" not in loky:
        rss, lrss = ours["rss_worker_MiB"], loky["rss_worker_MiB"]
        row("idle worker RSS ≤ loky's", f"{rss:.0f} vs {lrss:.0f} MiB", rss <= lrss)
    if "scale" in res:
        s = res["scale"]
        row("200 workers join in < 10 s; pmap loses no task", f"{s['join_s']:.1f} s, {s['lost']} lost",
            s["join_s"] < 10 and s["lost"] == 0)
    if ex and "error" not in ex:
        row("(ClusterExecutor latency, for reference)", f"{ex['latency_us']['p50']:,.0f} µs", None)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and items (a smoke run)")
    parser.add_argument("--only", nargs="*", help="names (substrings) of the systems to run")
    parser.add_argument("--skip", nargs="*", default=[], help="names (substrings) to leave out")
    parser.add_argument("--scale", type=int, default=200, help="workers for the scale test (0: none)")
    args = parser.parse_args()
    runner = Runner(args.quick)
    res: dict[str, Any] = {"systems": {}, "machine": {
        "cpus": os.cpu_count(), "memory_GiB": psutil.virtual_memory().total / 2**30,
        "python": platform.python_version(), "platform": platform.platform()}}
    for a in peers.all_adapters():
        if (args.only and not any(o in a.name for o in args.only)) or any(s in a.name for s in args.skip):
            continue
        print(f"measuring {a.name} ...", file=sys.stderr, flush=True)
        try:
            res["systems"][a.name] = runner.measure(a)
        except Exception as exc:  # noqa: BLE001 - a peer that fails here is reported, not fatal
            traceback.print_exc()
            res["systems"][a.name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    if args.scale:
        print(f"scale: {args.scale} workers ...", file=sys.stderr, flush=True)
        res["scale"] = scale(args.scale)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "side_by_side.json").write_text(json.dumps(res, indent=2))
    text = table(res)
    (RESULTS / "side_by_side.md").write_text(text + "\n")
    print(text)

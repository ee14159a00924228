"""addprocs of N workers on each scheduler, next to the scheduler's own submit-to-running time.

    python -m benchmarks.schedulers [--workers 8] [--repeats 3]

Starts the real back ends through the project's test kit (tests/clusters/, as root) and
needs nothing else using them.  Rows: Slurm (sbatch array), PBS through Slurm's Torque wrappers (one qsub per
worker), Grid Engine (qsub -t array) and QRSH (one qrsh -now no per worker).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import clustermgr as cm
from clustermgr.managers.pbs import PBSManager
from clustermgr.managers.sge import QRSHManager, SGEManager
from clustermgr.managers.slurm import SlurmManager

KIT = Path(__file__).resolve().parents[1] / "tests" / "clusters"


def kit(name: str) -> dict[str, str]:
    """Start a back end of the test kit (a no-op when it runs); the environment it prints."""
    done = subprocess.run(["bash", str(KIT / name / "start.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {name} back end did not start: {done.stderr.strip()[-500:]}")
    lines = (line.removeprefix("export ").partition("=") for line in done.stdout.splitlines())
    return {key: value for key, eq, value in lines if eq}


def _out(argv: list[str], **kw) -> str:
    return subprocess.run(argv, capture_output=True, text=True, **kw).stdout


def _until(check: Callable[[], bool]) -> None:
    while not check():
        time.sleep(0.05)  # the schedulers' CLIs have no event to wait on


def slurm_raw(n: int) -> float:
    t0 = time.perf_counter()
    job = _out(["sbatch", "--parsable", f"--array=0-{n - 1}", "--job-name=cm-bench",
                "--output=/dev/null", "--wrap", "sleep 30"], check=True).strip()
    _until(lambda: _out(["squeue", "-h", "--array", f"--jobs={job}", "-o", "%T"]).split() == ["RUNNING"] * n)
    elapsed = time.perf_counter() - t0
    subprocess.run(["scancel", job], check=False)
    return elapsed


def pbs_raw(n: int) -> float:
    script = "/tmp/cm-bench-pbs.sh"
    with open(script, "w") as fh:
        fh.write("#!/bin/bash\nsleep 30\n")
    t0 = time.perf_counter()
    ids = [_out(["qsub", "-N", "cm-bench", "-o", "/dev/null", "-e", "/dev/null", script]).strip()
           for _ in range(n)]
    _until(lambda: sum(1 for line in _out(["qstat"]).splitlines()
                       if line.split()[:1] and line.split()[0] in ids and line.split()[4] == "R") == n)
    elapsed = time.perf_counter() - t0
    for job in ids:
        subprocess.run(["qdel", job], check=False)
    return elapsed


def sge_raw(n: int) -> float:
    t0 = time.perf_counter()
    job = _out(["qsub", "-terse", "-t", f"1-{n}", "-b", "y", "-N", "cm-bench", "-o", "/dev/null",
                "-j", "y", "sleep", "30"], check=True).split(".")[0]
    _until(lambda: [line.split()[4] for line in _out(["qstat", "-g", "d"]).splitlines()
                    if line.split()[:1] == [job]] == ["r"] * n)
    elapsed = time.perf_counter() - t0
    subprocess.run(["qdel", job], check=False, capture_output=True)
    return elapsed


def qrsh_raw(n: int) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["qrsh", "-now", "no", "true"]) for _ in range(n)]
    for p in procs:
        p.wait()
    return time.perf_counter() - t0


def ours(make: Callable[[], cm.managers.ClusterManager]) -> float:
    cm.shutdown()
    t0 = time.perf_counter()
    ids = cm.addprocs(make())
    elapsed = time.perf_counter() - t0
    cm.rmprocs(ids)
    return elapsed


def with_path(prefix: str, fn: Callable[[], float]) -> float:
    saved = os.environ["PATH"]
    os.environ["PATH"] = f"{prefix}:{saved}"
    try:
        return fn()
    finally:
        os.environ["PATH"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.workers
    cm.configure(output=None)
    torque_bin = kit("slurm")["SLURM_TORQUE_BIN"]
    sge = kit("sge")
    os.environ.update(SGE_ROOT=sge["SGE_ROOT"], SGE_CELL=sge["SGE_CELL"])
    sge_bin = sge["PATH"].partition(":")[0]
    rows = [
        ("Slurm 22.05 (sbatch array)", "", slurm_raw, lambda: SlurmManager(n, poll_interval=0.2)),
        ("PBS via Slurm's Torque wrappers (qsub each)", torque_bin, pbs_raw,
         lambda: PBSManager(n, poll_interval=0.2)),
        ("Grid Engine 8.1.9 (qsub -t array)", sge_bin, sge_raw, lambda: SGEManager(n, poll_interval=0.2)),
        ("Grid Engine 8.1.9 (qrsh -now no each)", sge_bin, qrsh_raw,
         lambda: QRSHManager(n, poll_interval=0.2)),
    ]
    print(f"| scheduler | addprocs of {n} (s, median) | scheduler alone: submit to all running (s, median) |")
    print("|---|---|---|")
    for name, prefix, raw, make in rows:
        raw_t = [with_path(prefix, functools.partial(raw, n)) for _ in range(args.repeats)]
        our_t = [with_path(prefix, functools.partial(ours, make)) for _ in range(args.repeats)]
        print(f"| {name} | {statistics.median(our_t):.2f} | {statistics.median(raw_t):.2f} |", flush=True)
    cm.shutdown()


if __name__ == "__main__":
    main()

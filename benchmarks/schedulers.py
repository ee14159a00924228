"""addprocs of N workers on a scheduler, next to the scheduler's own submit-to-running time.

    python -m benchmarks.schedulers [--workers 8] [--repeats 3]

Needs the real back ends of ../shared/clusters running (their start.sh).  Slurm only, for
now; each scheduler added to clustermgr gets a row here.
"""

from __future__ import annotations

import argparse
import getpass
import statistics
import subprocess
import time

import clustermgr as cm
from clustermgr.managers.slurm import SlurmManager


def slurm_submit_to_running(n: int) -> float:
    """Seconds from sbatch of an n-task array to every task RUNNING (squeue polled at 20 Hz)."""
    t0 = time.perf_counter()
    job = subprocess.run(["sbatch", "--parsable", f"--array=0-{n - 1}", "--job-name=cm-bench",
                          "--output=/dev/null", "--wrap", "sleep 30"], capture_output=True,
                         text=True, check=True).stdout.strip()
    try:
        while True:
            out = subprocess.run(["squeue", "--noheader", "--array", f"--jobs={job}", "--format=%T"],
                                 capture_output=True, text=True).stdout.split()
            if len(out) == n and set(out) == {"RUNNING"}:
                return time.perf_counter() - t0
            time.sleep(0.05)  # squeue has no event to wait on
    finally:
        subprocess.run(["scancel", job], check=False)


def clustermgr_addprocs(n: int) -> float:
    cm.shutdown()
    t0 = time.perf_counter()
    ids = cm.addprocs(SlurmManager(n, poll_interval=0.2))
    elapsed = time.perf_counter() - t0
    cm.rmprocs(ids)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cm.configure(output=None)
    raw = [slurm_submit_to_running(args.workers) for _ in range(args.repeats)]
    ours = [clustermgr_addprocs(args.workers) for _ in range(args.repeats)]
    cm.shutdown()
    print(f"| scheduler | addprocs of {args.workers} (s, median) | submit to all RUNNING (s, median) |")
    print("|---|---|---|")
    print(f"| Slurm 22.05 | {statistics.median(ours):.2f} | {statistics.median(raw):.2f} |")
    print(f"(runs: addprocs {[round(x, 2) for x in ours]}, sbatch {[round(x, 2) for x in raw]}; "
          f"user {getpass.getuser()})")


if __name__ == "__main__":
    main()

"""addprocs of 3 workers on the real back ends of issue 6: HTCondor, DRMAA (Grid Engine)
and Docker, from the call until all joined (median of repeats).

    python -m benchmarks.backends [--workers 3] [--repeats 5]

Needs ../shared/clusters/{htcondor,sge,docker} running (their start.sh) and nothing else
using them.  DRMAA runs in a child process started with Grid Engine's environment, since
its library must be configured before Python starts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import clustermgr as cm

STATE = "/var/tmp/clusters"


def sourced(script: str) -> dict[str, str]:
    out = subprocess.run(["bash", "-c", f'. "{script}" >/dev/null && env -0'], capture_output=True,
                         check=True).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def timed(make, n: int, repeats: int, **kw) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ids = cm.addprocs(make(n), **kw)
        times.append(time.perf_counter() - t0)
        cm.rmprocs(ids)
    cm.shutdown()
    return times


def htcondor(n: int, repeats: int) -> list[float]:
    from clustermgr.managers.htcondor import HTCManager, shared_runtime

    os.environ.update(sourced(f"{STATE}/htcondor/env.sh"))
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=f"{STATE}/htcondor/scratch"))
    work.chmod(0o777)
    pythonpath = shared_runtime(str(work / "site"))
    kw = dict(python="/usr/bin/python3", dir=str(work), env={"PYTHONPATH": pythonpath})
    try:
        return timed(lambda k: HTCManager(k, log_dir=str(work), poll_interval=0.2), n, repeats, **kw)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)


def docker(n: int, repeats: int) -> list[float]:
    from clustermgr.managers.docker import DockerManager

    os.environ["DOCKER_HOST"] = f"unix://{STATE}/docker/docker.sock"
    repo = str(Path(cm.__file__).resolve().parents[1])
    home = str(Path(os.path.realpath(sys.executable)).parents[1])
    volumes = {p: {"bind": p, "mode": "ro"} for p in ("/usr", "/etc", home, repo)}
    return timed(lambda k: DockerManager(k, image="local/hostfs:latest", volumes=volumes), n, repeats,
                 dir=repo)


def drmaa(n: int, repeats: int) -> list[float]:
    code = f"""
import json, time, clustermgr as cm
from clustermgr.managers.drmaa import DRMAAManager
times = []
for _ in range({repeats}):
    t0 = time.perf_counter(); ids = cm.addprocs(DRMAAManager({n}, poll_interval=0.2))
    times.append(time.perf_counter() - t0); cm.rmprocs(ids)
print(json.dumps(times))
"""
    env = {**os.environ, **sourced("/opt/sge/env.sh")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cm.configure(output=None)
    print(f"| back end | addprocs of {args.workers} (s, median) | min | max |")
    print("|---|---|---|---|")
    for name, fn in (("HTCondor 23.9 (queue N)", htcondor), ("DRMAA on Grid Engine 8.1.9 (bulk job)", drmaa),
                     ("Docker 20.10 (container each)", docker)):
        t = fn(args.workers, args.repeats)
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} |", flush=True)


if __name__ == "__main__":
    main()

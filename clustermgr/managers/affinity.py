"""LocalAffinityManager: local workers pinned to CPUs (and optionally GPUs).

As ClusterManagers.jl's manager of the same name: ``affinities`` pins one worker per
entry; otherwise ``np`` workers are placed by ``mode``.  Unlike it, placement stays inside
the CPUs this process may use (``os.sched_getaffinity``: a Slurm or cgroup cpuset), a
worker may get several cores, and GPUs can be handed out through ``CUDA_VISIBLE_DEVICES``.
Workers start under ``taskset -c``.
"""

from __future__ import annotations

import enum
import glob
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import LaunchError
from .base import LaunchSpec
from .local import LocalHandle, LocalManager


class AffinityMode(enum.Enum):
    COMPACT = "compact"    # worker 1 -> CPU0, worker 2 -> CPU1, ...
    BALANCED = "balanced"  # spread round-robin across NUMA nodes (or sockets)


def parse_cpulist(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def cpu_groups(allowed: Sequence[int]) -> list[list[int]]:
    """The allowed CPUs grouped by NUMA node, else by socket, else one group."""
    groups = [[c for c in parse_cpulist(open(path).read()) if c in allowed]
              for path in sorted(glob.glob("/sys/devices/system/node/node*/cpulist"))]
    groups = [g for g in groups if g]
    if len(groups) > 1:
        return groups
    by_socket: dict[str, list[int]] = {}
    for cpu in allowed:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id") as fh:
                by_socket.setdefault(fh.read().strip(), []).append(cpu)
        except OSError:
            by_socket.setdefault("0", []).append(cpu)
    return list(by_socket.values())


def plan(np: int, mode: AffinityMode, allowed: Sequence[int], cores: int,
         groups: list[list[int]] | None = None) -> list[list[int]]:
    """The CPUs of each of *np* workers (wrapping around when there are too few)."""
    if mode is AffinityMode.COMPACT:
        order = list(allowed)
    else:  # interleave the groups so consecutive workers land on different nodes
        groups = [list(g) for g in (groups or cpu_groups(allowed))]
        slots = [g[i:i + cores] for g in groups for i in range(0, len(g), cores)]
        per_group = [[s for s in slots if s[0] in g] for g in groups]
        interleaved = [s for row in _zip_longest(per_group) for s in row]
        return [interleaved[i % len(interleaved)] for i in range(np)]
    slots = [order[i:i + cores] for i in range(0, len(order), cores)]
    return [slots[i % len(slots)] for i in range(np)]


def _zip_longest(rows: list[list[Any]]) -> Iterator[list[Any]]:
    for i in range(max(len(r) for r in rows)):
        yield [r[i] for r in rows if i < len(r)]


class LocalAffinityManager(LocalManager):
    """Pinned local workers.

    affinities: a list with one entry per worker, each a CPU id (or a list of them).
    np: number of workers when ``affinities`` is not given (default: one per
        ``cores_per_worker`` allowed CPUs).
    mode: ``AffinityMode.COMPACT`` or ``AffinityMode.BALANCED`` (default).
    cores_per_worker: CPUs per worker with ``np``/``mode``.
    gpus: a GPU count or a list of GPU ids, handed out round-robin as
        ``CUDA_VISIBLE_DEVICES`` (one per worker).
    """

    scalable = False  # each worker has its own CPUs, by index: a second launch would reuse them

    def __init__(self, np: int | None = None, mode: AffinityMode = AffinityMode.BALANCED,
                 affinities: Sequence[int | Sequence[int]] | None = None, *,
                 cores_per_worker: int = 1, gpus: int | Sequence[int] | None = None) -> None:
        self.allowed = sorted(os.sched_getaffinity(0))
        if not isinstance(mode, AffinityMode):
            raise ValueError(f"mode must be an AffinityMode ({[m.name for m in AffinityMode]}), not {mode!r}")
        if cores_per_worker < 1 or cores_per_worker > len(self.allowed):
            raise ValueError(f"cores_per_worker must be 1..{len(self.allowed)} (the CPUs this "
                             f"process may use: {self.allowed}), not {cores_per_worker}")
        if affinities is not None:
            self.cpus = [self._checked([a] if isinstance(a, int) else list(a)) for a in affinities]
        else:
            count = len(self.allowed) // cores_per_worker if np is None else np
            self.cpus = plan(count, mode, self.allowed, cores_per_worker)
        self.mode = mode
        self.gpus = list(range(gpus)) if isinstance(gpus, int) else list(gpus or [])
        super().__init__(len(self.cpus))

    def __repr__(self) -> str:
        return f"LocalAffinityManager(np={self.np}, cpus={self.cpus})"

    def _checked(self, cpus: list[int]) -> list[int]:
        bad = [c for c in cpus if c not in self.allowed]
        if bad or not cpus:
            raise ValueError(f"CPU(s) {bad or cpus} are not among those this process may use: "
                             f"{self.allowed} (see os.sched_getaffinity / taskset -p)")
        return cpus

    def launch(self, spec: LaunchSpec) -> Iterator[LocalHandle]:
        if shutil.which("taskset") is None:
            raise LaunchError("taskset is not installed; it comes with util-linux "
                              "(apt-get install util-linux)")
        return super().launch(spec)

    def worker_command(self, spec: LaunchSpec, index: int) -> list[str]:
        return ["taskset", "-c", ",".join(map(str, self.cpus[index])), *spec.argv()]

    def worker_env(self, index: int) -> dict[str, str]:
        if not self.gpus:
            return {}
        return {"CUDA_VISIBLE_DEVICES": str(self.gpus[index % len(self.gpus)])}

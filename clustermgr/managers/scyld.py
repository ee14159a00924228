"""ScyldManager: workers on the compute nodes of a Scyld ClusterWare (BProc) cluster.

``beomap --no-local --np N`` chooses the nodes; each worker is ``bpsh NODE python -m
clustermgr.worker``, a local process whose end is the worker's end (seen at once, as for
local workers).  BProc migrates the process with its environment, so the secret travels in
the environment, never in argv.  As in ClusterManagers.jl.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from typing import Any

from ..errors import LaunchError
from .base import LaunchSpec
from .batch import SchedulerCommandError, addprocs_with, run_command
from .local import LocalHandle, LocalManager, describe_exit


class ScyldManager(LocalManager):
    """``ScyldManager(np)``: *np* workers on the nodes ``beomap`` picks."""

    def __init__(self, np: int) -> None:
        if isinstance(np, bool) or not isinstance(np, int) or np < 1:
            raise ValueError(f"ScyldManager needs a number of workers >= 1, not {np!r}")
        super().__init__(np)
        self.nodes: list[str] = []

    def __repr__(self) -> str:
        return f"ScyldManager({self.np})"

    def launch(self, spec: LaunchSpec) -> Iterator[LocalHandle]:
        try:
            out = run_command(["beomap", "--no-local", "--np", str(self.np)], timeout=60)
        except SchedulerCommandError as exc:
            raise LaunchError(f"ScyldManager: beomap found no nodes: {exc}") from None
        self.nodes = out.strip().split(":")
        if len(self.nodes) != self.np or not all(n.strip().lstrip("-").isdigit() for n in self.nodes):
            raise LaunchError(f"ScyldManager: beomap answered {out.strip()!r}, not {self.np} node numbers")
        return self._with_hosts(super().launch(spec))

    def _with_hosts(self, handles: Iterator[LocalHandle]) -> Iterator[LocalHandle]:
        for handle in handles:
            handle.host = f"node {self.nodes[handle.index]}"
            yield handle

    def worker_command(self, spec: LaunchSpec, index: int) -> list[str]:
        # bpsh starts the command on the node, in the node's default folder: cd first
        line = f"cd {shlex.quote(spec.dir)} && exec {shlex.join(spec.argv())}"
        return ["bpsh", self.nodes[index], "sh", "-c", line]

    def exit_cause(self, handle: Any, code: int) -> str:
        node = self.nodes[handle.index]
        try:
            state = run_command(["bpstat", "-s", node], timeout=30).strip()
        except SchedulerCommandError:
            state = "unknown"
        return f"bpsh on node {node} {describe_exit(code)} (node {node} is {state})"


def addprocs_scyld(np: int, **kwargs: Any) -> list[int]:
    """``addprocs(ScyldManager(np))`` in one call, as in ClusterManagers.jl."""
    return addprocs_with(ScyldManager, np, **kwargs)

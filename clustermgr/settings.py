"""Cluster-wide settings of the master, set with :func:`clustermgr.configure`."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: ``output`` may be "print", None (silence), or ``fn(worker_id, line, stream_name)``.
OutputSink = str | None | Callable[[int, str, str], None]


@dataclass
class Settings:
    """Read by the master when it starts and sent to each worker when it joins.

    heartbeat_interval: seconds between heartbeats, both ways.
    heartbeat_timeout: a worker silent this long is declared dead.
    master_grace: a worker that hears nothing from its master this long exits.
    output: where forwarded worker stdout/stderr goes (see ``OutputSink``).
    bind: the address the master listens on ("127.0.0.1" keeps it on this host).
    port: 0 picks a free port.
    shutdown_timeout: at master exit, seconds given to workers to leave before killing.
    shared_memory: large buffers (numpy arrays...) for workers that share this host's
        ``/dev/shm`` travel through shared memory (detected per worker; ``shm.py``).
    """

    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 30.0
    master_grace: float = 60.0
    output: OutputSink = "print"
    bind: str = "127.0.0.1"
    port: int = 0
    shutdown_timeout: float = 5.0
    shared_memory: bool = True
    cookie: str | None = field(default=None, repr=False)
    encrypt: bool | None = None
    _frozen: bool = field(default=False, repr=False)

    def update(self, **changes: Any) -> None:
        names = [f.name for f in dataclasses.fields(self) if not f.name.startswith("_")]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; valid settings: {names}")
        frozen = {"bind", "port", "cookie", "encrypt"} & set(changes)
        if self._frozen and frozen:
            raise RuntimeError(f"{sorted(frozen)} cannot change once the master is listening; "
                               "call configure() before the first addprocs()")
        for name, value in changes.items():
            setattr(self, name, value)

    def emit(self, wid: int, text: str, stream: str, plain: bool = False) -> None:
        """Deliver forwarded worker output (called on the master's I/O thread).  *plain*:
        "print" shows it as is, on the same stream (an executor's workers, as a
        ProcessPoolExecutor's children write to the parent's stdout and stderr)."""
        sink = self.output
        if sink is None:
            return
        for line in text.splitlines():
            if sink == "print" and plain:
                print(line, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)
            elif sink == "print":
                print(f"From worker {wid}: {line}", file=sys.stdout, flush=True)
            elif callable(sink):
                sink(wid, line, stream)

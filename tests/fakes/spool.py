"""What the fake scheduler CLIs share: a spool folder of job records and local processes.

Each fake (``pbspro/``, ``lsf/``) keeps one JSON file per job in its spool (mode 0700, files
0600: they hold the exported environment, as a real server's spool does) and runs a job's
tasks as local processes, each in its own session so that a kill reaches the whole tree.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any


class Spool:
    def __init__(self, home: str) -> None:
        self.home = home
        os.makedirs(home, mode=0o700, exist_ok=True)
        os.chmod(home, 0o700)

    def locked(self) -> Any:
        """Hold the spool's lock (one command at a time, as a real server serialises them)."""
        fh = open(os.path.join(self.home, "lock"), "w")  # noqa: SIM115 - closed by exit
        fcntl.flock(fh, fcntl.LOCK_EX)
        self._held = fh  # kept: a handle nobody refers to is closed, and the lock with it
        return fh

    def path(self, num: str) -> str:
        return os.path.join(self.home, f"{num}.json")

    def load(self, num: str) -> dict | None:
        if not num.isdigit() or not os.path.exists(self.path(num)):
            return None
        with open(self.path(num)) as fh:
            return json.load(fh)

    def load_all(self) -> list[dict]:
        names = sorted((n for n in os.listdir(self.home) if n.endswith(".json")), key=lambda n: (len(n), n))
        return [self.load(n[:-5]) for n in names]  # type: ignore[misc]

    def save(self, job: dict) -> None:
        fd = os.open(self.path(job["num"]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(job, fh)

    def schedule(self, key: str, running: str, queued: str, slots: int,
                 finish: Callable[[dict, dict], None], start: Callable[[dict, dict], None],
                 waiting: Callable[[dict], None] | None = None) -> None:
        """Every command's first step: tasks (``job[key]``, state in ``task["state"]``)
        whose process ended are finished; queued ones start while fewer than *slots* run."""
        jobs = self.load_all()
        busy = 0
        for job in jobs:
            for task in job[key]:
                if task["state"] == running and not alive(task["pid"]):
                    finish(job, task)
                busy += task["state"] == running
        for job in jobs:
            for task in job[key]:
                if task["state"] == queued and busy < slots:
                    start(job, task)
                    busy += 1
                elif task["state"] == queued and waiting is not None:
                    waiting(task)
            self.save(job)

    def next_number(self, first: int = 100) -> int:
        path = os.path.join(self.home, "counter")
        with open(path, "a+") as fh:
            fh.seek(0)
            num = int(fh.read() or first - 1) + 1
            fh.seek(0)
            fh.truncate()
            fh.write(str(num))
        return num


def alive(pid: int) -> bool:
    """Is *pid* running (and not a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def start(argv: Sequence[str], env: dict[str, str], cwd: str, out: str) -> int:
    """Start one task in its own session, output appended to *out*; its pid."""
    with open(out, "ab") as log:
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def kill_session(pid: int, signals: Sequence[int] = (signal.SIGTERM, signal.SIGKILL),
                 wait: float = 1.0) -> int | None:
    """Send *signals* in turn to the session of *pid*, waiting up to *wait* s after each;
    the signal that ended it (None if it was already gone)."""
    for sig in signals:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return sig
            time.sleep(0.02)
    return signals[-1]

"""Starting the real back ends of the test kit (tests/clusters/<name>/start.sh) for tests.

Who calls what: a back end's test module calls ``start(name)`` from a module fixture; the
script installs what is missing (apt) and starts the daemons, or finds them running, and
prints the client environment, which ``start`` returns.  ``.ci/run`` runs the same scripts
before the tests and their stop.sh after.

A back end that fails to start fails the tests that asked for it.  One that this machine
cannot host at all (the script exits 3: not root, no apt-get) is skipped with that one-line
reason on a developer's machine, and fails under CI (``CI`` set), where it must run.  The
reasons are repeated once per back end at the end of the run (``conftest.py``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parent / "clusters"
CANNOT = 3  # a start.sh's exit code for "this machine cannot host the back end"
unavailable: dict[str, str] = {}  # name -> the one line its start.sh gave, for the summary


def start(name: str, timeout: float = 900) -> dict[str, str]:
    """Run ``tests/clusters/NAME/start.sh`` (idempotent) and return the KEY=VALUE it prints."""
    if name in unavailable:
        _unavailable(name, unavailable[name])
    script = KIT / name / "start.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout)
    if done.returncode == CANNOT:
        reason = (done.stderr.strip().splitlines() or [f"{name}: cannot start here"])[-1]
        unavailable[name] = reason
        _unavailable(name, reason)
    if done.returncode != 0:
        pytest.fail(f"{name} back end failed to start (exit {done.returncode}):\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    found = {}
    for line in done.stdout.splitlines():
        line = line.removeprefix("export ").strip()
        key, eq, value = line.partition("=")
        if eq and key.isupper() and " " not in key:
            found[key] = os.path.expandvars(value)
    return found


def _unavailable(name: str, reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the {name} tests)")
    pytest.skip(reason)


def sourced(script: str) -> dict[str, str]:
    """The variables that ``. SCRIPT`` sets or changes in a bash shell."""
    done = subprocess.run(["bash", "-c", f'. "{script}" >/dev/null && env -0'], capture_output=True,
                          check=True, env=dict(os.environ))
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if os.environ.get(k) != v}

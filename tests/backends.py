"""Starting the real back ends of ../shared/clusters for tests.

A back end that cannot start fails the tests that asked for it; it never skips them.
The location of shared/ is ``$CLUSTERMGR_SHARED`` or the folder beside the repository.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("CLUSTERMGR_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def start(name: str, timeout: float = 600) -> dict[str, str]:
    """Run ``shared/clusters/NAME/start.sh`` (idempotent) and return the KEY=VALUE it prints."""
    script = SHARED / "clusters" / name / "start.sh"
    if not script.exists():
        pytest.fail(f"{script} is missing: the {name} back end cannot start "
                    "(set CLUSTERMGR_SHARED to the shared/ folder)")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{name} back end failed to start (exit {done.returncode}):\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    found = {}
    for line in done.stdout.splitlines():
        line = line.removeprefix("export ").strip()
        key, eq, value = line.partition("=")
        if eq and key.isupper() and " " not in key:
            found[key] = os.path.expandvars(value)
    return found


def sourced(script: str) -> dict[str, str]:
    """The variables that ``. SCRIPT`` sets or changes in a bash shell."""
    done = subprocess.run(["bash", "-c", f'. "{script}" >/dev/null && env -0'], capture_output=True,
                          check=True, env=dict(os.environ))
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if os.environ.get(k) != v}


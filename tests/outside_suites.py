"""Other projects' own test suites, run against clustermgr without copying their code here.

- CPython's ``test_concurrent_futures`` for this interpreter's minor version comes from
  Debian's ``libpython3.X-testsuite`` package (``apt-get download`` + ``dpkg-deb -x``,
  no install), cached in ``$CLUSTERMGR_CACHE/outside`` (default ``~/.cache/clustermgr``).
  The test helpers (``test.support``) are the interpreter's own.
- joblib's tests ship inside the joblib wheel (``joblib/test``).

The suites' subprocess tests start fresh interpreters that must import the suite module
(``test.test_concurrent_futures``) and our executor by name from ``concurrent.futures``;
:func:`install_hook` writes a ``.pth`` file into this environment's site-packages that
does both, and only while ``CLUSTERMGR_OUTSIDE_HOOK`` names the hook file (the test
session sets it), so the environment is unchanged for anything else.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

MINOR = f"{sys.version_info.major}.{sys.version_info.minor}"
HOOK = Path(__file__).with_name("outside_hook.py")
PTH = "clustermgr-outside-suites.pth"


def cache_dir() -> Path:
    root = os.environ.get("CLUSTERMGR_CACHE") or os.path.expanduser("~/.cache/clustermgr")
    return Path(root) / "outside"


def cpython_tests_dir() -> Path:
    """A folder holding this interpreter version's ``test_concurrent_futures.py``."""
    dest = cache_dir() / f"cpython-{MINOR}"
    if (dest / "test_concurrent_futures.py").exists():
        return dest
    if sys.version_info[:2] != (3, 11):
        pytest.fail(f"the CPython futures suite adapter is written for 3.11's single-file "
                    f"test_concurrent_futures.py; this is Python {MINOR}", pytrace=False)
    package = f"libpython{MINOR}-testsuite"
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.fail(f"CPython's own futures suite comes from Debian's {package}: this machine "
                    "has no apt-get/dpkg-deb; put test_concurrent_futures.py for Python "
                    f"{MINOR} in {dest}", pytrace=False)
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True,
                             text=True, timeout=300)
        if got.returncode != 0:  # the package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
            got = subprocess.run(["apt-get", "download", package], cwd=tmp,
                                 capture_output=True, text=True, timeout=300)
        debs = list(Path(tmp).glob("*.deb"))
        if got.returncode != 0 or not debs:
            pytest.fail(f"apt-get download {package} failed: {got.stderr.strip()[-300:]}",
                        pytrace=False)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), f"{tmp}/x"], check=True, timeout=300)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{tmp}/x/usr/lib/python{MINOR}/test/test_concurrent_futures.py", dest)
    return dest


def install_hook() -> None:
    """Make the suites' child interpreters see the suite module and our executor."""
    line = ("import os; p = os.environ.get('CLUSTERMGR_OUTSIDE_HOOK'); "
            "p and exec(compile(open(p).read(), p, 'exec'))\n")
    for folder in site.getsitepackages():
        pth = Path(folder) / PTH
        if not pth.exists() or pth.read_text() != line:
            pth.write_text(line)
        break
    os.environ["CLUSTERMGR_OUTSIDE_HOOK"] = str(HOOK)
    os.environ["CLUSTERMGR_OUTSIDE_CPYTHON"] = str(cpython_tests_dir())

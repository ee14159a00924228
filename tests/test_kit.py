"""The test kit (tests/clusters/): what a machine that cannot host a back end is told.

The kit's start and stop scripts themselves are exercised by every back-end test module
(they start what they test) and by .ci/run; here, the paths that those never take.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import backends
import pytest

NAMES = ["ssh", "slurm", "sge", "htcondor", "docker"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to become nobody")
@pytest.mark.parametrize("name", NAMES)
def test_not_root_is_one_line_and_exit_3(name):
    done = subprocess.run(["runuser", "-u", "nobody", "--", "bash", str(backends.KIT / name / "start.sh")],
                          capture_output=True, text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert done.returncode == backends.CANNOT
    assert done.stdout == ""
    needs = "needs root (run the tests as root, e.g. sudo -E python -m pytest)"
    assert done.stderr.splitlines() == [f"{name}: {needs}"]


@pytest.fixture
def kit_that_cannot(tmp_path, monkeypatch):
    (tmp_path / "nosuch").mkdir()
    (tmp_path / "nosuch" / "start.sh").write_text('echo "nosuch: needs a unicorn" >&2; exit 3\n')
    monkeypatch.setattr(backends, "KIT", tmp_path)
    monkeypatch.setattr(backends, "unavailable", {})
    return tmp_path


def test_cannot_host_skips_outside_ci_and_is_summarised(kit_that_cannot, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nosuch: needs a unicorn"):
        backends.start("nosuch")
    assert backends.unavailable == {"nosuch": "nosuch: needs a unicorn"}
    (kit_that_cannot / "nosuch" / "start.sh").write_text("exit 99\n")  # asked again: not re-run
    with pytest.raises(pytest.skip.Exception):
        backends.start("nosuch")


def test_cannot_host_fails_under_ci(kit_that_cannot, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the nosuch tests"):
        backends.start("nosuch")


def test_a_failed_start_fails_with_its_output(kit_that_cannot, monkeypatch):
    (kit_that_cannot / "nosuch" / "start.sh").write_text('echo "nosuch: ERROR: daemon died" >&2; exit 1\n')
    with pytest.raises(pytest.fail.Exception, match="(?s)exit 1.*daemon died"):
        backends.start("nosuch")

"""Site and user configuration files: per-scheduler defaults, named profiles, and where each
value came from (in job_script() and `clustermgr config`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clustermgr import config
from clustermgr.config import ConfigError, settings_for
from clustermgr.managers.sge import SGEManager
from clustermgr.managers.slurm import SlurmManager
from clustermgr.session import managers_by_name

CLI = str(Path(sys.executable).with_name("clustermgr"))

SITE = """
[slurm]
queue = "normal"
account = "site-acct"
walltime = "04:00:00"
prologue = ["module load python/3.11"]
env = { SITE_VAR = "1", SHARED = "site" }

[slurm.gpu]
queue = "gpu"
gpus = 1
directives = ["--constraint=a100"]
flags = { exclusive = true }

[sge]
queue = "all.q"
"""

USER = """
[slurm]
account = "my-acct"
env = { SHARED = "user" }
"""


@pytest.fixture
def files(tmp_path, monkeypatch):
    site, user = tmp_path / "site.toml", tmp_path / "xdg" / "clustermgr" / "config.toml"
    user.parent.mkdir(parents=True)
    site.write_text(SITE)
    user.write_text(USER)
    monkeypatch.setattr(config, "SITE_CONFIG", site)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CLUSTERMGR_CONFIG", raising=False)
    return site, user


def test_layers_profiles_and_origins(files, tmp_path, monkeypatch):
    site, user = files
    plain = settings_for("slurm")
    assert plain.values["queue"] == "normal" and plain.values["account"] == "my-acct"  # user over site
    assert plain.values["env"] == {"SITE_VAR": "1", "SHARED": "user"}  # tables merge key by key
    assert plain.origins["account"] == f"{user} [slurm]" and plain.origins["queue"] == f"{site} [slurm]"
    gpu = settings_for("slurm", "gpu")
    assert gpu.values["queue"] == "gpu" and gpu.values["gpus"] == 1
    assert gpu.origins["queue"] == f"{site} [slurm.gpu]"
    extra = tmp_path / "extra.toml"
    extra.write_text('[slurm]\naccount = "from-env"\n')
    monkeypatch.setenv("CLUSTERMGR_CONFIG", str(extra))
    assert settings_for("slurm").values["account"] == "from-env"  # $CLUSTERMGR_CONFIG last


def test_job_script_names_where_each_value_came_from_and_arguments_win(files):
    site, user = files
    m = SlurmManager(2, profile="gpu", walltime="00:10:00", log_dir="/logs")
    lines = m.job_script(python="/py", dir="/w").splitlines()
    for line in ["#SBATCH --partition=gpu", "#SBATCH --account=my-acct", "#SBATCH --time=00:10:00",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --exclusive", "#SBATCH --constraint=a100",
                 "export SHARED=user", "export SITE_VAR=1", "module load python/3.11"]:
        assert line in lines
    assert f"# from {site} [slurm.gpu]: queue, gpus, flags, directives" in lines
    assert any(line.startswith(f"# from {user} [slurm]: account") for line in lines)
    assert "04:00:00" not in "\n".join(lines)  # the argument won over the file
    assert lines.index("module load python/3.11") < lines.index("cd /w")
    assert "#$ -q all.q" in SGEManager(1, log_dir="/logs").job_script(python="/py", dir="/w").splitlines()


@pytest.mark.parametrize("text, words", [
    ("[slurm]\npartitoin = 'x'\n", "unknown key 'partitoin' in [slurm]"),
    ("[slrum]\nqueue = 'x'\n", "unknown section(s) ['slrum']"),
    ("[slurm]\nprologue = 'module load x'\n", "prologue in [slurm] must be a list of strings"),
    ("[slurm\n", "not valid TOML"),
    ("[slurm.gpu.big]\nqueue = 'x'\n", "nested too deep"),
])
def test_a_bad_file_is_refused_naming_the_file_and_the_key(files, tmp_path, monkeypatch, text, words):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    monkeypatch.setenv("CLUSTERMGR_CONFIG", str(bad))
    with pytest.raises(ConfigError) as info:
        SlurmManager(1, profile="gpu")
    assert str(bad) in str(info.value) and words in str(info.value)


def test_profiles_by_name_for_sessions_and_run(files):
    factory = managers_by_name("slurm:gpu", {}, {"constraint": "h100"})
    m = factory(1)
    assert m.queue == "gpu" and m.flags == {"exclusive": True, "constraint": "h100"}
    with pytest.raises(ConfigError, match=r"no profile 'big' for slurm: define \[slurm.big\]"):
        managers_by_name("slurm:big", {})
    with pytest.raises(ValueError, match="no profiles"):
        managers_by_name("local:gpu", {})


def cli(*args, env):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_clustermgr_config_prints_the_settings_and_their_origin(files, tmp_path):
    site, user = files
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "CLUSTERMGR_CONFIG": str(site),
           "CLUSTERMGR_HOME": str(tmp_path / "home")}
    done = cli("config", "slurm:gpu", env=env)
    assert done.returncode == 0, done.stderr
    assert str(user) in done.stdout and str(site) in done.stdout
    assert f"queue = 'gpu'    # {site} [slurm.gpu]" in done.stdout
    data = json.loads(cli("config", "--json", env=env).stdout)
    slurm = next(s for s in data["settings"] if s["manager"] == "slurm")
    assert slurm["profiles"] == ["gpu"]
    assert slurm["values"]["account"] == "site-acct"  # $CLUSTERMGR_CONFIG (here: site.toml) is read last
    done = cli("run", "--manager", "slurm:big", "-c", "pass", env=env)
    assert done.returncode == 2 and "no profile 'big'" in done.stderr and "Traceback" not in done.stderr
    done = cli("run", "--manager", "slurm", "--flag", "exclusive", "-c", "pass", env=env)
    assert done.returncode == 2 and "--flag takes NAME=VALUE" in done.stderr
    sessions = tmp_path / "home" / "sessions"
    assert not sessions.exists() or not list(sessions.iterdir())


def test_python_and_dir_from_the_file_reach_the_workers(fresh, tmp_path, monkeypatch):
    from backends import start

    import clustermgr as cm

    start("slurm")
    work = tmp_path / "work"
    work.mkdir()
    conf = tmp_path / "c.toml"
    conf.write_text(textwrap.dedent(f"""
        [slurm]
        python = "{sys.executable}"
        dir = "{work}"
        env = {{ FROM_CONFIG = "yes" }}
    """))
    monkeypatch.setenv("CLUSTERMGR_CONFIG", str(conf))
    (w,) = cm.addprocs(SlurmManager(1, log_dir=str(tmp_path / "logs"), poll_interval=0.2))
    assert cm.remotecall_fetch(lambda: (os.getcwd(), os.environ.get("FROM_CONFIG")), w) == (str(work), "yes")

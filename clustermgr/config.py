"""Site and user configuration: per-scheduler defaults and named profiles, from TOML files.

Who reads it: every batch manager at construction (``BatchManager.__init__`` asks
:func:`settings_for` for its scheduler's section and, given ``profile=``, that profile),
``managers_by_name("slurm:gpu")`` for sessions and ``clustermgr run --manager slurm:gpu``,
and ``clustermgr config``, which prints the effective settings and where each came from.

Files, later ones overriding earlier ones key by key: ``/etc/clustermgr/config.toml`` (the
site), ``$XDG_CONFIG_HOME/clustermgr/config.toml`` (default ``~/.config/...``, the user),
then ``$CLUSTERMGR_CONFIG`` (a path).  A section per scheduler, a sub-table per profile::

    [slurm]                       # SlurmManager's defaults
    queue = "normal"              # the partition
    account = "proj42"
    walltime = "01:00:00"
    prologue = ["module load python/3.11"]
    env = { OMP_PROC_BIND = "true" }

    [slurm.gpu]                   # manager="slurm:gpu", SlurmManager(n, profile="gpu")
    queue = "gpu"
    gpus = 1
    directives = ["--constraint=a100"]

Keys: the batch managers' common options (``cores``, ``memory``, ``walltime``, ``queue``,
``account``, ``gpus``, ``job_name``, ``log_dir``, ``env``, ``queue_timeout``,
``poll_interval``), ``python`` and ``dir`` (addprocs' defaults for this manager),
``directives`` (extra lines for the job script's header), ``prologue`` (shell lines run
before the worker starts) and ``flags`` (a table of the scheduler's own flags).  Explicit
arguments always win over the files.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: the section names, one per batch manager (``BatchManager.scheduler``, lowercased)
SCHEDULERS = ("slurm", "pbs", "sge", "htcondor", "lsf", "drmaa", "kubernetes")
OPTIONS = ("cores", "memory", "walltime", "queue", "account", "gpus", "job_name", "log_dir",
           "env", "queue_timeout", "poll_interval", "python", "dir", "directives", "prologue", "flags",
           "preempt_signal")
LISTS = ("directives", "prologue")
TABLES = ("env", "flags")


SITE_CONFIG = Path("/etc/clustermgr/config.toml")


class ConfigError(ValueError):
    """A configuration file that cannot be used: the message names the file and the key."""


def config_files() -> list[Path]:
    """The files read, in order (those that do not exist are skipped)."""
    user = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "clustermgr" / "config.toml"
    files = [SITE_CONFIG, user]
    if os.environ.get("CLUSTERMGR_CONFIG"):
        files.append(Path(os.environ["CLUSTERMGR_CONFIG"]))
    return files


@dataclass
class Settings:
    """The effective settings of one scheduler (and profile): values and their origins."""

    scheduler: str
    profile: str | None
    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # key -> "FILE [section]"


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix or remove it") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _checked(path: Path, section: str, table: dict[str, Any], profiles: bool) -> dict[str, Any]:
    """The option keys of *table*, each checked; sub-tables are profiles (when allowed)."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict) and key not in TABLES:
            if not profiles:
                raise ConfigError(f"{path}: [{section}.{key}] is nested too deep; a profile is "
                                  f"[{section.split('.')[0]}.NAME] with options in it")
            continue
        if key not in OPTIONS:
            raise ConfigError(f"{path}: unknown key {key!r} in [{section}]; known: {', '.join(OPTIONS)}")
        if key in LISTS and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{path}: {key} in [{section}] must be a list of strings")
        if key in TABLES and not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} in [{section}] must be a table, e.g. {key} = {{ A = \"1\" }}")
        out[key] = value
    return out


def settings_for(scheduler: str, profile: str | None = None) -> Settings:
    """The configured defaults of *scheduler* (a section name), with *profile* applied."""
    scheduler = scheduler.lower()
    found = Settings(scheduler, profile)
    seen_profile = False
    for path in config_files():
        data = _load(path)
        unknown = sorted(set(data) - set(SCHEDULERS))
        if unknown:
            raise ConfigError(f"{path}: unknown section(s) {unknown}; sections: {', '.join(SCHEDULERS)}")
        section = data.get(scheduler) or {}
        layers = [(scheduler, _checked(path, scheduler, section, profiles=True))]
        if profile is not None and isinstance(section.get(profile), dict):
            seen_profile = True
            name = f"{scheduler}.{profile}"
            layers.append((name, _checked(path, name, section[profile], profiles=False)))
        for name, values in layers:
            for key, value in values.items():
                if key in TABLES:  # tables merge key by key
                    found.values[key] = {**found.values.get(key, {}), **value}
                else:
                    found.values[key] = value
                found.origins[key] = f"{_shown(path)} [{name}]"
    if profile is not None and not seen_profile:
        raise ConfigError(f"no profile {profile!r} for {scheduler}: define [{scheduler}.{profile}] in "
                          f"one of {', '.join(str(p) for p in config_files())} (`clustermgr config` "
                          "shows what is read)")
    return found


def profiles() -> dict[str, list[str]]:
    """``{scheduler: [profile, ...]}`` over every file."""
    out: dict[str, list[str]] = {}
    for path in config_files():
        for scheduler, section in _load(path).items():
            if isinstance(section, dict):
                names = [k for k, v in section.items() if isinstance(v, dict) and k not in TABLES]
                out.setdefault(scheduler, [])
                out[scheduler] += [n for n in names if n not in out[scheduler]]
    return out


def split_manager_name(name: str) -> tuple[str, str | None]:
    """``"slurm:gpu"`` -> ``("slurm", "gpu")``; ``"slurm"`` -> ``("slurm", None)``."""
    base, colon, profile = name.partition(":")
    if colon and not profile:
        raise ValueError(f"manager {name!r}: give a profile name after the colon, e.g. {base}:gpu")
    return base, (profile or None)


def _shown(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home):] if text.startswith(home + os.sep) else text

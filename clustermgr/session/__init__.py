"""Sessions: detached, reattachable, durable masters (``store`` the database, ``daemon``
the detached master, ``control`` its authenticated channel, ``client`` the user's side)."""

from __future__ import annotations

import functools
from typing import Any

from .client import (
    Session,
    Status,
    TaskFailedError,
    TaskFailure,
    attach_session,
    list_sessions,
    resume_session,
    start_session,
)
from .control import SessionError

#: the scheduler managers a session (or ``clustermgr run --manager``) can be given by name
MANAGERS = {
    "local": ("clustermgr.managers.local", "LocalManager"),
    "slurm": ("clustermgr.managers.slurm", "SlurmManager"),
    "pbs": ("clustermgr.managers.pbs", "PBSManager"),
    "sge": ("clustermgr.managers.sge", "SGEManager"),
    "qrsh": ("clustermgr.managers.sge", "QRSHManager"),
    "htcondor": ("clustermgr.managers.htcondor", "HTCManager"),
    "lsf": ("clustermgr.managers.lsf", "LSFManager"),
    "drmaa": ("clustermgr.managers.drmaa", "DRMAAManager"),
}

#: ``-r`` resource names -> the batch managers' common options
RESOURCES = {"cpu": "cores", "cores": "cores", "mem": "memory", "memory": "memory", "gpu": "gpus",
             "gpus": "gpus", "walltime": "walltime", "time": "walltime", "queue": "queue",
             "account": "account"}


def managers_by_name(name: str, resources: dict[str, Any], flags: dict[str, Any] | None = None) -> Any:
    """A factory ``n -> manager`` for a manager name (``"slurm"``, or ``"slurm:gpu"`` for a
    profile of the configuration files), ``-r`` resources and scheduler *flags*."""
    import importlib

    from ..config import settings_for, split_manager_name

    name, profile = split_manager_name(name)
    if name not in MANAGERS:
        raise ValueError(f"unknown manager {name!r}; choose one of {', '.join(MANAGERS)}")
    if profile is not None:
        if name == "local":
            raise ValueError("the local manager has no profiles; profiles are for scheduler managers")
        settings_for(name, profile)  # an unknown profile is refused now, not in the daemon
    unknown = set(resources) - set(RESOURCES)
    if unknown:
        raise ValueError(f"unknown resources {sorted(unknown)}; use {', '.join(sorted(RESOURCES))}")
    module, cls = MANAGERS[name]
    options = {}
    for k, v in resources.items():
        if RESOURCES[k] in ("cores", "gpus"):
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise ValueError(f"resource {k}={v!r}: give a whole number, e.g. {k}=4") from None
        options[RESOURCES[k]] = v
    if name == "local" and options:
        raise ValueError("resources (-r) need a scheduler manager, not local")
    if name == "local" and flags:
        raise ValueError("scheduler flags (--flag) need a scheduler manager, not local")
    if profile is not None:
        options["profile"] = profile
    return functools.partial(getattr(importlib.import_module(module), cls), **options, **(flags or {}))


__all__ = ["Session", "SessionError", "Status", "TaskFailedError", "TaskFailure", "attach_session",
           "list_sessions", "managers_by_name", "resume_session", "start_session"]

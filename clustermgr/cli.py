"""The ``clustermgr`` command.

``clustermgr demo`` starts a local cluster and runs a real parallel job through ``pmap``;
``clustermgr worker`` is ``python -m clustermgr.worker``; the session commands (ps, status,
attach, logs, events, scale, extend, rm, run, session resume) live in ``session/cli.py``.

No Python traceback reaches a user: an error is one line naming the problem (exit 1, or 2
for a usage error); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections import Counter


def _count_primes(bounds: tuple[int, int]) -> tuple[int, int, str, int]:
    """Primes in [lo, hi) by trial division: real CPU work for the demo."""
    from clustermgr import myid

    lo, hi = bounds
    count = 0
    for n in range(max(lo, 2), hi):
        if all(n % d for d in range(2, int(n ** 0.5) + 1)):
            count += 1
    return count, myid(), socket.gethostname(), os.getpid()


def demo(args: argparse.Namespace) -> int:
    import clustermgr as cm

    for flag, value in (("-n", args.workers), ("--limit", args.limit), ("--chunk", args.chunk)):
        if value is not None and value < 1:
            print(f"clustermgr demo: {flag} must be at least 1, not {value}", file=sys.stderr)
            return 2

    t0 = time.perf_counter()
    ids = cm.addprocs(args.workers)
    t_start = time.perf_counter() - t0
    print(f"started {len(ids)} local workers {ids} in {t_start:.2f} s")
    chunks = [(lo, lo + args.chunk) for lo in range(0, args.limit, args.chunk)]
    t1 = time.perf_counter()
    results = cm.pmap(_count_primes, chunks, progress=False if args.no_progress else "always")
    t_map = time.perf_counter() - t1
    total = sum(r[0] for r in results)
    where = Counter((r[1], r[2], r[3]) for r in results)
    print(f"{total} primes below {args.limit:,}: {len(chunks)} chunks in {t_map:.2f} s")
    print("what ran where:")
    for (wid, host, pid), n in sorted(where.items()):
        print(f"  worker {wid:>3} on {host} (pid {pid}): {n} chunks")
    t2 = time.perf_counter()
    cm.rmprocs(ids)
    print(f"removed the workers in {time.perf_counter() - t2:.2f} s; "
          f"total {time.perf_counter() - t0:.2f} s")
    return 0


def config(args: argparse.Namespace) -> int:
    """The configuration files read, and each scheduler's effective settings with their origin."""
    import json

    from . import config as conf

    files = [{"path": str(p), "exists": p.exists()} for p in conf.config_files()]
    wanted = [args.manager] if args.manager else list(conf.SCHEDULERS)
    out, known = [], conf.profiles()
    for name in wanted:
        base, profile = conf.split_manager_name(name)
        if base not in conf.SCHEDULERS:
            print(f"clustermgr config: no settings for {base!r}; sections: {', '.join(conf.SCHEDULERS)}",
                  file=sys.stderr)
            return 2
        found = conf.settings_for(base, profile)
        out.append({"manager": name, "values": found.values, "origins": found.origins,
                    "profiles": known.get(base, [])})
    if args.json:
        print(json.dumps({"files": files, "settings": out}, indent=2, default=str))
        return 0
    print("configuration files (later ones override earlier ones):")
    for f in files:
        print(f"  {f['path']}{'' if f['exists'] else '  (not there)'}")
    for entry in out:
        if not entry["values"] and not entry["profiles"] and not args.manager:
            continue
        profiles = f"  (profiles: {', '.join(entry['profiles'])})" if entry["profiles"] else ""
        print(f"[{entry['manager']}]{profiles}")
        if not entry["values"]:
            print("  (nothing set: the scheduler's defaults)")
        for key, value in entry["values"].items():
            print(f"  {key} = {value!r}    # {entry['origins'][key]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from clustermgr import __version__

    parser = argparse.ArgumentParser(prog="clustermgr", description="Start and drive workers on any cluster.")
    parser.add_argument("--version", action="version", version=f"clustermgr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="start a local cluster and run a parallel job through pmap")
    p.add_argument("-n", "--workers", type=int, default=None,
                   help="number of local workers (default: one per CPU)")
    p.add_argument("--limit", type=int, default=400_000, help="count primes below this")
    p.add_argument("--chunk", type=int, default=10_000, help="numbers per task")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=demo)
    c = sub.add_parser("config", help="the configuration files and each scheduler's effective settings",
                       description="Print the configuration files read and, per scheduler (or for "
                                   "MANAGER[:PROFILE]), the effective settings and the file each came from.")
    c.add_argument("manager", nargs="?", help="e.g. slurm or slurm:gpu (default: every scheduler)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=config)
    w = sub.add_parser("worker", help="join a master (same as python -m clustermgr.worker)",
                       add_help=False)
    w.set_defaults(func=None)
    from .session.cli import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        from .worker.__main__ import main as worker_main

        return worker_main(argv[1:], prog="clustermgr worker")
    from .config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        if args.command in ("demo", "config"):
            return args.func(args)
        from .session.cli import dispatch

        return dispatch(args)
    except KeyboardInterrupt:
        print(f"clustermgr {args.command}: interrupted", file=sys.stderr)
        return 130
    except ConfigError as exc:  # a configuration file to fix: its own words, no type name
        if args.debug:
            raise
        print(f"clustermgr {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for a user; --debug for the traceback
        if args.debug:
            raise
        print(f"clustermgr {args.command}: {type(exc).__name__}: {exc} (--debug shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The session commands of ``clustermgr``: ps, status, attach, logs, events, scale,
extend, rm, run, session resume.

Exit codes: 0 done; 1 the command failed (the message says why); 2 usage; 3 no such
session; 4 the session's daemon is not running; 5 timed out (``run --max-wait``,
``status --wait``); 130 ``run`` detached or stopped by Ctrl-C.  ``run`` without
``--enqueue-only`` exits with the program's own status.  Every command takes ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Any

from .client import Session, attach_session, daemon_alive, list_sessions, resume_session, start_session
from .control import SessionError, wait_for


def _resource_keys() -> str:
    from . import RESOURCES

    return ", ".join(sorted(RESOURCES))


RESOURCE_KEYS = _resource_keys()

EXIT_FAILED, EXIT_USAGE, EXIT_NO_SESSION, EXIT_NOT_RUNNING, EXIT_TIMEOUT = 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130  # as a shell reports a program ended by SIGINT


class UsageError(Exception):
    """A command line that cannot be right: exit 2 with the message (and no traceback)."""


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=None if isinstance(data, list) else 2, default=str) if args.json else text)


def ps(args: argparse.Namespace) -> int:
    rows = list_sessions()
    if args.running:
        rows = [r for r in rows if r["state"] == "running"]
    elif args.dead:
        rows = [r for r in rows if r["state"] == "dead"]
    elif not args.all:
        rows = [r for r in rows if r["state"] != "ended"]
    lines = [f"{'ID':<24} {'NAME':<16} {'STATE':<8} {'CREATED':<19} {'LAST ACTIVITY':<19} "
             f"{'TOTAL':>6} {'PEND':>6} {'RUN':>5} {'DONE':>6} {'FAIL':>5}"]
    for r in rows:
        lines.append(f"{r['id']:<24} {str(r.get('name'))[:16]:<16} {r['state']:<8} "
                     f"{_when(r.get('created')):<19} "
                     f"{_when(r.get('last_activity')):<19} {r.get('total', 0):>6} {r.get('pending', 0):>6} "
                     f"{r.get('running', 0):>5} {r.get('completed', 0):>6} {r.get('failed', 0):>5}")
    _out(args, rows, "\n".join(lines))
    return 0


def _session(args: argparse.Namespace, connect: bool = True) -> Session:
    if not connect:
        from .client import _find

        return Session(_find(args.id))
    return attach_session(args.id)


def status(args: argparse.Namespace) -> int:
    s = _session(args, connect=False)
    st = s.status()
    _out(args, {**st.__dict__, "progress": st.progress}, str(st))
    return 0


def attach(args: argparse.Namespace) -> int:
    import code

    import clustermgr

    s = _session(args)
    banner = (f"{s.status()}\n`session` is bound (session.submit, .map, .status(), .collect(), .scale(n), "
              f".logs(), .events(), .end()); `cm` is clustermgr.  Ctrl-D leaves; the session goes on.")
    code.interact(banner=banner, local={"session": s, "cm": clustermgr},
                  exitmsg="detached; the session goes on")
    return 0


def logs(args: argparse.Namespace) -> int:
    s = _session(args, connect=False)
    if args.follow:
        for line in s.logs(tail=args.n, follow=True, program=args.program):
            print(line, flush=True)
        return 0
    text = s.logs(tail=args.n, program=args.program)
    _out(args, text.splitlines(), text)
    return 0


def events(args: argparse.Namespace) -> int:
    s = _session(args, connect=False)
    seen = 0
    while True:
        new = s.events(after=seen)
        for e in new:
            seen = e["id"]
            detail = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("id", "at", "kind"))
            print(json.dumps(e, default=str) if args.json else f"{_when(e['at'])}  {e['kind']:<16} {detail}",
                  flush=True)
        if not args.follow or s.state() != "running":
            return 0
        time.sleep(0.3)  # events are rows in another process's database


def explain(args: argparse.Namespace) -> int:
    s = _session(args)
    text = s.explain(args.task)
    _out(args, {"id": s.id, "task": args.task, "explanation": text}, text)
    return 0


def scale(args: argparse.Namespace) -> int:
    if args.n < 0:
        raise UsageError(f"scale: the number of workers must be 0 or more, not {args.n}")
    s = _session(args)
    s.scale(args.n)
    _out(args, {"id": s.id, "workers": args.n}, f"session {s.id}: scaling to {args.n} workers")
    return 0


def extend(args: argparse.Namespace) -> int:
    if not args.seconds > 0:
        raise UsageError(f"extend: give a positive number of seconds, not {args.seconds:g}")
    s = _session(args)
    s.extend(args.seconds)
    _out(args, {"id": s.id, "extended_by": args.seconds},
         f"session {s.id}: timeouts extended by {args.seconds} s")
    return 0


def rm(args: argparse.Namespace) -> int:
    from .client import _find

    removed = []
    for ident in args.ids:
        s = Session(_find(ident))
        s.cleanup()  # ends it first (connecting to its daemon if it runs); any folder ps lists
        removed.append(s.id)
    _out(args, removed, "\n".join(f"removed {i}" for i in removed))
    return 0


def resume(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    s = resume_session(args.id)
    _out(args, {"id": s.id, "seconds": time.monotonic() - t0},
         f"session {s.id} resumed in {time.monotonic() - t0:.2f} s; {s.status()}")
    return 0


def run(args: argparse.Namespace) -> int:
    import os

    if sum(x is not None for x in (args.code, args.exec, args.script)) != 1:
        raise UsageError("run: give exactly one of -c CODE, --exec CMD or SCRIPT")
    if args.n < 1:
        raise UsageError(f"run: -n must be at least 1 (the program's workers), not {args.n}")
    if args.script is not None and not os.path.isfile(args.script):
        raise UsageError(f"run: no script {args.script!r}: give the path of a Python file")
    resources = {}
    for item in args.resource:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise UsageError(f"run: -r takes KEY=VALUE (e.g. -r mem=8g), not {item!r}; keys: {RESOURCE_KEYS}")
        resources[key] = value
    flags = {}
    for item in args.flag:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"run: --flag takes NAME=VALUE (e.g. --flag constraint=a100, --flag "
                             f"exclusive=true), not {item!r}")
        flags[key.replace("-", "_")] = {"true": True, "false": False}.get(value.lower(), value)
    from . import managers_by_name

    try:  # a wrong manager name, profile, resource or flag: a usage error, before anything starts
        managers_by_name(args.manager, resources, flags)
    except ValueError as exc:
        raise UsageError(f"run: {exc}") from None
    if args.code is not None:
        program = {"kind": "code", "code": args.code, "argv": ["-c", args.code]}
    elif args.exec is not None:
        program = {"kind": "exec", "command": args.exec, "argv": ["--exec", args.exec]}
    else:
        program = {"kind": "script", "script": os.path.abspath(args.script), "args": args.args,
                   "argv": [args.script, *args.args]}
    program.update(rm=args.rm, max_wait=args.max_wait)
    s = start_session(name=args.name, manager=args.manager, nworkers=args.n, nowait=True,
                      resources=resources, flags=flags, program=program)
    if args.enqueue_only:
        _out(args, {"id": s.id}, s.id)
        return 0
    try:
        return _follow_program(s, args)
    except KeyboardInterrupt:
        return _interrupted(s, args)


def _interrupted(s: Session, args: argparse.Namespace) -> int:
    """Ctrl-C on ``run``: detach (the program goes on), or with ``--rm`` stop it and end the
    session; a second Ctrl-C ends the session at once."""
    if not args.rm:
        print(f"\nclustermgr run: detached; session {s.id} goes on.\n"
              f"  follow its program:  clustermgr logs {s.id} --program -f\n"
              f"  attach to it:        clustermgr attach {s.id}\n"
              f"  stop and remove it:  clustermgr rm {s.id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"\nclustermgr run: stopping the program and ending session {s.id} "
          "(Ctrl-C again to end it at once)", file=sys.stderr)
    try:
        s.end(timeout=60)
    except (KeyboardInterrupt, SessionError):  # a second Ctrl-C, or a daemon that does not answer
        _end_now(s)
    print(f"clustermgr run: session {s.id} ended (`clustermgr rm {s.id}` removes its files)", file=sys.stderr)
    return EXIT_INTERRUPTED


def _end_now(s: Session) -> None:
    """End a session without waiting for its daemon's orderly end: SIGTERM (the daemon then
    removes its workers), SIGKILL after 10 s."""
    import psutil

    from .control import read_credential

    if daemon_alive(s.dir):
        with contextlib.suppress(psutil.Error, OSError, ValueError, SessionError):
            proc = psutil.Process(int(read_credential(s.dir)["pid"]))
            proc.terminate()
            try:
                proc.wait(10)
            except psutil.TimeoutExpired:
                proc.kill()
    if s.state() != "ended":
        s.end()  # the daemon is gone: marks the session ended


def _follow_program(s: Session, args: argparse.Namespace) -> int:
    """Show the program's log until it exits; its exit status."""
    from tqdm import tqdm

    bar = tqdm(total=args.n, desc="workers", unit="worker", disable=None if not args.json else True,
               file=sys.stderr)
    pos = 0
    while True:
        meta = s._read_store(lambda st: st.meta())
        joined = sum(1 for e in s.events() if e["kind"] == "worker joined")
        bar.n = min(joined, args.n)
        bar.refresh()
        path = s.dir / "program.log"
        if path.exists() and not args.json:
            with open(path, errors="replace") as fh:
                fh.seek(pos)
                sys.stdout.write(fh.read())
                sys.stdout.flush()
                pos = fh.tell()
        status = meta.get("program_status")
        if status in ("exited", "timeout") or s.state() in ("ended", "dead"):
            bar.close()
            if args.rm:  # --rm: return once the session has ended (its workers are gone)
                wait_for(lambda: s.state() in ("ended", "dead"), 120, "the session to end", interval=0.1)
            code = meta.get("program_exit")
            if status == "timeout":
                print(f"clustermgr run: no worker was running within --max-wait={args.max_wait} s",
                      file=sys.stderr)
                code = EXIT_TIMEOUT
            elif code is None:
                code = EXIT_FAILED
            if args.json:
                print(json.dumps({"id": s.id, "status": status, "exit": code}))
            return int(code)
        time.sleep(0.2)  # the program runs in the daemon: poll its state


def add_commands(sub: Any) -> None:
    def cmd(name: str, fn: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=fn)
        return p

    p = cmd("ps", ps, "list sessions (default: those not ended)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--running", action="store_true", help="only running sessions")
    group.add_argument("--dead", action="store_true", help="only sessions whose daemon died")
    group.add_argument("--all", action="store_true", help="every session, ended ones too")
    cmd("status", status, "a session's task counts and progress").add_argument("id")
    cmd("attach", attach, "an interactive Python prompt with the session bound").add_argument("id")
    p = cmd("logs", logs, "a session's log: daemon and worker output, or with --program what the "
            "program of `clustermgr run` printed")
    p.add_argument("id")
    p.add_argument("--program", action="store_true", help="the output of the program of `clustermgr run`")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", type=int, default=50, help="lines from the end (default 50)")
    p = cmd("events", events, "a session's lifecycle events")
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p = cmd("explain", explain, "why a session's work waits or failed: its workers, the scheduler's "
            "pending reasons, a task's state and error")
    p.add_argument("id")
    p.add_argument("task", nargs="?", type=int, help="a task id")
    p = cmd("scale", scale, "grow or shrink a session's workers")
    p.add_argument("id")
    p.add_argument("n", type=int)
    p = cmd("extend", extend, "push a session's timeouts back")
    p.add_argument("id")
    p.add_argument("seconds", type=float)
    cmd("rm", rm, "end sessions and remove their files").add_argument("ids", nargs="+")
    p = sub.add_parser("session", help="session maintenance (resume)")
    ssub = p.add_subparsers(dest="session_command", required=True)
    q = ssub.add_parser("resume", help="restart a dead session's daemon from its database")
    q.add_argument("id")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=resume)
    p = cmd("run", run, "run code, a command or a script in a new session with its workers")
    p.add_argument("-c", dest="code", help="Python code to run")
    p.add_argument("--exec", dest="exec", help="a shell command to run")
    p.add_argument("script", nargs="?", help="a Python script to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    p.add_argument("--rm", action="store_true", help="end the session when the program ends")
    p.add_argument("--manager", default="local",
                   help="local (default), slurm, sge, qrsh, pbs, htcondor, lsf, drmaa; NAME:PROFILE for a "
                        "profile of the configuration files (`clustermgr config` lists them)")
    p.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                   help="a scheduler flag of the manager (e.g. --flag constraint=a100 -> sbatch "
                        "--constraint=a100; --flag exclusive=true -> --exclusive)")
    p.add_argument("-n", type=int, default=2, help="workers (default 2)")
    p.add_argument("-r", dest="resource", action="append", default=[], metavar="KEY=VALUE",
                   help=f"a resource per worker, for scheduler managers (not local); keys: {RESOURCE_KEYS} "
                        "(e.g. -r cpu=4 -r mem=8g -r walltime=1:00:00)")
    p.add_argument("--name", help="the session's name")
    p.add_argument("--enqueue-only", action="store_true", help="print the session id and return at once")
    p.add_argument("--max-wait", type=float, default=None,
                   help="give up if no worker runs within this many s")


def dispatch(args: argparse.Namespace) -> int:
    """Run a session command, mapping errors to exit codes (``--debug``: raised as they are)."""
    if getattr(args, "debug", False):
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"clustermgr {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SessionError as exc:
        text = str(exc)
        print(f"clustermgr {args.command}: {text}", file=sys.stderr)
        if text.startswith("no session"):
            return EXIT_NO_SESSION
        if "not running" in text or "did not answer" in text:
            return EXIT_NOT_RUNNING
        if "timed out" in text:
            return EXIT_TIMEOUT
        return EXIT_FAILED
    except (ValueError, TypeError) as exc:
        print(f"clustermgr {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED

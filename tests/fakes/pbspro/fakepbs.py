"""A faithful fake of the PBS Pro command line (qsub, qstat, qdel) for the test suite.

NOT a real PBS Pro: no server, no MoM.  Jobs run as local processes (their own session);
state lives in $FAKE_PBS_HOME (mode 0700; job files 0600, since they hold the exported
environment as a real server's spool does).  Every command first reaps finished jobs
and starts queued ones while fewer than $FAKE_PBS_SLOTS (8) run.

What it reproduces of PBS Pro (OpenPBS 22/23), because clustermgr relies on it:
- ``qsub`` prints ``123.fakepbs``, arrays (``-J 0-3``) ``124[].fakepbs``; an unknown option
  prints ``qsub: invalid option -- 'k'`` and usage, exit 2; an unknown ``-l`` resource
  prints ``qsub: Unknown resource Resource_List.<name>``, exit 1.
- ``qstat`` default columns ``Job id  Name  User  Time Use S Queue``; array parents show
  state B while subjobs run; ``-t`` lists subjobs ``124[0].fakepbs``; finished jobs leave
  the listing (``-x`` shows them, state F); ``qstat --version`` prints ``pbs_version = ...``;
  ``-f ID`` of an unknown job: ``qstat: Unknown Job Id ID``, exit 153 (PBSE_UNKJOBID 15001
  & 0xff); of a finished one without -x: ``qstat: ID Job has finished, use -x or -H to obtain
  historical job information``, exit 35.
- ``qdel ID``: SIGTERM then SIGKILL to the job's session; Exit_status 271 (256 + SIGTERM);
  an unknown id: ``qdel: Unknown Job Id ID``, exit 153.
- Jobs see PBS_JOBID, PBS_JOBNAME, PBS_O_WORKDIR and, in arrays, PBS_ARRAY_INDEX.
"""

from __future__ import annotations

import getpass
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from spool import Spool, kill_session, start  # noqa: E402

SERVER = "fakepbs"
HOME = os.environ.get("FAKE_PBS_HOME", f"/tmp/fakepbs-{getpass.getuser()}")
SLOTS = int(os.environ.get("FAKE_PBS_SLOTS", "8"))
RESOURCES = {"select", "ncpus", "mem", "walltime", "ngpus", "nodes", "place"}
USAGE = ("usage: qsub [-a date_time] [-A account_string] [-e path] [-j oe|eo|n] [-J X-Y]\n"
         "\t[-l resource_list] [-N name] [-o path] [-q queue] [-v variable_list] [-V] script\n")


SPOOL = Spool(HOME)


def _schedule() -> None:
    """Reap finished subjobs, start queued ones while slots are free."""
    SPOOL.schedule("subjobs", "R", "Q", SLOTS, finish=_finish, start=_start)


def _finish(job: dict, sub: dict) -> None:
    sub["state"], sub["exit"] = "F", sub.get("exit", 0)


def _start(job: dict, sub: dict) -> None:
    env = dict(job["env"])
    env.update(PBS_JOBID=sub["id"], PBS_JOBNAME=job["name"], PBS_O_WORKDIR=job["cwd"])
    if sub["index"] is not None:
        env["PBS_ARRAY_INDEX"] = str(sub["index"])
    out = job["out"] or os.path.join(job["cwd"], f"{job['name']}.o{job['num']}")
    sub["state"], sub["pid"] = "R", start(["/bin/bash", job["script"]], env, job["cwd"], out)


def qsub(argv: list[str]) -> int:
    import getopt

    try:
        opts, args = getopt.getopt(argv, "a:A:e:j:J:l:N:o:q:v:VW:")
    except getopt.GetoptError as exc:
        sys.stderr.write(f"qsub: invalid option -- '{exc.opt}'\n{USAGE}")
        return 2
    if len(args) != 1:
        sys.stderr.write(USAGE)
        return 2
    o = {}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for key, value in opts:
        if key == "-l":
            for item in value.split(","):
                name = item.split("=", 1)[0].split(":", 1)[0]
                if name not in RESOURCES:
                    sys.stderr.write(f"qsub: Unknown resource Resource_List.{name}\n")
                    return 1
        elif key == "-V":
            env = dict(os.environ)
        elif key == "-q" and value != "workq":
            sys.stderr.write("qsub: Unknown queue\n")
            return 1
        o[key] = value
    num = SPOOL.next_number()
    script = os.path.abspath(args[0])
    if "-J" in o:
        lo, hi = (int(x) for x in o["-J"].split("-"))
        jid = f"{num}[].{SERVER}"
        subs = [{"id": f"{num}[{i}].{SERVER}", "index": i, "state": "Q", "pid": 0} for i in range(lo, hi + 1)]
    else:
        jid = f"{num}.{SERVER}"
        subs = [{"id": jid, "index": None, "state": "Q", "pid": 0}]
    job = {"num": str(num), "id": jid, "name": o.get("-N", os.path.basename(script))[:15],
           "user": getpass.getuser(), "script": script, "cwd": os.getcwd(), "env": env,
           "out": o.get("-o", ""), "subjobs": subs, "array": "-J" in o}
    SPOOL.save(job)
    _schedule()
    print(jid)
    return 0


def _find(ident: str) -> tuple[dict, list[dict]] | None:
    job = SPOOL.load(ident.split(".")[0].split("[")[0])
    if job is None:
        return None
    if "[" in ident and not ident.split(".")[0].endswith("[]"):
        index = int(ident.split("[")[1].split("]")[0])
        subs = [s for s in job["subjobs"] if s["index"] == index]
        return (job, subs) if subs else None
    return job, job["subjobs"]


def qdel(argv: list[str]) -> int:
    ids = [a for a in argv if not a.startswith("-")]
    if not ids:
        sys.stderr.write("usage:\n\tqdel [-W force|suppress_email=X] [-x] job_identifier...\n")
        return 2
    _schedule()
    status = 0
    for ident in ids:
        found = _find(ident)
        if found is None or all(s["state"] == "F" for s in found[1]):
            sys.stderr.write(f"qdel: Unknown Job Id {ident}\n")
            status = 15001
            continue
        job, subs = found
        for sub in subs:
            if sub["state"] == "R":
                kill_session(sub["pid"])
            sub["state"], sub["exit"] = "F", 271
        SPOOL.save(job)
    _schedule()
    return status & 0xFF


def qstat(argv: list[str]) -> int:
    if "--version" in argv:
        print("pbs_version = 2022.1.1")
        return 0
    _schedule()
    history, subjobs = "-x" in argv, "-t" in argv
    if "-f" in argv:
        ident = argv[argv.index("-f") + 1]
        found = _find(ident)
        if found is None:
            sys.stderr.write(f"qstat: Unknown Job Id {ident}\n")
            return 15001 & 0xFF
        sub = found[1][0]
        if sub["state"] == "F" and not history:
            sys.stderr.write(f"qstat: {ident} Job has finished, use -x or -H to obtain historical "
                             "job information\n")
            return 35
        print(f"Job Id: {sub['id']}\n    Job_Name = {found[0]['name']}\n    job_state = {sub['state']}")
        if sub["state"] == "F":
            print(f"    Exit_status = {sub.get('exit', 0)}")
        return 0
    rows = []
    for job in SPOOL.load_all():
        states = [s["state"] for s in job["subjobs"]]
        done = all(s == "F" for s in states)
        if done and not history:
            continue
        if job["array"]:
            parent = "F" if done else ("B" if "R" in states or "F" in states else "Q")
            rows.append((job["id"], job, parent))
            if subjobs:
                rows += [(s["id"], job, s["state"]) for s in job["subjobs"] if history or s["state"] != "F"]
        else:
            rows.append((job["id"], job, states[0]))
    if rows:
        print(f"{'Job id':<17} {'Name':<16} {'User':<16}  Time Use S Queue")
        print(f"{'-' * 17} {'-' * 16} {'-' * 16}  -------- - -----")
        for ident, job, state in rows:
            print(f"{ident:<17} {job['name']:<16} {job['user']:<16}  00:00:00 {state} workq")
    return 0


def main() -> int:
    SPOOL.locked()  # held until the command exits
    command = sys.argv[1]  # bin/qsub, bin/qstat and bin/qdel pass their own name
    return {"qsub": qsub, "qstat": qstat, "qdel": qdel}[command](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())

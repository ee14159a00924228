"""A faithful fake of IBM Spectrum LSF's bsub, bjobs and bkill, for the test suite.

NOT a real LSF: no mbatchd, no sbatchd.  Jobs run as local processes (see ../spool.py);
state lives in $FAKE_LSF_HOME.  Every command first reaps finished tasks and starts pending
ones while fewer than $FAKE_LSF_SLOTS (8) run.

What it reproduces of LSF 10.1, because clustermgr relies on it:
- ``bsub < script`` reads ``#BSUB`` lines from the script on stdin (``bsub [opts] cmd`` runs
  a command); options on the command line win.  It prints
  ``Job <123> is submitted to default queue <normal>.`` (``to queue <q>.`` with ``-q``).
  An array ``-J "name[1-4]"`` is one job whose elements see LSB_JOBINDEX; every task sees
  LSB_JOBID, LSB_JOBNAME; ``-o``/``-e`` expand ``%J`` and ``%I``; ``-cwd`` sets the folder.
  The submission environment is copied to the job (LSF's default, ``-env all``).
- Errors exit 255: ``$FAKE_LSF_DOWN_FOR`` (N) first submissions fail as when the master
  daemons do not answer (``Failed in an LSF library call: ... Job not submitted.``); an
  unknown option prints ``bsub: illegal option -- k`` and the usage;
  an unknown queue prints ``q: No such queue. Job not submitted.``
- ``bjobs -noheader -a -o "jobid jobindex stat exit_code pend_reason delimiter='|'"``: one
  line per element; a field with no value prints ``-``; finished jobs (DONE, EXIT) are
  listed only with ``-a``.  Nothing to list: ``No job found`` (``No unfinished job found``
  without -a) on stderr, exit 0.
- ``bkill ID`` / ``bkill "ID[i]"``: ``Job <ID> is being terminated``; SIGINT, SIGTERM, SIGKILL
  in turn (JOB_TERMINATE_INTERVAL, shortened); the job ends EXIT with exit code 128+signal.
  An unknown id: ``Job <ID>: No matching job found``, exit 255; a finished one:
  ``Job <ID>: Job has already finished``, exit 255.
"""

from __future__ import annotations

import getopt
import getpass
import os
import re
import shlex
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from spool import Spool, kill_session, start  # noqa: E402

SPOOL = Spool(os.environ.get("FAKE_LSF_HOME", f"/tmp/fakelsf-{getpass.getuser()}"))
SLOTS = int(os.environ.get("FAKE_LSF_SLOTS", "8"))
QUEUES = {"normal", "short", "long"}
OPTS = "J:q:n:o:e:W:R:M:P:G:Ix"
LONG = ["cwd=", "env="]
USAGE = ("Usage: bsub [-h] [-V] [-H] [-x] [-r | -rn] [-I | -Ip | -Is] [-J job_name] [-q queue_name]\n"
         "\t[-n min_processors] [-R res_req] [-M mem_limit] [-W run_limit] [-o out_file]\n"
         "\t[-e err_file] [-cwd dir] [-P project] [command [argument ...]]\n")


def _schedule() -> None:
    SPOOL.schedule("elements", "RUN", "PEND", SLOTS, finish=_finish, start=_start, waiting=_waiting)


def _finish(job: dict, el: dict) -> None:
    status = _exit_status(job, el)
    el["state"], el["exit"] = ("DONE", None) if status == 0 else ("EXIT", status)


def _waiting(el: dict) -> None:
    el["reason"] = "Job slot limit reached"


def _exit_status(job: dict, el: dict) -> int:
    """The element's exit status, written by the wrapper shell around the script."""
    try:
        with open(os.path.join(SPOOL.home, f"{job['num']}.{el['index']}.status")) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _expand(pattern: str, job: dict, el: dict) -> str:
    return pattern.replace("%J", job["num"]).replace("%I", str(el["index"]))


def _start(job: dict, el: dict) -> None:
    env = dict(job["env"], LSB_JOBID=job["num"], LSB_JOBNAME=job["name"],
               LSB_JOBINDEX=str(el["index"]))
    out = _expand(job["out"], job, el) if job["out"] else os.path.join(job["cwd"], f"LSFJOB_{job['num']}.out")
    status = os.path.join(SPOOL.home, f"{job['num']}.{el['index']}.status")
    # the wrapper records the exit status (128+N for a signal, as the shell reports it)
    wrapper = f'/bin/bash {shlex.quote(job["script"])}; echo $? > {shlex.quote(status)}'
    el["state"], el["reason"] = "RUN", ""
    el["pid"] = start(["/bin/bash", "-c", wrapper], env, job["cwd"], out)


def _long(argv: list[str]) -> list[str]:
    """LSF spells its long options with one dash (``-cwd``); getopt wants two."""
    return [f"-{a}" if a in ("-cwd", "-env") else a for a in argv]


def _down() -> bool:
    """$FAKE_LSF_DOWN_FOR submissions fail as when mbatchd does not answer."""
    path = os.path.join(SPOOL.home, "down")
    left = int(open(path).read()) if os.path.exists(path) else int(os.environ.get("FAKE_LSF_DOWN_FOR", "0"))
    with open(path, "w") as fh:
        fh.write(str(max(left - 1, 0)))
    return left > 0


def bsub(argv: list[str]) -> int:
    if _down():
        sys.stderr.write("Failed in an LSF library call: LIM is down; try later. Job not submitted.\n")
        return 255
    script_text = ""
    if not sys.stdin.isatty():
        script_text = sys.stdin.read()
    embedded = [shlex.split(line[5:]) for line in script_text.splitlines() if line.startswith("#BSUB")]
    try:
        opts_file, _ = getopt.getopt(_long([a for d in embedded for a in d]), OPTS, LONG)
        opts_cli, args = getopt.getopt(_long(argv), OPTS, LONG)
    except getopt.GetoptError as exc:
        sys.stderr.write(f"bsub: illegal option -- {exc.opt}\n{USAGE}")
        return 255
    o = {k.lstrip("-"): v for k, v in opts_file + opts_cli}
    if "q" in o and o["q"] not in QUEUES:
        sys.stderr.write(f"{o['q']}: No such queue. Job not submitted.\n")
        return 255
    if not args and not script_text.strip():
        sys.stderr.write("bsub> No command is specified. Job not submitted.\n")
        return 255
    num = str(SPOOL.next_number(first=1000))
    script = os.path.join(SPOOL.home, f"{num}.script")
    with open(script, "w") as fh:
        fh.write(shlex.join(args) + "\n" if args else script_text)
    name, indices = o.get("J", shlex.join(args)[:60] or "NONAME"), [0]
    match = re.fullmatch(r"(.*)\[(\d+)-(\d+)\](%\d+)?", name)
    if match:
        name, indices = match.group(1), list(range(int(match.group(2)), int(match.group(3)) + 1))
    job = {"num": num, "name": name, "user": getpass.getuser(), "script": script,
           "cwd": o.get("cwd", os.getcwd()), "env": dict(os.environ), "out": o.get("o", ""),
           "array": bool(match), "queue": o.get("q", "normal"),
           "elements": [{"index": i, "state": "PEND", "pid": 0, "reason": "", "exit": None}
                        for i in indices]}
    SPOOL.save(job)
    _schedule()
    where = f"queue <{job['queue']}>" if "q" in o else f"default queue <{job['queue']}>"
    print(f"Job <{num}> is submitted to {where}.")
    return 0


def _find(ident: str) -> tuple[dict, list[dict]] | None:
    match = re.fullmatch(r"(\d+)(?:\[(\d+)\])?", ident)
    job = SPOOL.load(match.group(1)) if match else None
    if job is None:
        return None
    if match.group(2) is None:  # type: ignore[union-attr]
        return job, job["elements"]
    els = [e for e in job["elements"] if e["index"] == int(match.group(2))]  # type: ignore[union-attr]
    return (job, els) if els else None


def bjobs(argv: list[str]) -> int:
    _schedule()
    every = "-a" in argv
    fmt = argv[argv.index("-o") + 1] if "-o" in argv else "jobid user stat queue job_name"
    delim = " "
    match = re.search(r"delimiter='(.*?)'", fmt)
    if match:
        delim, fmt = match.group(1), fmt[:match.start()]
    fields = fmt.split()
    rows = []
    for job in SPOOL.load_all():
        for el in job["elements"]:
            if el["state"] in ("DONE", "EXIT") and not every:
                continue
            values = {"jobid": job["num"], "jobindex": str(el["index"]), "stat": el["state"],
                      "exit_code": str(el["exit"]) if el["exit"] is not None else "-",
                      "pend_reason": el["reason"] or "-", "user": job["user"], "queue": job["queue"],
                      "job_name": f"{job['name']}[{el['index']}]" if job["array"] else job["name"]}
            rows.append(delim.join(values.get(f, "-") for f in fields))
    if not rows:
        sys.stderr.write("No job found\n" if every else "No unfinished job found\n")
        return 0
    if "-noheader" not in argv:
        print(delim.join(f.upper() for f in fields))
    print("\n".join(rows))
    return 0


def bkill(argv: list[str]) -> int:
    ids = [a for a in argv if not a.startswith("-")]
    if not ids:
        sys.stderr.write("Usage: bkill [-h] [-V] [-l] [-s signal_value] "
                         "[jobId | \"jobId[index_list]\"] ...\n")
        return 255
    _schedule()
    status = 0
    for ident in ids:
        found = _find(ident)
        if found is None:
            sys.stderr.write(f"Job <{ident}>: No matching job found\n")
            status = 255
            continue
        job, els = found
        live = [e for e in els if e["state"] in ("RUN", "PEND")]
        if not live:
            sys.stderr.write(f"Job <{ident}>: Job has already finished\n")
            status = 255
            continue
        for el in live:
            sig = signal.SIGKILL
            if el["state"] == "RUN":
                sig = kill_session(el["pid"], (signal.SIGINT, signal.SIGTERM, signal.SIGKILL), 0.5) or sig
            el["state"], el["exit"] = "EXIT", 128 + int(sig)
        SPOOL.save(job)
        print(f"Job <{ident}> is being terminated")
    return status


def main() -> int:
    SPOOL.locked()  # held until the command exits
    command = os.path.basename(sys.argv[1])  # bin/bsub, bin/bjobs, bin/bkill pass their name
    return {"bsub": bsub, "bjobs": bjobs, "bkill": bkill}[command](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
